"""docs/messages.md is what the message catalogue makes, and says what the contract promises."""

from __future__ import annotations

from common.messages.catalogue import KINDS, RETIRED_KINDS
from common.messages.headers import HEADER_SUMMARIES
from tools import messagedoc


def test_the_committed_page_is_what_the_catalogue_makes() -> None:
    committed = messagedoc.DOCUMENT.read_text(encoding="utf-8")
    assert committed == messagedoc.document(), "docs/messages.md is out of date: run ./oms messages docs"
    assert messagedoc.main(["docs", "--check"]) == 0


def test_the_page_names_every_kind_key_header_and_field() -> None:
    page = messagedoc.document()
    for kind in (*KINDS, *RETIRED_KINDS):
        assert f"`{kind.type}`" in page and f"`{kind.routing_key}`" in page
        assert kind.schema is not None
        if kind.retired is None:
            for field in kind.schema.fields.values():
                assert f"`{field.data_key}`" in page or f".{field.data_key}`" in page, (kind.type, field.data_key)
    for header in HEADER_SUMMARIES:
        assert f"`{header}`" in page
    # Facts the contract has always stated.
    assert "the OMS writes UTC as `Z`" in page
    assert "| `trades.confirmation` | `TradeConfirmation` | no longer published" in page
    assert "| `settlement.instruction` | `SettlementInstruction` | no longer published" in page
