"""One training run, the same for every engine: `RunSpec` says where its outputs go, which
epoch is its best, and which MLflow run it logs to (tags, parameters, parent); the run's
lifecycle is `open_tracker`, every epoch's metrics, then `record_outputs` (the outputs of
`RunOutputs` and both checkpoints).

The local engine (`train_local`), a Ray Train run (`distributed.ray_engine.fit_ray`) and each
trial of a sweep (`distributed.sweep`) describe their runs with `training_run`, so a tag or
an artifact is added once for all three. `kmervae.core.run_setup.fit_local` knows nothing of
tracking, so the core stays importable with torch, numpy and pyarrow alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kmervae.base.metric_keys import LOWEST_VAL_LOSS, Objective
from kmervae.core.config import RunConfig
from kmervae.core.run_outputs import RunOutputs
from kmervae.tracking.tracker import EXPERIMENT_KIND_TAG as EXPERIMENT_KIND_TAG
from kmervae.tracking.tracker import OUTBOX_FILE, Tracker, closes_on_error
from kmervae.tracking.tracker import PARENT_RUN_TAG as PARENT_RUN_TAG

if TYPE_CHECKING:
    from kmervae.core.run_setup import FitResult

# Every MLflow tag kmervae writes or searches by, in one place.
ENGINE_TAG = "engine"
"""'local' or 'ray': which engine trained the run."""
PRESET_TAG = "preset"
RUN_NAME_TAG = "kmervae.run_name"
USES_LABELS_TAG = "kmervae.uses_labels"
"""'true' where training read genome labels (a supervised term): such runs are never compared unawares."""
STORAGE_TAG = "kmervae.storage"
"""Where Ray wrote the run's checkpoints (a folder or s3://...)."""
SWEEP_TAG = "kmervae.sweep"
"""The sweep's name, on its parent run and on every trial's."""
ROLE_TAG = "kmervae.role"
"""'sweep' on a sweep's parent run (`kmervae best` ranks its children, not it)."""
TRIAL_ID_TAG = "kmervae.trial_id"
TRIALS_TAG = "kmervae.trials"
"""On a sweep's parent run: how many trials it ran."""
FAILURE_TAG = "kmervae.failure"
"""Why a run failed: the root cause's one line."""
STOPPED_EARLY_TAG = "kmervae.stopped_early"
"""'true' on a trial ASHA stopped before its last epoch."""
EXPORT_FORMAT_TAG = "kmervae.export_format"
BEST_TRIAL_TAG = "best_trial_id"
"""On a sweep's parent run: the trial it picked."""
GIT_COMMIT_TAG = "git_commit"
SEARCH_SPACE_TAG = "search_space"
"""On a sweep's parent run: the code's commit and the space's distributions."""
NOTE_TAG = "mlflow.note.content"
"""The run tag MLflow's UI shows as a run's description (markdown) on its overview page."""
# MLflow's own tags that `tracker.py` (the floor below) writes are imported above and named
# here too: PARENT_RUN_TAG, EXPERIMENT_KIND_TAG.


def run_tags(engine: str, name: str, config: RunConfig, preset: str | None = None, **extra: str) -> dict[str, str]:
    """The tags of every training run's MLflow run, whatever trained it, plus `extra` (a
    sweep's and trial's names, the storage): the engine, the run's name, the preset it
    started from and whether training read labels."""
    tags = {ENGINE_TAG: engine, RUN_NAME_TAG: name, USES_LABELS_TAG: str(config.loss.uses_labels).lower(), **extra}
    if preset:
        tags[PRESET_TAG] = preset
    return tags


def run_params(config: RunConfig, data_path: str | Path | None = None) -> dict:
    """The run's parameters: its whole config (and the data it trained on)."""
    params = config.to_dict()
    if data_path is not None:
        params["data"] = {**params["data"], "path": str(Path(data_path).absolute())}
    return params


@dataclass(frozen=True)
class RunSpec:
    """One training run: its name, its outputs (folder and the objective that picks best.pt)
    and its MLflow run: experiment (None: no MLflow), store URI, tags, parameters and, for a
    sweep's trial, the parent run. Picklable: a Tune trial and the sweep's driver build the
    same one for a trial and find its run by the tags."""

    name: str
    outputs: RunOutputs
    experiment: str | None = None
    uri: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None

    def open_tracker(self, resume: bool = False, defer: bool = False) -> Tracker | None:
        """The run's MLflow run, parameters logged once (None without an experiment).
        `resume`: the run with these tags again if there is one (a run resumed by name);
        `defer`: a store that is down now gets the run when it answers (see `Tracker`)."""
        if not self.experiment:
            return None
        tracker = Tracker(
            self.experiment,
            self.name,
            uri=self.uri,
            tags=self.tags,
            parent_run_id=self.parent_run_id,
            resume=resume,
            defer=defer,
        )
        if not tracker.resumed:
            tracker.log_params(self.params)
        return tracker


def training_run(
    engine: str,
    name: str,
    config: RunConfig,
    folder: str | Path,
    *,
    experiment: str | None = None,
    uri: str | None = None,
    data_path: str | Path | None = None,
    objective: Objective = LOWEST_VAL_LOSS,
    preset: str | None = None,
    parent_run_id: str | None = None,
    extra_params: Mapping[str, Any] | None = None,
    **extra_tags: str,
) -> RunSpec:
    """The `RunSpec` of a run of `config` trained by `engine` ('local' or 'ray'): its outputs in
    `folder`, `run_tags` and `run_params` (plus `extra_params`) for its MLflow run."""
    return RunSpec(
        name,
        RunOutputs(Path(folder).absolute(), objective),
        experiment,
        uri,
        run_tags(engine, name, config, preset, **extra_tags),
        {**run_params(config, data_path), **(extra_params or {})},
        parent_run_id,
    )


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


def train_local(
    data_path: str | Path,
    config: RunConfig,
    spec: RunSpec,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> tuple[FitResult, Tracker | None]:
    """`fit_local` as the run `spec` describes: into its outputs, logged to its MLflow run
    (when it has an experiment): params first, metrics every epoch, then `record_outputs`.
    The run is FAILED if training fails. Returns the result and the run's tracker."""
    from kmervae.core.run_setup import fit_local  # torch: only where a run trains here (tags import light)

    tracker = spec.open_tracker()
    with closes_on_error(tracker):
        result = fit_local(
            data_path,
            config,
            spec.outputs.folder,
            log,
            on_epoch=(lambda epoch, metrics, _: tracker.log_metrics(metrics, step=epoch)) if tracker else None,
            objective=spec.outputs.objective,
        )
    if tracker is not None:
        record_outputs(tracker, spec.outputs, result.artifacts, result.history, log)
    return result, tracker
