"""Distributed training on Ray: Ray Data shards the features, Ray Train runs DDP workers.

Follows Ray's torch_regression_example: a free `train_loop_per_worker(plan)` that reads
its shard with `get_dataset_shard(...).iter_torch_batches(...)`, calls the same
`train_epoch` / `validate_epoch` as the local engine (with an all-reduce, so validation
is exact over all workers), and `ray.train.report`s every epoch with a checkpoint from
rank 0. The driver (`fit_ray`) validates the data and the resource request before any
worker starts, owns the MLflow run, and logs artifacts at the end. Rank 0 logs each
epoch's metrics to that run in one batch. See docs/ray_patterns.md for the traps this
avoids (resource over-subscription hangs, relative MLflow paths, Train V2 APIs).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kmervae.base.errors import ConfigError, TrainingDiverged
from kmervae.base.metric_keys import EPOCH, LOWEST_VAL_LOSS, Objective
from kmervae.base.quiet import logger_level
from kmervae.base.redact import redact
from kmervae.base.storage import check_writable, is_uri, local_outputs
from kmervae.base.storage import normalize as normalize_storage
from kmervae.binning.markers import KeyedMarkers
from kmervae.core.checkpoint import CHECKPOINT_COPIES, checkpoint_bytes, load_checkpoint
from kmervae.core.config import RunConfig
from kmervae.core.data import EpochData, InMemoryData, use_resident
from kmervae.core.engine import Collective
from kmervae.core.run_outputs import RunOutputs
from kmervae.core.run_setup import plan_run, start_run
from kmervae.distributed import console
from kmervae.distributed.console import RELAY_MARK
from kmervae.distributed.ray_data import StreamedShards, gather_shard
from kmervae.tracking.run import STORAGE_TAG, RunSpec, record_outputs, training_run
from kmervae.tracking.tracker import (
    Outbox,
    check_reachable,
    closes_on_error,
    metrics_op,
    mlflow_client,
    tracking_uri,
    use_impatient_http,
)

CHECKPOINT_FILE = "checkpoint.pt"
DATA_CPUS = 1.0
"""CPUs left free for Ray Data's read tasks (each asks for one; without it the read never starts)."""
MAX_FAILURES = 3
"""Worker failures survived per run: each restarts the worker group from the latest checkpoint
(a worker that died; not a diverged loss, which a restart repeats: `train_loop_per_worker`)."""


@dataclass(frozen=True)
class ResourcePlan:
    """How a training run is laid out on the cluster."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    def describe(self) -> str:
        gpu = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        return f"{self.workers} worker(s) x ({self.cpus_per_worker:g} CPU{gpu})"


@dataclass(frozen=True)
class WorkerPlan:
    """What every Ray Train worker of one run needs, sent to it as this object (picklable):
    the run's config, whether the data has labels, the CPUs each worker was given, the
    decoded size of the data (for the GPU-resident decision) and the objective that marks
    the best epochs (the epoch table's `*`, the checkpoint Ray keeps)."""

    config: RunConfig
    labeled: bool
    cpus_per_worker: float
    data_bytes: int
    objective: Objective = LOWEST_VAL_LOSS
    markers: KeyedMarkers | None = None  # the dataset's marker genes (train.est_nc_bins)


def cluster_capacity() -> dict[str, float]:
    """The connected cluster's resources, all of them, not what is free at this moment: what
    a job that just ended (a sweep stopped with `ray job stop`) still holds comes back within
    seconds, and Ray queues work until it does, so a refusal means the request can never fit."""
    import ray

    return ray.cluster_resources()


def plan_resources(
    capacity: dict[str, float],
    workers: int,
    gpus_per_worker: float | None,
    use_cpu: bool,
    trials: int = 1,
    trial_cpus: float = 0.0,
) -> ResourcePlan:
    """Fit `trials` concurrent runs of `workers` workers on a cluster of `capacity`
    (`cluster_capacity`), or say why they cannot fit.

    `trial_cpus` is what each run's own driver needs besides its workers (a Tune trial
    actor); one CPU always stays free for Ray Data's read tasks.
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    cpus, gpus = float(capacity.get("CPU", 0)), float(capacity.get("GPU", 0))
    if use_cpu:
        gpus_per_worker = 0.0
    elif gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus >= workers * trials else 0.0
    if gpus_per_worker < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    what = f"{trials} x {workers} worker(s)" if trials > 1 else f"{workers} worker(s)"
    if trials * workers * gpus_per_worker > gpus:
        raise ConfigError(
            f"cannot fit {what} x {gpus_per_worker:g} GPU: the cluster has {gpus:g} GPU(s) "
            f"and {cpus:g} CPU(s); ask for fewer workers or pass --cpu"
        )
    spare = cpus - DATA_CPUS - trials * trial_cpus
    per_worker = spare / (trials * workers)
    cpus_per_worker = min(1.0, per_worker) if gpus_per_worker else min(4.0, per_worker)
    if cpus_per_worker < 0.25:
        raise ConfigError(
            f"cannot fit {what}: the cluster has {cpus:g} CPU(s), {DATA_CPUS:g} of which Ray Data's "
            f"readers need, leaving {max(spare, 0):g} for workers (at least 0.25 each); ask for at most "
            f"{max(int(spare / 0.25), 0)} worker(s) in all or add nodes"
        )
    return ResourcePlan(workers, round(cpus_per_worker, 3), gpus_per_worker)


def train_loop_per_worker(plan: WorkerPlan) -> TrainingDiverged | None:
    """Ray Train worker: the run set up by `start_run`, the shared epoch loop on this worker's
    shard, reporting every epoch. Returns the `TrainingDiverged` that ended it, if one did
    (`fit`, on the driver, raises it)."""
    import ray.train
    import ray.train.torch

    config = plan.config
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(plan.cpus_per_worker)))  # the CPUs this worker was given
    resumed = None
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            resumed = load_checkpoint(Path(folder) / CHECKPOINT_FILE)
    # prepare_model moves the model to the device and wraps it in DDP when world > 1.
    with start_run(config, device, plan.objective, resumed=resumed, prepare=ray.train.torch.prepare_model) as run:
        data = worker_data(plan, device, rank, world)

        def report(epoch: int, metrics: dict[str, float], history: list[dict[str, float]]) -> None:
            if rank != 0:
                ray.train.report(metrics)
                return
            # Marked for the driver's console (`console.quiet_console`); not print: Ray's print echoes twice.
            sys.stdout.write("".join(RELAY_MARK + line + "\n" for line in run.printer.lines(epoch, metrics)))
            sys.stdout.flush()
            with tempfile.TemporaryDirectory() as folder:
                run.save(Path(folder) / CHECKPOINT_FILE, epoch, metrics, history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

        try:
            run.train(data, device=device, on_epoch=report, collective=DDPCollective.of(world), markers=plan.markers)
        except TrainingDiverged as diverged:
            # Returned, not raised: Ray Train restarts a worker group that raised (MAX_FAILURES
            # times) from the last checkpoint, where the same data and settings diverge again.
            # Every rank gets here together, from the all-reduced loss, so none waits on another.
            return diverged
    return None


def fit(trainer) -> Any:
    """`trainer.fit()` for a run of `train_loop_per_worker`: its Result, or the
    `TrainingDiverged` that ended it, raised."""
    result = trainer.fit()
    if isinstance(result.return_value, TrainingDiverged):
        raise result.return_value
    return result


def worker_data(plan: WorkerPlan, device: torch.device, rank: int, world: int) -> EpochData:
    """This worker's data: read once onto the device (GPU-resident mode, when it fits) or streamed."""
    import ray.train

    tc = plan.config.train
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    if use_resident(tc.resident, device, plan.data_bytes // world):
        train, val = gather_shard(train_shard, device), gather_shard(val_shard, device, bucket=(rank, world))
        if rank == 0:
            sys.stdout.write(f"data resident on {device}: {len(train):,} training contigs per worker\n")
        generator = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + rank)
        return InMemoryData(train, val, tc.batch_size, generator, drop_last=True)  # equal steps on every rank
    return StreamedShards(train_shard, val_shard, tc.batch_size, device, rank, world, tc.seed, plan.labeled)


class DDPCollective(Collective):
    """The epoch loop's cross-rank operations over torch.distributed (gloo or NCCL)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.all_reduce = dist.all_reduce

    @classmethod
    def of(cls, world: int) -> Collective:
        """DDP operations when this run has several ranks; none otherwise."""
        import torch.distributed as dist

        return cls() if world > 1 and dist.is_available() and dist.is_initialized() else Collective()

    def sync_buffers(self, model: torch.nn.Module) -> None:
        # DDP keeps each rank's BatchNorm running statistics from its own last batch: make
        # every rank validate rank 0's model, the one that is checkpointed.
        for buffer in model.buffers():
            self.dist.broadcast(buffer, src=0)

    def gather(self, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gathered: list[Any] = [None] * self.dist.get_world_size()
        self.dist.all_gather_object(gathered, parts)
        # A rank with no rows of a part sends an empty placeholder whose trailing shape may differ.
        return tuple(
            torch.cat(nonempty) if (nonempty := [g[i] for g in gathered if g[i].numel()]) else part
            for i, part in enumerate(parts)
        )


def mlflow_epoch_logger(uri: str, run_id: str):
    """A Ray Train callback on the controller that logs each epoch's metrics to MLflow when
    the epoch's report (and checkpoint) is registered, the point a restart resumes from.

    Logged there, an epoch reaches MLflow exactly once: an epoch whose workers die before
    their report is registered is retrained and logged then, never twice. Calls go through
    an `Outbox` (a tracking outage does not stop training); epochs it could not send, or
    that an ASHA stop or a dead controller cut off, are logged by the driver at the end from
    the checkpoint's history (`Tracker.sync_history`).
    """
    from ray.train import UserCallback

    class MlflowEpochLogger(UserCallback):  # defined here: importing this module needs no Ray
        def __init__(self):
            self.outbox = None  # made in the controller process, where the callback runs

        def after_report(self, run_context, metrics, checkpoint):
            if not metrics or EPOCH not in metrics[0]:
                return
            if self.outbox is None:
                use_impatient_http()  # the controller is a process of its own
                self.outbox = Outbox(mlflow_client(uri), uri)
            self.outbox.send(metrics_op(run_id, metrics[0], step=int(metrics[0][EPOCH])))

    return MlflowEpochLogger()


@dataclass
class RayFitResult:
    """What a Ray training run produced."""

    name: str
    path: str  # the run folder on Ray storage
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, float]]
    mlflow_run_id: str | None
    mlflow_uri: str | None


def fit_ray(
    data_path: str | Path,
    config: RunConfig,
    *,
    workers: int = 1,
    gpus_per_worker: float | None = None,
    use_cpu: bool = False,
    name: str | None = None,
    storage: str | Path = "runs/ray",
    experiment: str | None = "kmervae",
    mlflow_dir: str | Path | None = None,
    address: str | None = None,
    out_dir: str | Path | None = None,
    data_mode: str = "auto",
    log: Callable[[str], None] | None = None,
    preset: str | None = None,
    callbacks: Sequence = (),
) -> RayFitResult:
    """Train with Ray Train; resumes when `name` already has checkpoints in `storage`.
    `callbacks`: Ray Train callbacks (`ray.train.UserCallback`), run on the controller beside
    the one that logs each epoch to MLflow.

    The console (`console.current()`) gets `log`'s lines (by default) and, through Ray, the
    per-epoch table; `kmervae train` sends everything else to `train.log` in the outputs."""
    run = plan_run(data_path, config)  # a foreign dataset, missing labels or markers: refused before Ray starts
    config, files = run.config, run.files
    name = name or time.strftime("train-%Y%m%d-%H%M%S")
    storage = normalize_storage(storage)  # a local folder or s3://... (Ray writes there directly)
    spec = checked_spec(data_path, config, name, storage, out_dir, experiment, tracking_uri(mlflow_dir), preset)

    from kmervae.distributed.ray_data import build_datasets, decoded_bytes

    log = log or (lambda line: print(line, file=console.current(), flush=True))
    init_ray(address)
    plan = plan_resources(cluster_capacity(), workers, gpus_per_worker, use_cpu)
    tracker = spec.open_tracker(resume=True)  # the same run again when resuming by name
    log(
        f"training {name}: {files.rows:,} contigs in {len(files.paths)} file(s), {plan.describe()}, "
        f"storage {redact(storage)}"
    )
    train_ds, val_ds = build_datasets(files, config.data, run.labels, config.train.seed, data_mode)
    worker_plan = WorkerPlan(
        config, run.labeled, plan.cpus_per_worker, decoded_bytes(files, config.data), markers=run.markers
    )
    trainer = build_trainer(worker_plan, plan, train_ds, val_ds, name, storage, tracker, callbacks)
    with closes_on_error(tracker):
        result = fit(trainer)
    best, last, history = export_results(result, config, spec.outputs, tracker, log)
    run_id, uri = (tracker.run_id, tracker.uri) if tracker else (None, None)
    return RayFitResult(name, str(result.path), best, last, history, run_id, uri)


def checked_spec(data_path, config: RunConfig, name: str, storage: str, out_dir, experiment, uri, preset) -> RunSpec:
    """A Ray run's outputs and MLflow run, checked before Ray starts: room in storage for its
    checkpoints, and a tracking store that answers."""
    spec = training_run(
        "ray",
        name,
        config,
        ray_outputs(storage, name, out_dir),
        experiment=experiment,
        uri=uri,
        data_path=data_path,
        preset=preset,
        **{STORAGE_TAG: str(storage)},
    )
    check_room(storage, spec.outputs.folder, checkpoint_bytes(config))
    if spec.experiment:
        check_reachable(spec.uri)  # a dead tracking server fails before Ray starts
    return spec


def ray_outputs(storage: str | Path, name: str, out_dir: str | Path | None = None) -> Path:
    """The local folder of a Ray training run's outputs: `out_dir`, else `outputs` in the run's
    folder of local storage (under ./runs/outputs for remote storage)."""
    return Path(out_dir).absolute() if out_dir else local_outputs(normalize_storage(storage), name, "outputs")


def check_room(storage: str, out: Path, size: int) -> None:
    """A read-only or full disk fails now, not at the first checkpoint: Ray keeps the best and
    latest checkpoints of `size` bytes (and writes the next) in `storage`, and best.pt and
    last.pt are copied to `out` at the end."""
    if is_uri(storage) or not out.is_relative_to(storage):
        check_writable(storage, 0 if is_uri(storage) else CHECKPOINT_COPIES * size)
        check_writable(out, 2 * size)
    else:
        check_writable(storage, (CHECKPOINT_COPIES + 2) * size)


def build_trainer(
    worker_plan: WorkerPlan,
    plan: ResourcePlan,
    train_ds,
    val_ds,
    name: str,
    storage: str,
    tracker,
    callbacks=(),
):
    """The Ray Train TorchTrainer of one training run (also one Tune trial of a sweep): every
    worker gets `worker_plan`; Ray keeps the latest checkpoint and the best by its objective."""
    import ray.train
    from ray.train.torch import TorchTrainer

    objective = worker_plan.objective
    return TorchTrainer(
        functools.partial(train_loop_per_worker, worker_plan),  # the plan as a value, not a config dict
        scaling_config=ray.train.ScalingConfig(
            num_workers=plan.workers,
            use_gpu=plan.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": plan.cpus_per_worker,
                **({"GPU": plan.gpus_per_worker} if plan.gpus_per_worker else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=objective.metric, checkpoint_score_order=objective.mode
            ),
            failure_config=ray.train.FailureConfig(max_failures=MAX_FAILURES),
            callbacks=[
                *callbacks,
                *([mlflow_epoch_logger(tracker.uri, tracker.run_id)] if tracker and tracker.run_id else []),
            ],
        ),
        datasets={"train": train_ds, "val": val_ds},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


def export_results(
    result, config: RunConfig, outputs: RunOutputs, tracker, log: Callable[[str], None]
) -> tuple[Path, Path, list[dict[str, float]]]:
    """Copy the best (by the outputs' objective) and last checkpoints of a Ray Train result
    into `outputs`, write its other outputs, and close its MLflow run with them."""
    objective = outputs.objective
    outputs.folder.mkdir(parents=True, exist_ok=True)
    best_ckpt = result.get_best_checkpoint(objective.metric, objective.mode) or result.checkpoint
    best = _copy_checkpoint(best_ckpt, outputs.best_checkpoint)
    last = _copy_checkpoint(result.checkpoint, outputs.last_checkpoint)
    history = load_checkpoint(last).history
    artifacts = outputs.write(config, history, log)
    if tracker is not None:
        record_outputs(tracker, outputs, artifacts, history, log)
    return best, last, history


TRAIN_LOG = "train.log"
"""What Ray and the workers printed during `kmervae train` on Ray, in the run's outputs."""


def init_ray(address: str | None) -> None:
    """Connect to `address` (or $RAY_ADDRESS), else start a local cluster in this process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # A local cluster enables token authentication (good) and says so on every start (noise).
    quiet = logger_level("ray._private.authentication.authentication_token_setup", logging.ERROR)
    try:
        with quiet:
            if address:
                ray.init(address=address, logging_level="WARNING")
            else:
                # "local": a new cluster in this process, even where `ray start` left another one
                # (plain ray.init() would join the cluster named in /tmp/ray/ray_current_cluster).
                ray.init(address="local", logging_level="WARNING", include_dashboard=True, dashboard_host="127.0.0.1")
    except ConnectionError as err:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {err}; start it or fix --address") from None


def _copy_checkpoint(checkpoint, target: Path) -> Path:
    with checkpoint.as_directory() as folder:
        target.write_bytes((Path(folder) / CHECKPOINT_FILE).read_bytes())
    return target
