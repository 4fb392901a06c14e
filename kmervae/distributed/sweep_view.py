"""What a person sees while a sweep runs: a header, a live progress line, one line per trial.

While a sweep runs, `console.quiet_console` sends what Ray, Tune and the trials print to the
sweep's log file. `SweepView` is the Tune callback that writes to the person's console instead:
on a terminal a status line redrawn in place (trials done, running, stopped, failed; elapsed;
ETA; best so far), and whatever the terminal, one permanent line per trial as it ends: its
id, parameters, epochs, objective and why it ended. A failed trial's line carries its error
in one line and the path of its full trace.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from kmervae.base.metric_keys import EPOCHS_TRAINED, Objective
from kmervae.distributed import console
from kmervae.distributed.failures import root_cause_of_text
from kmervae.distributed.sweep_report import short_value

REDRAW_S = 1.0
"""The live status line is redrawn at most this often."""


def short_params(params: dict[str, Any]) -> str:
    """A trial's sampled settings in a few characters each: `latent_dim=16 beta=0.0143 ...`."""
    return " ".join(f"{key.split('.')[-1]}={short_value(value)}" for key, value in params.items())


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h03m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepView(Callback):
    """A Tune callback that reports the sweep to the console of `quiet_console` (see the
    module's docstring). Defined at module level: Tune pickles it with the sweep's state,
    by reference, so a resumed sweep's copy writes to the new console."""

    def __init__(self, *, objective: Objective, total: int, epochs_of: Callable[[dict[str, Any]], int]):
        """`epochs_of`: a trial's epoch budget from its sampled settings (`sweep.trial_epochs`),
        which tells a trial that ended early (ASHA) from one that trained them all."""
        self.objective, self.metric = objective, objective.metric
        self.total, self.epochs_of = total, epochs_of

    def setup(self, **info):  # at the start of a sweep, and again when it is resumed
        self.live = console.current().isatty()
        self.start = time.monotonic()
        self.redrawn = 0.0
        self.best: dict[str, float] = {}  # trial id -> its best objective so far
        self.epochs: dict[str, int] = {}
        self.ended = {"finished": 0, "stopped": 0, "failed": 0}
        self.running: set[str] = set()

    def _leader(self) -> tuple[str, float] | None:
        return self.objective.best_of(self.best.items(), lambda trial_and_value: trial_and_value[1])

    def _status(self) -> str:
        done = sum(self.ended.values())
        elapsed = time.monotonic() - self.start
        eta = f", ETA {duration(elapsed / done * (self.total - done))}" if 0 < done < self.total else ""
        leader = self._leader()
        best = f"; best {self.metric} {leader[1]:.4f} (trial {leader[0]})" if leader else ""
        return (
            f"[{done}/{self.total} done: {self.ended['finished']} finished, {self.ended['stopped']} stopped early, "
            f"{self.ended['failed']} failed; {len(self.running)} running] {duration(elapsed)}{eta}{best}"
        )

    def _redraw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.live and (force or now - self.redrawn >= REDRAW_S):
            console.current().write("\r\x1b[K" + self._status())
            console.current().flush()
            self.redrawn = now

    def _say(self, line: str) -> None:
        console.current().write(("\r\x1b[K" if self.live else "") + line + "\n")
        self._redraw(force=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._redraw(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric, math.nan)
        old = self.best.get(trial.trial_id, math.nan)
        if self.objective.improves(value, old):
            self.best[trial.trial_id] = value
        self.epochs[trial.trial_id] = int(result.get(EPOCHS_TRAINED, 0))
        self._redraw()

    def on_step_end(self, iteration, trials, **info):
        self._redraw()

    def _ended(self, trial, how: str, note: str = "") -> None:
        self.running.discard(trial.trial_id)
        self.ended[how] += 1
        value = self.best.get(trial.trial_id, math.nan)
        score = f"{self.metric} {value:.4f}" if math.isfinite(value) else f"{self.metric} -"
        epochs = self.epochs.get(trial.trial_id, 0)
        prefix = "" if self.live else f"[{sum(self.ended.values())}/{self.total}] "
        label = {"finished": "finished", "stopped": "stopped early (ASHA)", "failed": "FAILED"}[how]
        params = short_params(trial.config or {})
        line = f"{prefix}trial {trial.trial_id}  {label}  {epochs} epoch(s)  {score}  {params}"
        self._say(line + (f"\n    {note}" if note else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        budget = self.epochs_of(trial.config or {})
        self._ended(trial, "stopped" if self.epochs.get(trial.trial_id, 0) < budget else "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        where = trial.error_file
        text = Path(where).read_text(errors="replace") if where and Path(where).exists() else ""
        reason = root_cause_of_text(text) if text.strip() else "no error text"
        printed = console.log_file()
        logs = f" (trace: {where}" + (f"; everything printed: {printed})" if printed else ")")
        self._ended(trial, "failed", f"error: {reason}{logs if where else ''}")

    def on_experiment_end(self, trials, **info):
        if self.live:
            console.current().write("\r\x1b[K" + self._status() + "\n")
            console.current().flush()
