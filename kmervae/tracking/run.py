"""A training run in MLflow, the same for every engine: its tags, its parameters, every
epoch's metrics, and at the end its outputs (`RunOutputs`) and both checkpoints.

The local engine (`fit_local_tracked`), a Ray Train run (`distributed.ray_engine`) and each
trial of a sweep (`distributed.sweep`) open and close their runs here, so a tag or an
artifact is added once for all three. `kmervae.core.engine.fit_local` knows nothing of
tracking, so the core stays importable with torch, numpy and pyarrow alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from kmervae.core.config import RunConfig
from kmervae.core.engine import FitResult, fit_local
from kmervae.core.metric_keys import LOWEST_VAL_LOSS, Objective
from kmervae.core.run_outputs import RunOutputs
from kmervae.tracking.tracker import OUTBOX_FILE, Tracker, closes_on_error

ENGINE_TAG = "engine"
"""'local' or 'ray': which engine trained the run."""
PRESET_TAG = "preset"
RUN_NAME_TAG = "kmervae.run_name"


def run_tags(engine: str, name: str, config: RunConfig, preset: str | None = None, **extra: str) -> dict[str, str]:
    """The tags of every training run's MLflow run, whatever trained it, plus `extra` (a
    sweep's and trial's names, the storage): the engine, the run's name, the preset it
    started from and whether training read labels (`RunConfig.run_tags`)."""
    tags = {ENGINE_TAG: engine, RUN_NAME_TAG: name, **config.run_tags(), **extra}
    if preset:
        tags[PRESET_TAG] = preset
    return tags


def run_params(config: RunConfig, data_path: str | Path | None = None) -> dict:
    """The run's parameters: its whole config (and the data it trained on)."""
    params = config.to_dict()
    if data_path is not None:
        params["data"] = {**params["data"], "path": str(Path(data_path).absolute())}
    return params


def record_outputs(
    tracker: Tracker,
    outputs: RunOutputs,
    artifacts: Sequence[Path],
    history: Sequence[Mapping[str, float]],
    log: Callable[[str], None],
) -> None:
    """Close a finished run: every epoch logged once (backfilling what the engine could not log,
    in an outage or from a killed worker), the artifacts, best.pt and last.pt under
    checkpoints/, then FINISHED (calls the store could not take wait in the outputs' outbox)."""
    tracker.sync_history(list(history))
    for path in artifacts:
        tracker.log_artifact(path)
    tracker.log_artifact(outputs.best_checkpoint, "checkpoints")
    tracker.log_artifact(outputs.last_checkpoint, "checkpoints")
    tracker.finish(fallback=outputs.folder / OUTBOX_FILE, log=log)


def fit_local_tracked(
    data_path: str | Path,
    config: RunConfig,
    out_dir: str | Path,
    tracker: Tracker,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    objective: Objective = LOWEST_VAL_LOSS,
) -> FitResult:
    """`fit_local` logged to `tracker`'s run: params first, metrics every epoch, then
    `record_outputs`; the run is FAILED if training fails."""
    with closes_on_error(tracker):
        tracker.log_params(run_params(config, data_path))
        result = fit_local(
            data_path,
            config,
            out_dir,
            log,
            on_epoch=lambda epoch, metrics, _: tracker.log_metrics(metrics, step=epoch),
            objective=objective,
        )
    record_outputs(tracker, RunOutputs(result.out_dir, objective), result.artifacts, result.history, log)
    return result
