"""What a person sees while a sweep runs: a header, a live progress line, one line per trial.

Ray, Tune, Ray Data, MLflow and the training workers print hundreds of lines per trial
(reports, checkpoint paths, deprecation warnings, progress bars). `quiet_console` sends all
of it, at the file-descriptor level so that Ray's log monitor and child processes are caught
too, to a log file in the sweep's folder, and hands the sweep a stream to the person's real
console. `sweep_view` is the Tune callback that writes to that stream: on a terminal a status
line redrawn in place (trials done, running, stopped, failed; elapsed; ETA; best so far), and
whatever the terminal, one permanent line per trial as it ends: its id, parameters, epochs,
objective and why it ended. A failed trial's line carries its error in one line and the path
of its full trace.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ray.tune import Callback

LOG_NAME = "sweep.log"
"""Everything Ray and the workers printed during a sweep, in the sweep's local outputs folder."""
REDRAW_S = 1.0
"""The live status line is redrawn at most this often."""

_console: IO[str] = sys.stderr
"""Where `sweep_view` writes: set by `quiet_console`. Not held by the callback itself, which Tune
pickles with the sweep's state (a resumed sweep's restored callback writes to its new console)."""


@contextlib.contextmanager
def quiet_console(log_path: Path, verbose: bool = False) -> Iterator[IO[str]]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, and `sys.stdout` and
    `sys.stderr`, through which Ray relays its workers' lines) to `log_path`, appending; yield a
    stream to the original stderr for the lines meant for a person. With `verbose`, nothing is
    redirected: the stream is stderr."""
    global _console
    if verbose:
        _console = sys.stderr
        yield sys.stderr
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    streams = sys.stdout, sys.stderr
    try:
        with open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
            os.dup2(log.fileno(), 1)  # child processes and C++ code write to the descriptors
            os.dup2(log.fileno(), 2)
            sys.stdout = sys.stderr = log  # Python code (Ray's log relay) to whatever sys.* is
            _console = console
            try:
                yield console
            finally:
                _console = streams[1]
                sys.stdout, sys.stderr = streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
        console.close()


def short_params(params: dict[str, Any]) -> str:
    """A trial's sampled settings in a few characters each: `latent_dim=16 beta=0.0143 ...`."""
    parts = []
    for key, value in params.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        parts.append(f"{key.split('.')[-1]}={value}")
    return " ".join(parts)


def duration(seconds: float) -> str:
    """12s, 4m05s, 2h03m."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def error_line(text: str) -> str:
    """The one line of a trial's error text that says what went wrong (its root cause)."""
    from kmervae.distributed.sweep import _root_cause

    return _root_cause(RuntimeError(text))


class SweepView(Callback):
    """A Tune callback that reports the sweep to the console of `quiet_console` (see the
    module's docstring). Defined at module level: Tune pickles it with the sweep's state,
    by reference, so a resumed sweep's copy writes to the new console."""

    def __init__(self, *, metric: str, mode: str, total: int, max_epochs: int, log_path: Path | None):
        self.metric, self.mode, self.total, self.max_epochs, self.log_path = (
            metric, mode, total, max_epochs, log_path
        )  # fmt: skip

    def setup(self, **info):  # at the start of a sweep, and again when it is resumed
        self.live = _console.isatty()
        self.start = time.monotonic()
        self.redrawn = 0.0
        self.best: dict[str, float] = {}  # trial id -> its best objective so far
        self.epochs: dict[str, int] = {}
        self.ended = {"finished": 0, "stopped": 0, "failed": 0}
        self.running: set[str] = set()

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def _leader(self) -> tuple[str, float] | None:
        scored = [(t, v) for t, v in self.best.items() if math.isfinite(v)]
        if not scored:
            return None
        return max(scored, key=lambda tv: tv[1] if self.mode == "max" else -tv[1])

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
            _console.write("\r\x1b[K" + self._status())
            _console.flush()
            self.redrawn = now

    def _say(self, line: str) -> None:
        _console.write(("\r\x1b[K" if self.live else "") + line + "\n")
        self._redraw(force=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._redraw(force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric, math.nan)
        old = self.best.get(trial.trial_id, math.nan)
        if math.isfinite(value) and (not math.isfinite(old) or self._better(value, old)):
            self.best[trial.trial_id] = value
        self.epochs[trial.trial_id] = int(result.get("training_iteration", 0))
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
        self._ended(trial, "stopped" if self.epochs.get(trial.trial_id, 0) < self.max_epochs else "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        where = trial.error_file
        text = Path(where).read_text(errors="replace") if where and Path(where).exists() else ""
        reason = error_line(text) if text.strip() else "no error text"
        logs = f" (trace: {where}" + (f"; everything printed: {self.log_path})" if self.log_path else ")")
        self._ended(trial, "failed", f"error: {reason}{logs if where else ''}")

    def on_experiment_end(self, trials, **info):
        if self.live:
            _console.write("\r\x1b[K" + self._status() + "\n")
            _console.flush()
