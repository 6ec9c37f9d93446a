"""The live status of a sweep: trials pending/running/finished/pruned/failed per category and the best so far.

One :class:`SweepStatus` board lives in the driver; every category's Tuner gets a
:class:`StatusCallback` that copies its trials onto the board, and :class:`StatusPrinter` shows it:
the table redrawn in place on a terminal, one line per change of a trial's state elsewhere. The
callback finds the board through a module-level registry keyed by sweep id instead of holding it:
Tune pickles callbacks into the experiment state, and after
``Tuner.restore`` in a new driver process the unpickled callback must report to the new board.

:func:`classify` is the one definition of a trial's outcome, shared with the MLflow tracking:
a TERMINATED trial that reached its step budget *finished*; one stopped earlier (ASHA, time budget)
was *pruned*.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO

from ray.tune import Callback, Stopper
from ray.tune.experiment import Trial

from memseg.metrics.keys import STEP
from sweeps.spec import ParamValue

Outcome = Literal["pending", "running", "finished", "pruned", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("pending", "running", "finished", "pruned", "failed")
CategoryState = Literal["waiting", "running", "done", "error"]

_BOARDS: dict[str, SweepStatus] = {}
_BOARDS_LOCK = threading.Lock()


def classify(status: str, last_step: int | None, step_budget: int) -> Outcome:
    """The outcome of a trial from its Tune status and the last step it reported."""
    if status == "ERROR":
        return "failed"
    if status == "TERMINATED":
        return "finished" if last_step is not None and last_step >= step_budget else "pruned"
    if status in ("RUNNING", "PAUSED"):
        return "running"
    return "pending"


@dataclass
class TrialView:
    """What the board knows of one trial."""

    trial_id: str
    outcome: Outcome
    step: int | None
    score: float | None
    config: dict[str, ParamValue] = field(default_factory=dict)


@dataclass
class CategoryView:
    """What the board knows of one category."""

    category: str
    trials: dict[str, TrialView] = field(default_factory=dict)
    state: CategoryState = "waiting"
    error: str | None = None

    def counts(self) -> dict[Outcome, int]:
        out = dict.fromkeys(OUTCOMES, 0)
        for t in self.trials.values():
            out[t.outcome] += 1
        return out

    def best(self) -> TrialView | None:
        scored = [(t.score, t) for t in self.trials.values() if t.score is not None and math.isfinite(t.score)]
        return max(scored, key=lambda pair: pair[0])[1] if scored else None


class SweepStatus:
    """Thread-safe board of a whole sweep."""

    def __init__(self, sweep_id: str, metric: str, categories: Sequence[str]) -> None:
        self.sweep_id = sweep_id
        self.metric = metric
        self._lock = threading.Lock()
        self._cats = {c: CategoryView(c) for c in categories}
        self.started = time.monotonic()

    def update_trials(self, category: str, trials: Iterable[Trial], step_budget: int) -> None:
        """Copy Tune ``Trial`` objects (status, last result, config) onto the board."""
        views = {}
        for trial in trials:
            last = trial.last_result or {}
            step = last.get(STEP)
            score = last.get(self.metric)
            views[trial.trial_id] = TrialView(
                trial_id=trial.trial_id,
                outcome=classify(trial.status, step, step_budget),
                step=int(step) if step is not None else None,
                score=float(score) if isinstance(score, int | float) else None,
                config=dict(trial.config),
            )
        with self._lock:
            self._cats.setdefault(category, CategoryView(category)).trials.update(views)

    def set_state(self, category: str, state: CategoryState, error: str | None = None) -> None:
        with self._lock:
            view = self._cats.setdefault(category, CategoryView(category))
            view.state, view.error = state, error

    def snapshot(self) -> dict[str, CategoryView]:
        with self._lock:
            return {
                c: CategoryView(v.category, dict(v.trials), v.state, v.error) for c, v in self._cats.items()
            }

    def render(self) -> str:
        """The status table (plain text, one row per category, a total row)."""
        snap = self.snapshot()
        elapsed = time.monotonic() - self.started
        head = (f"sweep {self.sweep_id}  {time.strftime('%H:%M:%S')}  elapsed {elapsed / 60:.1f} min  "
                f"best = max {self.metric}")
        width = max([len("category"), *(len(c) for c in snap)])
        cols = (f"{'category':<{width}}  {'state':<7} {'pend':>4} {'run':>4} {'done':>4} {'pruned':>6} "
                f"{'failed':>6}  {'best':>8}  best trial")
        lines = [head, cols, "-" * len(cols)]
        totals = dict.fromkeys(OUTCOMES, 0)
        for cat, view in snap.items():
            counts = view.counts()
            for k in OUTCOMES:
                totals[k] += counts[k]
            best = view.best()
            score = f"{best.score:.4f}" if best else "-"
            lines.append(
                f"{cat:<{width}}  {view.state:<7} {counts['pending']:>4} {counts['running']:>4} "
                f"{counts['finished']:>4} {counts['pruned']:>6} {counts['failed']:>6}  {score:>8}  "
                f"{best.trial_id if best else '-'}"
            )
        lines.append(
            f"{'total':<{width}}  {'':<7} {totals['pending']:>4} {totals['running']:>4} {totals['finished']:>4} "
            f"{totals['pruned']:>6} {totals['failed']:>6}"
        )
        return "\n".join(lines)


def register_board(board: SweepStatus) -> None:
    """Make ``board`` the one the sweep's :class:`StatusCallback` objects report to."""
    with _BOARDS_LOCK:
        _BOARDS[board.sweep_id] = board


def unregister_board(sweep_id: str) -> None:
    with _BOARDS_LOCK:
        _BOARDS.pop(sweep_id, None)


def board_for(sweep_id: str) -> SweepStatus | None:
    with _BOARDS_LOCK:
        return _BOARDS.get(sweep_id)


class StatusCallback(Callback):
    """Copies a category's trials onto the sweep's board (holds only names, so it pickles)."""

    def __init__(self, sweep_id: str, category: str, step_budget: int) -> None:
        self.sweep_id = sweep_id
        self.category = category
        self.step_budget = step_budget
        self._last = 0.0

    def _push(self, trials: Sequence[Trial], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        board = board_for(self.sweep_id)
        if board is not None:
            board.update_trials(self.category, trials, self.step_budget)

    def setup(
        self,
        stop: Stopper | None = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: object,
    ) -> None:
        board = board_for(self.sweep_id)
        if board is not None:
            board.set_state(self.category, "running")

    def on_step_end(self, iteration: int, trials: list[Trial], **info: object) -> None:
        self._push(trials)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._push(trials, force=True)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: object) -> None:
        self._push(trials, force=True)

    def on_experiment_end(self, trials: list[Trial], **info: object) -> None:
        self._push(trials, force=True)


class StatusPrinter:
    """Shows the board from a daemon thread while the sweep runs (a context manager).

    On a terminal the table is redrawn in place every ``interval_s`` seconds. Anywhere else (a log
    file, a pipe, CI) a reprinted table is only noise, so each change of a trial's state is one line
    (:meth:`changes`), checked every ``poll_s`` seconds, and the table is printed once, by
    :meth:`print` when the sweep has ended.
    """

    def __init__(self, board: SweepStatus, interval_s: float, stream: TextIO, *, poll_s: float = 1.0) -> None:
        self.board = board
        self.interval_s = interval_s
        self.stream = stream
        self.tty = _is_tty(stream)
        self.poll_s = interval_s if self.tty else min(poll_s, interval_s)
        self._drawn = 0  # lines of the table last drawn on the terminal
        self._seen: dict[tuple[str, str], Outcome] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-status", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.update()

    def update(self) -> None:
        """Redraw the table (terminal) or write one line per trial whose state changed (otherwise)."""
        with self._lock:
            if self.tty:
                self._redraw()
            else:
                self._write(self.changes())

    def changes(self) -> list[str]:
        """One line per trial whose state changed since the last call (its first sighting included)."""
        lines = []
        stamp = time.strftime("%H:%M:%S")
        for cat, view in self.board.snapshot().items():
            for trial in view.trials.values():
                if self._seen.get((cat, trial.trial_id)) == trial.outcome:
                    continue
                self._seen[(cat, trial.trial_id)] = trial.outcome
                line = f"{stamp}  {cat}  trial {trial.trial_id}  {trial.outcome}"
                if trial.outcome in ("finished", "pruned", "failed") and trial.step is not None:
                    line += f" at step {trial.step}"
                if trial.outcome != "running" and trial.score is not None and math.isfinite(trial.score):
                    line += f", {self.board.metric} {trial.score:.4f}"
                lines.append(line)
        return lines

    def print(self) -> None:
        """The final state: pending state changes, then the table (in place on a terminal)."""
        with self._lock:
            if self.tty:
                self._redraw()
            else:
                self._write([*self.changes(), self.board.render()])

    def _redraw(self) -> None:
        table = self.board.render()
        # Cursor up over the previous table and clear to the end of the screen, then draw.
        erase = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.stream.write(erase + table + "\n")
        self.stream.flush()
        self._drawn = table.count("\n") + 1

    def _write(self, lines: Sequence[str]) -> None:
        if lines:
            self.stream.write("".join(f"{line}\n" for line in lines))
            self.stream.flush()

    def __enter__(self) -> StatusPrinter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or stream-like object without a terminal
        return False


def summarize(views: Mapping[str, CategoryView]) -> dict[str, dict[Outcome, int]]:
    """Counts per category (what tests and the final report read)."""
    return {c: v.counts() for c, v in views.items()}
