"""results/eval.md's prose reads the plan it reports on (a `--set` can switch an experiment off in any plan)."""

from __future__ import annotations

from training.report import _not_run_note


def test_the_not_run_note_names_what_this_plan_switched_off() -> None:
    both = _not_run_note({"variants": False, "transfer_steps": 0})
    assert "DUPN ablations" in both and "transfer experiment" in both
    only_transfer = _not_run_note({"variants": True, "transfer_steps": 0})
    assert "transfer experiment" in only_transfer and "ablations" not in only_transfer
    assert "none" in _not_run_note({"variants": True, "transfer_steps": 1000})
