"""Hot statements (common.store.hot_sql) behave as SQLAlchemy's execute did: the same values of the same types,
the same exceptions (a constraint, a lost connection invalidating it), the same transaction, the same
statement events."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from sqlalchemy import Engine, exc, text

from common.store import hot_sql
from common.store.orders_repo import LOAD_BY_IDS_QUERY
from common.store.uow import UnitOfWork
from tests.support.api import new_account
from tests.support.db import statements, waiting_for_a_lock
from tests.support.orders import changing_order, create_order, store
from tests.support.polling import wait_until
from tools.audit_chain import Tally, verify_all

pytestmark = pytest.mark.integration

_LOAD = hot_sql.hot(LOAD_BY_IDS_QUERY)
_SELECT_ONE = hot_sql.hot(text("SELECT CAST(:v AS integer) AS v"))
_INSERT_INBOX = hot_sql.hot(
    text("INSERT INTO inbox (stage, message_id, processed_at) VALUES (:stage, :message_id, now())")
)


def test_an_order_reads_back_with_the_same_values_and_types_as_through_sqlalchemy(engine: Engine) -> None:
    order_id = store(engine, create_order(account_id=new_account(engine), quantity=Decimal("12.5")))
    with changing_order(engine, order_id) as (_, order):
        order.approve(["test"], order.created_at)  # a JSON column, a later state, a second event
    with engine.connect() as connection:
        core = [dict(r) for r in connection.execute(LOAD_BY_IDS_QUERY, {"ids": [order_id]}).mappings()]
        hot = hot_sql.mappings(connection, _LOAD, {"ids": [order_id]})
    assert len(hot) == 1 and hot == core
    assert {k: type(v) for k, v in hot[0].items()} == {k: type(v) for k, v in core[0].items()}
    assert hot[0]["created_at"].tzinfo is not None
    assert hot[0]["quantity"] == Decimal("12.5") and hot[0]["last_sequence"] == 2


def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_the_rollback_undoes_the_rest(
    engine: Engine,
) -> None:
    message_id = str(uuid.uuid4())
    with engine.connect() as connection:
        hot_sql.execute(connection, _INSERT_INBOX, {"stage": "hot-sql-test", "message_id": message_id})
        with pytest.raises(exc.IntegrityError):
            hot_sql.execute(connection, _INSERT_INBOX, {"stage": "hot-sql-test", "message_id": message_id})
        connection.rollback()
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT count(*) FROM inbox WHERE stage = 'hot-sql-test' AND message_id = :m"), {"m": message_id}
        ).scalar()
    assert found == 0  # the first hot statement began the transaction that the rollback undid


def test_a_connection_lost_under_a_hot_statement_is_invalidated_and_the_next_one_works(engine: Engine) -> None:
    with engine.connect() as connection:
        pid = hot_sql.scalars(connection, hot_sql.hot(text("SELECT pg_backend_pid()")))[0]
        connection.rollback()
        with engine.begin() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(exc.OperationalError) as raised:
            hot_sql.rows(connection, _SELECT_ONE, {"v": 1})
        assert raised.value.connection_invalidated
    with engine.connect() as connection:
        assert hot_sql.scalars(connection, _SELECT_ONE, {"v": 7}) == [7]


def test_hot_statements_are_seen_by_the_statement_events(engine: Engine) -> None:
    with statements(engine) as sent, engine.connect() as connection:
        assert hot_sql.rows(connection, _SELECT_ONE, {"v": 3}) == [(3,)]
    assert any("CAST(%(v)s AS integer)" in s for s in sent)


def test_a_writer_that_waited_for_an_orders_lock_sees_the_events_committed_meanwhile(engine: Engine) -> None:
    """``OrderRepository.lock`` locks and loads in one statement; an order another writer changed while it
    waited is loaded again once locked, so the next event takes the next sequence and chains on the new head."""
    order_id = store(engine, create_order(account_id=new_account(engine)))
    with UnitOfWork(engine) as first:
        order = first.orders.get(order_id, for_update=True)
        assert order is not None
        order.approve(["test"], order.created_at)
        first.orders.save(order, correlation_id=order_id, message_id=None)
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(_route_after_the_lock, engine, order_id)
            wait_until(lambda: waiting_for_a_lock(engine), timeout=20, message="the second writer waiting")
            first.commit()
            sequence_seen = second.result(timeout=30)
    assert sequence_seen == 2  # ORDER_CREATED, then the first writer's approval
    with engine.connect() as connection:
        events = connection.execute(
            text("SELECT sequence, type FROM order_events WHERE order_id = :o ORDER BY sequence"), {"o": order_id}
        ).all()
        assert [tuple(e) for e in events] == [(1, "ORDER_CREATED"), (2, "RISK_APPROVED"), (3, "ORDER_ROUTED")]
        tally = Tally()
        assert list(verify_all(connection, tally, order_id)) == []  # the chain is whole


def _route_after_the_lock(engine: Engine, order_id: str) -> int:
    with UnitOfWork(engine) as uow:
        uow.orders.lock([order_id])
        order = uow.orders.get(order_id, for_update=True)
        assert order is not None
        seen = uow.orders._sequence[order_id]
        order.mark_routed(str(uuid.uuid4()), order.updated_at)
        uow.orders.save(order, correlation_id=order_id, message_id=None)
        uow.commit()
        return seen


def _plans_of_a_key_lookup(engine: Engine) -> tuple[int, int]:
    """(generic, custom) plans Postgres made for the idempotency-key look-up, run ten times on one connection."""
    from common.store.orders_repo import _LOAD_BY_CLIENT_KEYS

    with engine.connect() as connection:
        for _ in range(10):
            hot_sql.mappings(
                connection, _LOAD_BY_CLIENT_KEYS, {"accounts": ["ACC-1"], "client_ids": [str(uuid.uuid4())]}
            )
        plans = connection.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%(orders.account_id, orders.client_order_id) IN%'"
            )
        ).one()
        connection.rollback()
    return int(plans[0]), int(plans[1])


def test_stage_connections_plan_as_the_setting_says(database_url: str, amqp_url: str) -> None:
    from common.bootstrap import stage_worker
    from common.settings import InfraSettings, Settings, StageSettings
    from services.router.spec import SPEC

    infra = InfraSettings(database_url=database_url, amqp_url=amqp_url)
    generic = stage_worker(SPEC, Settings(infra=infra, stage=StageSettings(plan_cache_mode="force_generic_plan")))
    default = stage_worker(SPEC, Settings(infra=infra, stage=StageSettings(plan_cache_mode="auto")))
    try:
        generic_plans, custom_plans = _plans_of_a_key_lookup(generic.engine)
        assert custom_plans == 0 and generic_plans >= 5  # psycopg prepares it at its fifth execution
        generic_plans, custom_plans = _plans_of_a_key_lookup(default.engine)
        assert generic_plans == 0 and custom_plans >= 5  # the server's `auto`: planned again at every execution
        with generic.engine.connect() as connection:
            assert connection.execute(text("SHOW plan_cache_mode")).scalar_one() == "force_generic_plan"
    finally:
        generic.engine.dispose()
        default.engine.dispose()
