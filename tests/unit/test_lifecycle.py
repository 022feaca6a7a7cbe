"""The state table: what ``lifecycle`` flattens out of its Machine is exactly what it declares."""

from __future__ import annotations

from common.domain import OrderState, lifecycle


def _declared() -> dict[tuple[str, OrderState], frozenset[OrderState]]:
    """The declaration read directly: an internal transition (no destinations) leads back to its source."""
    table: dict[tuple[str, OrderState], set[OrderState]] = {}
    for trigger, sources, dests in lifecycle._TABLE_SPEC:
        for source in sources:
            table.setdefault((trigger, source), set()).update([source] if dests is None else dests)
    return {key: frozenset(value) for key, value in table.items()}


def test_the_machine_built_from_the_declaration_flattens_back_to_it() -> None:
    # Built again here (not only at import) so that what is checked is the building, not a stored result.
    rebuilt = lifecycle._flatten(lifecycle._build_machine())
    assert rebuilt == _declared()
    assert lifecycle.TABLE == rebuilt
    assert lifecycle.TRIGGERS == {trigger for trigger, _, _ in lifecycle._TABLE_SPEC}


def test_the_machine_has_exactly_the_order_states_no_model_and_starts_at_new() -> None:
    machine = lifecycle._build_machine()
    assert list(machine.states) == [state.value for state in OrderState]
    assert (machine.initial, machine.models, machine.auto_transitions) == ("NEW", [], False)


def test_destinations_of_a_trigger_not_allowed_is_empty() -> None:
    assert lifecycle.destinations("approve", OrderState.NEW) == frozenset({OrderState.APPROVED})
    assert lifecycle.destinations("request_cancel", OrderState.OPEN) == frozenset({OrderState.OPEN})
    assert lifecycle.destinations("approve", OrderState.FILLED) == frozenset()
    assert lifecycle.destinations("no_such_trigger", OrderState.NEW) == frozenset()
