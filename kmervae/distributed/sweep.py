"""Hyperparameter sweeps: Ray Tune + Optuna (seeded TPE) + ASHA over Ray Train runs, in MLflow.

The supported Train V2 pattern (docs/ray_patterns.md): a Tune trial is a plain function that
builds a `TorchTrainer` (the same one `kmervae train` uses) with `TuneReportCallback`, so
every epoch's metrics reach Tune and ASHA, whose clock is the epochs a trial has trained
(`EPOCHS_TRAINED`, which a resume does not reset). The data is read and decoded once per sweep
and shared by all trials. MLflow gets one parent run per sweep and one nested child run
per trial; `--resume` continues the same runs. Search spaces are define-by-run functions
that live in `sweeps/`: the engine only sees the overrides they return.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kmervae.base.errors import ConfigError
from kmervae.base.feature_table import DatasetFiles, dataset_files, label_vocabulary
from kmervae.base.metric_keys import (
    BIN_KEYS,
    EPOCH,
    EPOCHS_TRAINED,
    EST_BIN_KEYS,
    LABELED_KEYS,
    VAL_LINK_AGREEMENT,
    VAL_LOSS,
)
from kmervae.base.quiet import logger_level
from kmervae.base.redact import redact
from kmervae.base.storage import check_writable, exists, is_uri, join, list_names, local_outputs, normalize
from kmervae.binning.markers import KeyedMarkers
from kmervae.core.checkpoint import Checkpoint, checkpoint_bytes, load_checkpoint
from kmervae.core.config import RunConfig, SweepConfig
from kmervae.core.run_outputs import RunOutputs
from kmervae.core.run_setup import plan_run
from kmervae.distributed.failures import root_cause
from kmervae.distributed.sweep_report import (
    SpaceFn,
    SweepResult,
    TrialRow,
    report_to_parent,
    space_distributions,
    trial_outputs,
)
from kmervae.tracking.run import (
    FAILURE_TAG,
    GIT_COMMIT_TAG,
    PARENT_RUN_TAG,
    ROLE_TAG,
    SEARCH_SPACE_TAG,
    STOPPED_EARLY_TAG,
    STORAGE_TAG,
    SWEEP_TAG,
    TRIAL_ID_TAG,
    RunSpec,
    training_run,
)
from kmervae.tracking.tracker import OUTBOX_FILE, check_reachable, closes_on_error, tag_filter, tracking_uri

LOG_NAME = "sweep.log"
"""What Ray, Tune and the trials printed, in the sweep's local outputs (`CheckedSweep.log_path`)."""
TRIAL_CPUS = 0.1
"""CPU reserved for each trial's own actor (it only waits on its Ray Train run)."""


def config_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The `section.key` entries of a trial's parameters (helper parameters such as a depth
    that only decides how many widths exist carry no dot and are not config)."""
    return {k: v for k, v in params.items() if "." in k}


LOSS_DEFINING = ("loss.", "model.latent_dim", "model.gate_k7")
"""Settings (prefixes) that change how val/loss is computed: trials varying them are not comparable on it."""


def check_objective(metric: str, varied: set[str]) -> None:
    """Refuse to rank on val/loss a sweep whose trials each compute it differently."""
    if metric != VAL_LOSS:
        return
    defining = sorted(key for key in varied if key.startswith(LOSS_DEFINING))
    if defining:
        raise ConfigError(
            f"--metric val/loss cannot rank this sweep: it varies {', '.join(defining)}, and each trial computes "
            "val/loss with its own settings; rank on val/knn_acc (needs labels), which every trial computes alike"
        )


def check_space(space: SpaceFn, base: RunConfig, seed: int, samples: int = 16) -> set[str]:
    """Sample the space a few times and build each config: a bad space fails before Ray starts
    (an abundance branch too, when `base` is set up for features without abundance: `RunConfig.check_samples`).
    Returns the settings the space sets (`section.key`)."""
    import pickle

    import optuna

    try:
        pickle.dumps(space)
    except (pickle.PicklingError, AttributeError, TypeError):
        raise ConfigError(
            f"the search space {getattr(space, '__qualname__', space)!r} cannot be pickled: define it at module level "
            "(Tune saves it with the sweep's state)"
        ) from None
    with logger_level("optuna", logging.WARNING):  # a study per call: its INFO lines say nothing here
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        varied: set[str] = set()
        for _ in range(samples):
            trial = study.ask()
            try:
                returned = space(trial)
            except Exception as err:  # the space is user code: say which and why
                raise ConfigError(f"the search space cannot be sampled: {type(err).__name__}: {err}") from None
            params = dict(trial.params)
            params.update(returned or {})
            config = base.with_values(config_overrides(params))
            config.check_samples(base.model.abundance_samples)  # an abundance branch needs features with depths
            varied.update(config_overrides(params))
            study.tell(trial, 0.0)
    return varied


def dataset_fingerprint(files: DatasetFiles) -> str:
    """A short hash of the dataset: file names, sizes and the manifest (cheap for any size)."""
    digest = hashlib.sha256()
    for path in files.paths:
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    if files.manifest is not None:
        digest.update(json.dumps(files.manifest, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def git_commit() -> str:
    """The commit of the code running the sweep, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_trial(
    tune_config: dict[str, Any],
    *,
    base: RunConfig,
    sweep: SweepConfig,
    labeled: bool,
    plan,
    train_ds,
    val_ds,
    parent_run_id,
    mlflow_uri,
    data_bytes: int = 0,
    markers: KeyedMarkers | None = None,
) -> None:
    """One Tune trial: build its config from the sampled overrides and run Ray Train on it."""
    import ray.tune

    from kmervae.distributed.ray_engine import WorkerPlan, build_trainer, fit
    from kmervae.tracking.tracker import use_impatient_http

    use_impatient_http()  # a trial's actor is a process of its own
    config = trial_config(base, tune_config)
    trial_id = ray.tune.get_context().get_trial_id()
    storage = join(sweep.storage, sweep.name, "trials")
    spec = trial_run(sweep, trial_id, mlflow_uri, parent_run_id, config, tune_config)
    # With the tracking server down, the run is made later (the driver backfills it).
    tracker = spec.open_tracker(resume=True, defer=True)
    _, trained = trained_run(join(storage, f"trial-{trial_id}")) or (None, None)
    if trained is not None and len(trained.history) >= config.train.epochs:
        # A resumed sweep restarts a trial that had trained all its epochs when the sweep was
        # stopped but that Tune had not yet saved as ended: Tune hears its last epoch again.
        ray.tune.report({**trained.history[-1], EPOCHS_TRAINED: len(trained.history)})
        return
    # A trial's best checkpoint is its best epoch by the sweep's objective.
    worker_plan = WorkerPlan(config, labeled, plan.cpus_per_worker, data_bytes, spec.outputs.objective, markers)
    trainer = build_trainer(
        worker_plan, plan, train_ds, val_ds, f"trial-{trial_id}", storage, tracker, callbacks=[epoch_clock()]
    )
    try:
        fit(trainer)
    except BaseException as err:
        if tracker is not None:
            tracker.set_tag(FAILURE_TAG, root_cause(err))
            tracker.finish("FAILED")
        raise
    # Nothing after fit() is guaranteed to run: ASHA stops a trial (killing this actor) as
    # soon as its last report arrives. The driver exports every trial's results instead.


SEED_INDEX = "__trial_index__"
"""Where `SeedRepeats` puts a repeat's index in a trial's config (the name Ray's own Repeater uses):
the trial trains with train.seed = the base's + it."""


def trial_config(base: RunConfig, sampled: dict[str, Any]) -> RunConfig:
    """A trial's settings: the sweep's base with the sampled overrides, its epochs at most the
    sweep's (ASHA's max_t: a space may draw `train.epochs` up to it, not past it), and its seed
    the base's plus its index among the repeats of one setting (`SweepConfig.seeds`)."""
    config = base.with_values(config_overrides(sampled))
    if config.train.epochs > base.train.epochs:
        config = config.with_train(epochs=base.train.epochs)
    if sampled.get(SEED_INDEX):
        config = config.with_train(seed=base.train.seed + int(sampled[SEED_INDEX]))
    return config


def setting_of(params: dict[str, Any]) -> tuple:
    """What a trial's repeats share: its sampled parameters without the repeat's index."""
    return tuple(sorted((k, repr(v)) for k, v in params.items() if k != SEED_INDEX))


def trial_epochs(base: RunConfig, sampled: dict[str, Any]) -> int:
    """The epochs a trial with these sampled settings trains unless ASHA stops it."""
    return trial_config(base, sampled).train.epochs


def epoch_clock():
    """The Ray Train callback that passes a trial's reports on to Tune with ASHA's clock,
    `EPOCHS_TRAINED`, which counts the epochs before a resume too."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochClockReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            first = {**metrics[0], EPOCHS_TRAINED: int(metrics[0][EPOCH]) + 1}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return EpochClockReport()


def trained_run(run_dir: str) -> tuple[Any, Checkpoint] | None:
    """A trial's Ray Train result and its latest checkpoint (the history up to that epoch), or
    None if the trial has not finished an epoch."""
    import ray.train

    from kmervae.distributed.ray_engine import CHECKPOINT_FILE

    if not exists(run_dir) or not any(name.startswith("checkpoint_") for name in list_names(run_dir)):
        return None
    result = ray.train.Result.from_path(run_dir)
    with result.checkpoint.as_directory() as folder:
        return result, load_checkpoint(Path(folder) / CHECKPOINT_FILE)


def trial_run(
    sweep: SweepConfig, trial_id: str, uri: str | None, parent_run_id: str | None, config: RunConfig, sampled: dict
) -> RunSpec:
    """A trial's run: its outputs in the sweep's, ranked by the sweep's objective, and its MLflow
    child run under the sweep's (found again by its tags: resume, the driver's export)."""
    name = f"{sweep.name}-{trial_id}"
    return training_run(
        "ray",
        name,
        config,
        trial_outputs(local_outputs(sweep.storage, sweep.name), trial_id),
        experiment=sweep.experiment if uri else None,
        uri=uri,
        objective=sweep.objective,
        parent_run_id=parent_run_id,
        extra_params={"trial": {"id": trial_id, **sampled}},
        **{SWEEP_TAG: sweep.name, TRIAL_ID_TAG: str(trial_id)},
    )


def run_sweep(
    data_path: str | Path,
    base: RunConfig,
    space: SpaceFn,
    sweep: SweepConfig,
    *,
    resume: bool = False,
    mlflow_dir: str | Path | None = None,
    use_mlflow: bool = True,
    address: str | None = None,
    data_mode: str = "auto",
    log: Callable[[str], None] | None = None,
) -> SweepResult:
    """Run (or with `resume`, continue) a sweep; returns the trials and the best one:
    `check_sweep`, then `CheckedSweep.run`."""
    checked = check_sweep(data_path, base, space, sweep, resume=resume, mlflow_dir=mlflow_dir, use_mlflow=use_mlflow)
    return checked.run(address=address, data_mode=data_mode, log=log)


@dataclass(frozen=True)
class CheckedSweep:
    """A sweep that `check_sweep` found able to run: its data, every trial's base config, its
    space and settings (storage normalised), and where its local outputs go. A command-line
    entry point sends the console to `log_path` (`console.quiet_console`) around `run`."""

    data_path: str | Path
    files: DatasetFiles
    base: RunConfig
    space: SpaceFn
    sweep: SweepConfig
    labels: list[str]
    resume: bool
    mlflow_uri: str | None
    outputs: Path
    markers: KeyedMarkers | None = None  # the dataset's marker genes, for val/est_nc_bins

    @property
    def log_path(self) -> Path:
        """Where a quiet console sends what Ray, Tune and the trials print."""
        return self.outputs / LOG_NAME

    def run(self, *, address: str | None = None, data_mode: str = "auto", log=None) -> SweepResult:
        """Start (or join) Ray, open the parent MLflow run, run every trial with Tune, collect.
        The console gets the header, the live view of `sweep_view` and `log`'s lines (default:
        the console of `console.current()`)."""
        from ray import tune

        from kmervae.distributed import console
        from kmervae.distributed.ray_data import build_datasets, decoded_bytes
        from kmervae.distributed.ray_engine import init_ray
        from kmervae.distributed.sweep_view import SweepView

        base, sweep, files = self.base, self.sweep, self.files
        log = log or (lambda line: print(line, file=console.current(), flush=True))
        init_ray(address)
        plan, concurrent = _trial_resources(sweep)
        tracker = (
            _parent_run(sweep, files, self.data_path, base, self.mlflow_uri, self.space) if self.mlflow_uri else None
        )
        log(
            f"sweep {sweep.name}: {sweep.num_samples} trial(s) of at most {base.train.epochs} epoch(s), ranked on "
            f"{sweep.metric}; {concurrent} at a time, each {plan.describe()}"
        )
        log(f"data      {self.data_path} ({files.rows:,} contigs); storage {redact(join(sweep.storage, sweep.name))}")
        if tracker is not None:
            log(f"mlflow    {redact(tracker.uri)}, experiment '{sweep.experiment}'")
        printed = console.log_file()
        log(f"log       {printed} (what Ray and the trials print)" if printed else "log       this console")
        train_ds, val_ds = build_datasets(files, base.data, self.labels, base.train.seed, data_mode)  # once, for all
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial,
                base=base,
                sweep=sweep,
                labeled=bool(self.labels),
                plan=plan,
                train_ds=train_ds,
                val_ds=val_ds,
                parent_run_id=tracker.run_id if tracker else None,
                mlflow_uri=tracker.uri if tracker else None,
                data_bytes=decoded_bytes(files, base.data),
                markers=self.markers,
            ),
            {"cpu": TRIAL_CPUS},
        )
        view = SweepView(objective=sweep.objective, total=sweep.num_samples, epochs_of=partial(trial_epochs, base))
        tuner = _tuner(trainable, view, self.space, sweep, base, concurrent, self.resume)
        with closes_on_error(tracker), logger_level("optuna", logging.WARNING):
            grid = tuner.fit()
        return _collect(grid, self.space, sweep, self.outputs, tracker, log)


def check_sweep(
    data_path: str | Path,
    base: RunConfig,
    space: SpaceFn,
    sweep: SweepConfig,
    *,
    resume: bool = False,
    mlflow_dir: str | Path | None = None,
    use_mlflow: bool = True,
) -> CheckedSweep:
    """Everything that can refuse a sweep before Ray starts (one line each): the data, the
    objective against the data and the space, --resume against what storage holds, room for
    every trial's checkpoints, the tracking store."""
    files = dataset_files(data_path)
    labels = label_vocabulary(files)
    check_data_for_metric(files, data_path, base, sweep.metric, labels)
    if sweep.metric in BIN_KEYS:  # computed only when asked for: every trial bins its validation contigs
        base = base.with_train(nc_bins=True)
    if sweep.metric in EST_BIN_KEYS:  # the same, judged by the dataset's marker genes (read once, here)
        base = base.with_train(est_nc_bins=True)
    # Trials read the abundance column when their model has a branch: the base is fitted to the data.
    plan = plan_run(data_path, base, labels)
    base, markers = plan.config, plan.markers
    check_objective(sweep.metric, check_space(space, base, sweep.seed))
    sweep = dataclasses.replace(sweep, storage=normalize(sweep.storage))  # a folder or s3://...
    outputs = local_outputs(sweep.storage, sweep.name)
    _check_before_ray(files, data_path, base, sweep, labels, resume, outputs)
    uri = None
    if use_mlflow:
        uri = tracking_uri(mlflow_dir)
        check_reachable(uri)  # a dead tracking server fails before Ray starts
    return CheckedSweep(data_path, files, base, space, sweep, labels, resume, uri, outputs, markers)


def check_data_for_metric(files: DatasetFiles, data_path, base: RunConfig, metric: str, labels: list[str]) -> None:
    """Refuse an objective the data cannot score: one that needs labels on unlabelled data, link
    agreement without fragments of one record."""
    from kmervae.distributed.ray_data import validation_must_links

    if metric in LABELED_KEYS + BIN_KEYS and not labels:
        raise ConfigError(
            f"--metric {metric} needs labels, and {data_path} has none; featurize with labels or use val/loss"
        )
    if metric == VAL_LINK_AGREEMENT and not validation_must_links(files, base.data, labels):
        raise ConfigError(
            f"--metric val/link_agreement needs validation contigs cut from one record (ids RECORD:START-END), "
            f"and {data_path} has none; featurize with --fragment-length or rank on another metric"
        )


def _check_before_ray(
    files: DatasetFiles, data_path, base: RunConfig, sweep: SweepConfig, labels: list[str], resume: bool, outputs: Path
) -> None:
    """Refuse, before Ray starts, a sweep that cannot run: a --resume of nothing or a new sweep
    over an old one, storage without room for every trial's checkpoints."""
    storage, sweep_dir = sweep.storage, join(sweep.storage, sweep.name)
    if resume and not exists(sweep_dir):
        raise ConfigError(f"--resume: no sweep '{sweep.name}' in {storage}; run it without --resume first")
    if not resume and exists(sweep_dir):
        raise ConfigError(
            f"a sweep '{sweep.name}' exists in {storage}; pass --resume to continue it or choose another --name"
        )
    # Every trial keeps its best and latest checkpoints in storage (plus one being written)
    # and exports best.pt and last.pt to the outputs: the whole sweep's worth must fit.
    size = checkpoint_bytes(base)
    in_storage, in_outputs = size * (2 * sweep.num_samples + 1), size * 2 * sweep.num_samples
    if is_uri(storage):
        check_writable(storage)
        check_writable(outputs, in_outputs)
    else:
        check_writable(storage, in_storage + in_outputs)  # the outputs live inside local storage


def _trial_resources(sweep: SweepConfig):
    """(each trial's ResourcePlan, trials at once) on the connected cluster."""
    from kmervae.distributed.ray_engine import cluster_capacity, plan_resources

    capacity = cluster_capacity()
    workers = sweep.workers_per_trial
    gpus_per_worker = None if sweep.gpus_per_trial is None else sweep.gpus_per_trial / workers
    use_cpu = sweep.gpus_per_trial == 0
    concurrent = sweep.max_concurrent or _max_concurrent(capacity, workers, gpus_per_worker, use_cpu, sweep.num_samples)
    plan = plan_resources(capacity, workers, gpus_per_worker, use_cpu, trials=concurrent, trial_cpus=TRIAL_CPUS)
    return plan, concurrent


def _tuner(trainable, view, space: SpaceFn, sweep: SweepConfig, base: RunConfig, concurrent: int, resume: bool):
    """The Tune run of the sweep: restored from its storage with `resume`, else new: Optuna's
    TPE proposes, ASHA stops weak trials early, `view` reports to the console. With several seeds
    per setting, `SeedRepeats` runs each proposal `sweep.seeds` times (Optuna hears their median)
    and no trial is stopped early."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from kmervae.distributed.seed_repeats import SeedRepeats

    tune_dir = join(sweep.storage, sweep.name, "tune")
    if resume and tune.Tuner.can_restore(tune_dir):
        return tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
    objective = sweep.objective
    searcher = OptunaSearch(
        space=space, metric=objective.metric, mode=objective.mode, sampler=optuna.samplers.TPESampler(seed=sweep.seed)
    )
    scheduler = ASHAScheduler(
        time_attr=EPOCHS_TRAINED,
        max_t=base.train.epochs,
        grace_period=min(sweep.grace_period, base.train.epochs),
        reduction_factor=sweep.reduction_factor,
    )
    if sweep.seeds > 1:
        searcher, scheduler = SeedRepeats(searcher, sweep.seeds, SEED_INDEX), None
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=objective.metric,
            mode=objective.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=sweep.num_samples,
            max_concurrent_trials=concurrent,
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=join(sweep.storage, sweep.name),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
            callbacks=[view],
        ),
    )


def _collect(grid, space: SpaceFn, sweep: SweepConfig, outputs: Path, tracker, log) -> SweepResult:
    """The sweep's result: every trial summarised and exported (outputs, MLflow child run),
    the best picked, the parent run's report and the registered model."""
    sweep_dir = join(sweep.storage, sweep.name)
    result = _summarize(grid, sweep, sweep_dir, outputs)
    result.space = space
    if tracker is not None:
        _drop_lost_trials_if_reachable(tracker, sweep, {row.trial_id for row in result.trials}, log)
    for row in result.trials:
        _export_trial(row, sweep, sweep_dir, tracker, log)
    _pick_best(result, sweep, outputs)
    if tracker is not None:
        result.parent_run_id, result.mlflow_uri = tracker.run_id, tracker.uri
        result.registered = report_to_parent(tracker, result, sweep, grid, log)
    return result


def _parent_run(sweep: SweepConfig, files: DatasetFiles, data_path, base: RunConfig, uri: str, space: SpaceFn):
    """The sweep's MLflow parent run (the same one again on --resume)."""
    from kmervae.tracking.tracker import Tracker

    tags = {SWEEP_TAG: sweep.name, ROLE_TAG: "sweep", STORAGE_TAG: sweep.storage}
    tracker = Tracker(sweep.experiment, sweep.name, uri=uri, tags=tags, resume=True)
    if not tracker.resumed:
        data = {
            "path": str(Path(data_path).absolute()),
            "contigs": files.rows,
            "files": len(files.paths),
            "hash": dataset_fingerprint(files),
        }
        tracker.log_params({"sweep": asdict(sweep), **base.to_dict(), "dataset": data})
        space_text = json.dumps({k: repr(v) for k, v in space_distributions(space).items()})
        for key, value in ((GIT_COMMIT_TAG, git_commit()), (SEARCH_SPACE_TAG, space_text[:5000])):
            tracker.set_tag(key, value)
    return tracker


def _drop_lost_trials(parent, sweep: SweepConfig, known: set[str], log) -> None:
    """Delete child runs of trials Tune no longer knows.

    A driver killed between starting a trial and saving Tune's state loses that trial on
    --resume (Optuna proposes a new one instead); its half-written MLflow child would
    otherwise stay as a duplicate, RUNNING forever.
    """
    query = tag_filter({PARENT_RUN_TAG: parent.run_id, SWEEP_TAG: sweep.name})
    lost = [
        run
        for run in parent.client.search_runs([parent.experiment_id], filter_string=query, max_results=10_000)
        if run.data.tags.get(TRIAL_ID_TAG) not in known
    ]
    for run in lost:
        parent.client.delete_run(run.info.run_id)
    if lost:
        log(f"removed {len(lost)} MLflow run(s) of trials lost when the sweep was interrupted")


def _drop_lost_trials_if_reachable(parent, sweep: SweepConfig, known: set[str], log) -> None:
    from kmervae.tracking.tracker import is_unreachable

    try:
        _drop_lost_trials(parent, sweep, known, log)
    except Exception as err:
        if not is_unreachable(err):
            raise
        log("warning: MLflow is unreachable: runs of trials lost by an interruption (if any) were not removed")
        return


def _max_concurrent(capacity: dict[str, float], workers: int, gpus_per_worker, use_cpu: bool, samples: int) -> int:
    """As many trials as fit: by GPUs when trials use them, else one CPU per worker."""
    from kmervae.distributed.ray_engine import DATA_CPUS

    gpus = float(capacity.get("GPU", 0))
    if not use_cpu and gpus and (gpus_per_worker or 1.0) > 0:
        fit = int(gpus // (workers * (gpus_per_worker or 1.0)))
    else:
        fit = int((float(capacity.get("CPU", 0)) - DATA_CPUS) // (workers + TRIAL_CPUS))
    return max(1, min(samples, fit))


def _summarize(grid, sweep: SweepConfig, sweep_dir: str, outputs: Path) -> SweepResult:
    rows = []
    for trial in grid:
        metrics = trial.metrics or {}
        rows.append(
            TrialRow(
                trial_id=str(metrics.get("trial_id") or (trial.path and Path(trial.path).name)),
                status="ERROR" if trial.error else "OK",
                error=root_cause(trial.error) if trial.error else "",
                epochs=int(metrics.get(EPOCHS_TRAINED, 0)),
                last=metrics.get(sweep.metric, math.nan),
                params=dict(trial.config or {}),
            )
        )
    return SweepResult(sweep.name, sweep_dir, str(outputs), rows)


def _export_trial(row: TrialRow, sweep: SweepConfig, sweep_dir: str, parent, log) -> None:
    """Export a trial's checkpoints from its Ray Train run folder; close its MLflow child run."""
    from kmervae.distributed.ray_engine import export_results

    trained = trained_run(join(sweep_dir, "trials", f"trial-{row.trial_id}")) if row.status == "OK" else None
    result, checkpoint = trained or (None, None)
    config = checkpoint.config if checkpoint else RunConfig()
    parent_run = (parent.uri, parent.run_id) if parent is not None else (None, None)
    spec = trial_run(sweep, row.trial_id, *parent_run, config, row.params)
    out = spec.outputs.folder
    # The trial's run: made now (or at mlflow-sync) if the server was down when it started.
    tracker = spec.open_tracker(resume=True, defer=True)
    if checkpoint is None:
        if tracker is not None:
            tracker.set_tag(FAILURE_TAG, row.error or "no checkpoint")
            tracker.finish("FAILED", fallback=out / OUTBOX_FILE, log=log)
        return
    row.epochs = len(checkpoint.history)
    best = sweep.objective.best_epoch(checkpoint.history)
    if best is not None:  # a trial is as good as its best epoch (its best checkpoint), not its last report
        row.best = best[sweep.metric]
    if tracker is not None:
        stopped = len(checkpoint.history) < config.train.epochs  # ASHA ended it before its last epoch
        tracker.set_tag(STOPPED_EARLY_TAG, str(stopped).lower())
    quiet = lambda line: log(line) if line.startswith("warning") else None  # noqa: E731
    export_results(result, config, spec.outputs, tracker, log=quiet)


def _pick_best(result: SweepResult, sweep: SweepConfig, outputs: Path) -> None:
    """The setting whose trials' best epochs have the best median (one trial per setting: the
    trial whose best epoch is best), its best trial, and that trial's best checkpoint."""
    ok = [r for r in result.trials if r.status == "OK" and r.best is not None]
    if ok:
        settings: dict[tuple, list[TrialRow]] = {}
        for row in ok:
            settings.setdefault(setting_of(row.params), []).append(row)
        medians = [(float(np.median([r.best for r in rows])), rows) for rows in settings.values()]
        picked = sweep.objective.best_of(medians, lambda pair: pair[0])
        if picked is None:
            return
        result.best_median, chosen = picked
        result.best_seeds = sorted(r.best for r in chosen)
        result.best_trial = sweep.objective.best_of(chosen, lambda row: row.best)
        candidate = RunOutputs(trial_outputs(outputs, result.best_trial.trial_id)).best_checkpoint
        result.best_checkpoint = candidate if candidate.exists() else None
