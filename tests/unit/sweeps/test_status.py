"""Trial outcomes and the live status board."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest

from sweeps.status import (
    StatusCallback,
    StatusPrinter,
    SweepStatus,
    board_for,
    classify,
    register_board,
    summarize,
    unregister_board,
)


@pytest.mark.parametrize(
    ("status", "step", "outcome"),
    [
        ("TERMINATED", 16, "finished"),
        ("TERMINATED", 20, "finished"),
        ("TERMINATED", 8, "pruned"),
        ("TERMINATED", None, "pruned"),
        ("ERROR", 16, "failed"),
        ("RUNNING", 8, "running"),
        ("PAUSED", 8, "running"),
        ("PENDING", None, "pending"),
    ],
)
def test_classify(status: str, step: int | None, outcome: str) -> None:
    assert classify(status, step, step_budget=16) == outcome


@dataclass
class TrialRecord:
    """The fields of ``ray.tune.experiment.Trial`` the board reads."""

    trial_id: str
    status: str
    last_result: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def test_board_counts_and_best() -> None:
    board = SweepStatus("s1", "best_val_pixel_auroc", ["bottle", "carpet"])
    board.update_trials(
        "bottle",
        [
            TrialRecord("a", "TERMINATED", {"step": 16, "best_val_pixel_auroc": 0.7}),
            TrialRecord("b", "TERMINATED", {"step": 8, "best_val_pixel_auroc": 0.9}),
            TrialRecord("c", "ERROR", {"step": 8, "best_val_pixel_auroc": float("nan")}),
            TrialRecord("d", "RUNNING", {"step": 8, "best_val_pixel_auroc": 0.5}),
        ],
        step_budget=16,
    )
    snap = board.snapshot()
    assert summarize(snap)["bottle"] == {"pending": 0, "running": 1, "finished": 1, "pruned": 1, "failed": 1}
    assert snap["bottle"].best().trial_id == "b"
    assert snap["carpet"].best() is None
    table = board.render()
    assert "bottle" in table and "carpet" in table and "0.9000" in table and "total" in table


def test_status_callback_pickles_and_reports_to_the_current_board() -> None:
    cb = pickle.loads(pickle.dumps(StatusCallback("s2", "bottle", 16)))
    board = SweepStatus("s2", "m", ["bottle"])
    register_board(board)
    try:
        assert board_for("s2") is board
        cb.on_trial_complete(0, [TrialRecord("x", "TERMINATED", {"step": 16, "m": 0.5})], None)
        assert board.snapshot()["bottle"].counts()["finished"] == 1
    finally:
        unregister_board("s2")
    cb.on_trial_complete(0, [], None)  # no board: a no-op, not an error


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _states(board: SweepStatus, *states: tuple[str, str, dict[str, Any]]) -> None:
    board.update_trials("bottle", [TrialRecord(tid, st, res) for tid, st, res in states], step_budget=16)


def test_printer_off_a_terminal_writes_one_line_per_state_change() -> None:
    board = SweepStatus("s3", "best_val_pixel_auroc", ["bottle"])
    out = io.StringIO()
    printer = StatusPrinter(board, 30.0, out)
    assert not printer.tty
    _states(board, ("a", "PENDING", {}), ("b", "PENDING", {}))
    printer.update()
    _states(board, ("a", "RUNNING", {"step": 8, "best_val_pixel_auroc": 0.5}), ("b", "PENDING", {}))
    printer.update()
    printer.update()  # nothing changed: nothing written
    _states(board, ("a", "RUNNING", {"step": 12, "best_val_pixel_auroc": 0.6}))  # same state, more steps
    printer.update()
    _states(board, ("a", "TERMINATED", {"step": 16, "best_val_pixel_auroc": 0.7}),
            ("b", "TERMINATED", {"step": 8, "best_val_pixel_auroc": 0.4}))
    printer.update()
    lines = out.getvalue().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        "bottle  trial a  pending",
        "bottle  trial b  pending",
        "bottle  trial a  running",
        "bottle  trial a  finished at step 16, best_val_pixel_auroc 0.7000",
        "bottle  trial b  pruned at step 8, best_val_pixel_auroc 0.4000",
    ]
    assert "total" not in out.getvalue()  # no table while the sweep runs
    printer.print()  # the end: the table, once
    assert out.getvalue().count("total") == 1 and len(out.getvalue().splitlines()) == len(lines) + len(board.render().splitlines())


def test_printer_on_a_terminal_redraws_the_table_in_place() -> None:
    board = SweepStatus("s4", "best_val_pixel_auroc", ["bottle"])
    out = _Terminal()
    printer = StatusPrinter(board, 30.0, out)
    assert printer.tty
    printer.update()
    first = out.getvalue()
    assert "\x1b[" not in first and first.count("total") == 1
    _states(board, ("a", "RUNNING", {"step": 8, "best_val_pixel_auroc": 0.5}))
    printer.update()
    second = out.getvalue()[len(first):]
    # The cursor goes back up over the previous table (its line count) and clears it before redrawing.
    assert second.startswith(f"\x1b[{first.count(chr(10))}F\x1b[J") and "0.5000" in second
