"""The exchanges of the system: names, types, and what travels on each."""

from __future__ import annotations

OMS_EXCHANGE = "oms"
BROKER_EXCHANGE = "broker"
ORDER_UPDATES_EXCHANGE = "oms.order_updates"
PORTFOLIO_EXCHANGE = "portfolio"
MARKETDATA_EXCHANGE = "marketdata"
DEAD_LETTER_EXCHANGE = "oms.dlx"

TOPIC_EXCHANGES = (OMS_EXCHANGE, BROKER_EXCHANGE, ORDER_UPDATES_EXCHANGE, PORTFOLIO_EXCHANGE, MARKETDATA_EXCHANGE)
DIRECT_EXCHANGES = (DEAD_LETTER_EXCHANGE,)

# What each exchange carries, for docs/messages.md.
EXCHANGE_SUMMARIES: dict[str, str] = {
    OMS_EXCHANGE: "into the OMS, and between its stages: each stage's quorum queue `oms.<stage>` binds its keys",
    BROKER_EXCHANGE: "requests to the venue, for the broker integration service",
    ORDER_UPDATES_EXCHANGE: "order updates, for whoever subscribes (the gRPC stream, user interfaces)",
    PORTFOLIO_EXCHANGE: "booked executions, for the portfolio service",
    MARKETDATA_EXCHANGE: "market data prices, from the simulated venue (or a real feed)",
    DEAD_LETTER_EXCHANGE: "dead letters, to each queue's `<queue>.dlq`",
}
