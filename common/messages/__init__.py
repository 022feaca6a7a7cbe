"""The message catalogue: every AMQP message the OMS sends or takes, where it travels, and what its body is.

- ``exchanges``: the exchanges, by name and type;
- ``headers``: the headers the OMS sets and reads;
- ``catalogue``: one ``MessageKind`` per message (exchange, routing key, AMQP ``type``, schema, producers and
  consumers, which stage's queue takes it, an example body), from which the stage specs, the queue bindings
  (common/messaging/topology.py) and docs/messages.md (``python -m tools.messagedoc``) are derived;
- ``bodies``: the builders of the bodies the OMS publishes.

No routing key, exchange name or header name is spelled anywhere else (tests/unit/test_message_catalogue.py).
"""
