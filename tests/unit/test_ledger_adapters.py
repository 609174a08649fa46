"""The ledger's adapters: an upload's intent, its outcome, deletion, and a name used again."""

from __future__ import annotations

from state import Ledger

FT = "ft:llama-3.1-8b-instant:org_x/support-0123456789ab"


def test_intent_then_outcome_then_deletion(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        ledger.record_adapter("support", base_model="llama-3.1-8b-instant", file_id="file_1")
        pending = ledger.adapter("support")
        assert pending is not None
        assert (pending.pending, pending.live) == (True, False)
        assert ledger.adapter_model("support") is None  # not usable until registered

        ledger.record_adapter("support", base_model="llama-3.1-8b-instant", file_id="file_1",
                              fine_tuning_id="ft_1", model_id=FT, created_at=1700000000)
        live = ledger.adapter("support")
        assert live is not None
        assert (live.live, live.fine_tuning_id, live.created_at) == (True, "ft_1", 1700000000.0)
        assert ledger.adapter_model("support") == FT
        assert [a.name for a in ledger.adapters()] == ["support"]

        assert ledger.mark_adapter_deleted("support") is True
        assert ledger.mark_adapter_deleted("support") is False  # once only
        assert ledger.adapter_model("support") is None
        assert ledger.adapters() == []
        gone = ledger.adapters(include_deleted=True)
        assert [a.name for a in gone] == ["support"]
        assert gone[0].deleted_at is not None


def test_a_deleted_name_can_be_registered_again(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as ledger:
        ledger.record_adapter("a", base_model="b", fine_tuning_id="ft_1", model_id=FT)
        ledger.mark_adapter_deleted("a")
        ledger.record_adapter("a", base_model="b", fine_tuning_id="ft_2", model_id=FT + "x")
        again = ledger.adapter("a")
        assert again is not None
        assert (again.live, again.fine_tuning_id, again.deleted_at) == (True, "ft_2", None)
        assert ledger.adapter("unknown") is None
