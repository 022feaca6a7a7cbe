"""docs/order-states.md is the picture of the order state model as the transitions Machine has it, and stays so."""

from __future__ import annotations

import re
from pathlib import Path

from common.domain import lifecycle
from common.domain.enums import OrderState
from tools import statediagram

# ``SOURCE --> DEST: trigger | trigger [internal] | ...`` (the Mermaid edges transitions writes).
EDGE = re.compile(r"^\s*(\w+) --> (\w+): (.+)$")


def _edges(diagram: str) -> set[tuple[str, str, str]]:
    """(trigger, source, destination) for every label on every arrow of the diagram."""
    edges = set()
    for line in diagram.splitlines():
        match = EDGE.match(line)
        if match:
            source, dest, labels = match.groups()
            for label in labels.split(" | "):
                edges.add((label.removesuffix(" [internal]").strip(), source, dest))
    return edges


def test_the_committed_document_is_what_the_machine_draws() -> None:
    committed = statediagram.DOCUMENT.read_text()
    assert committed == statediagram.document(), (
        "docs/order-states.md is out of date with common/domain/lifecycle.py: run python -m tools.statediagram"
    )
    assert statediagram.main(["--check"]) == 0


def test_every_transition_of_the_table_is_drawn_and_nothing_else() -> None:
    diagram = statediagram.mermaid()
    drawn = _edges(diagram)
    table = {
        (trigger, source.name, dest.name) for (trigger, source), dests in lifecycle.TABLE.items() for dest in dests
    }
    assert table - drawn == set(), "transitions missing from the diagram"
    assert drawn - table == set(), "arrows the model does not have"
    for state in OrderState:
        assert f'state "{state.name}" as {state.name}' in diagram
    assert f"[*] --> {OrderState.NEW.name}" in diagram
    # The committed file holds this very diagram, in a block GitHub renders.
    assert f"```mermaid\n{diagram}```" in statediagram.DOCUMENT.read_text()


def test_internal_transitions_are_drawn_as_such() -> None:
    diagram = statediagram.mermaid()
    for (trigger, source), dests in lifecycle.TABLE.items():
        internal = any(t.dest is None for t in lifecycle.MACHINE.events[trigger].transitions[source.name])
        if internal:
            assert dests == frozenset({source})
            assert re.search(rf"{source.name} --> {source.name}: .*\b{trigger} \[internal\]", diagram), trigger


def test_check_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "order-states.md"
    stale.write_text(statediagram.document().replace("FILLED", "DONE"))
    assert statediagram.main(["--check", "--output", str(stale)]) == 1
    assert statediagram.main(["--output", str(stale)]) == 0
    assert statediagram.main(["--check", "--output", str(stale)]) == 0
