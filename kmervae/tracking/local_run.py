"""The local engine's run in MLflow: the config as parameters, every epoch's metrics, the artifacts.

`kmervae.core.engine.fit_local` knows nothing of tracking; this wraps it for the CLI and
benchmarks, so the core stays importable with torch, numpy and pyarrow alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from kmervae.core.config import RunConfig
from kmervae.core.engine import FitResult, fit_local
from kmervae.tracking.tracker import OUTBOX_FILE, Tracker, closes_on_error


def fit_local_tracked(
    data_path: str | Path,
    config: RunConfig,
    out_dir: str | Path,
    tracker: Tracker,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> FitResult:
    """`fit_local` logged to `tracker`'s run: params first, metrics every epoch, then the model
    table and diagram, metrics.jsonl and the best checkpoint; the run is FAILED if training fails."""
    with closes_on_error(tracker):
        params = config.to_dict()
        params["data"] = {**params["data"], "path": str(Path(data_path).absolute())}
        tracker.log_params(params)
        result = fit_local(
            data_path, config, out_dir, log, on_epoch=lambda epoch, metrics, _: tracker.log_metrics(metrics, step=epoch)
        )
    for path in result.artifacts:
        tracker.log_artifact(path)
    tracker.log_artifact(result.best_checkpoint, "checkpoints")
    tracker.finish(fallback=result.out_dir / OUTBOX_FILE, log=log)
    return result
