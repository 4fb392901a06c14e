"""The console a person reads, apart from what Ray, Tune and the workers print.

Ray, Tune, Ray Data, MLflow and training workers print hundreds of lines per run (reports,
checkpoint paths, deprecation warnings, progress bars). `quiet_console` sends all of it to a
log file, at the file-descriptor level (child processes, C++ code) and through `sys.stdout` /
`sys.stderr` (Python code, and Ray's relay of its workers' lines), and hands the caller a
stream to the person's real console. A worker line that starts with `RELAY_MARK` (the
per-epoch table of `kmervae train`) is passed to the console, without Ray's prefix, when the
caller asks for it; the log file keeps everything.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

RELAY_MARK = "kmervae> "
"""Prefix of a worker's line meant for the person at the driver's console."""

_console: IO[str] | None = None
_log_path: Path | None = None


def current() -> IO[str]:
    """The console of the innermost `quiet_console` (this moment's stderr outside one). Looked
    up at each write, not held: Tune pickles its callbacks with a sweep's state."""
    return _console if _console is not None else sys.stderr


def log_file() -> Path | None:
    """Where the innermost `quiet_console` sends what this process prints (None: the console)."""
    return _log_path


class _Relay(io.TextIOBase):
    """A text stream that copies everything to `log` and the marked lines, unmarked, to `console`."""

    def __init__(self, log: IO[str], console: IO[str]):
        self.log, self.console, self.pending = log, console, ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if RELAY_MARK in line:
                self.console.write(line.split(RELAY_MARK, 1)[1] + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def fileno(self) -> int:
        return self.log.fileno()


@contextlib.contextmanager
def quiet_console(log_path: Path, verbose: bool = False, relay: bool = False) -> Iterator[IO[str]]:
    """Send this process's stdout and stderr to `log_path`, appending; yield a stream to the
    original stderr for the lines meant for a person. `relay`: worker lines marked with
    `RELAY_MARK` reach that stream too. With `verbose`, nothing is redirected: the stream is stderr.

    Only command-line entry points call this: it redirects the whole process's output."""
    global _console, _log_path
    if verbose:
        yield sys.stderr
        return
    from kmervae.base.storage import check_writable

    check_writable(log_path.parent)  # a folder that cannot hold the log is one line, not a traceback
    made = next((p for p in reversed(log_path.parents) if not p.exists()), None)  # the top folder made here
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved, outer = (os.dup(1), os.dup(2)), (_console, _log_path)
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    streams = sys.stdout, sys.stderr
    try:
        with open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
            os.dup2(log.fileno(), 1)  # child processes and C++ code write to the descriptors
            os.dup2(log.fileno(), 2)
            sys.stdout = sys.stderr = _Relay(log, console) if relay else log  # Python code, Ray's relay
            _console, _log_path = console, log_path
            try:
                yield console
            except BaseException:
                # A run refused before it wrote anything leaves nothing behind, not even its log.
                if made is not None and [p for p in made.rglob("*") if p.is_file()] == [log_path]:
                    shutil.rmtree(made, ignore_errors=True)
                raise
            finally:
                _flush_ray_relay()
                _console, _log_path = outer
                sys.stdout, sys.stderr = streams
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)
        console.close()


def _flush_ray_relay() -> None:
    """Print, into the log, the worker lines Ray holds back as repeats (it prints them when it
    disconnects, after the log has closed: onto the person's console)."""
    worker = sys.modules.get("ray._private.worker")
    if worker is None:
        return
    try:
        for deduplicator, sink in ((worker.stdout_deduplicator, sys.stdout), (worker.stderr_deduplicator, sys.stderr)):
            for leftover in deduplicator.flush():
                worker.print_worker_logs(leftover, sink, False)
    except AttributeError:  # a Ray release without these (private) names: the lines come at exit
        return
