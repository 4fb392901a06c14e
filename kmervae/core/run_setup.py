"""A training run, set up once for every engine: the local trainer, each Ray Train worker, a
sweep's trials and the benchmarks build their runs here.

Two halves, because a run is decided in one process and trained in others:
- `plan_run` (on the driver, before anything starts): the config for this dataset
  (`RunConfig.for_data`), its labels checked against what the config needs, and the marker
  genes validation counts bins with. Everything it refuses, it refuses before any output.
- `start_run` (in each process that trains): the seeded model, restored from a checkpoint when
  resuming and prepared for the device (DDP on Ray), its optimizer and scheduler, the epoch
  printer, and the checkpoint hook (`TrainingRun.save`).

`fit_local` is the local engine: one plan, one run, the shared epoch loop, `RunOutputs`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kmervae.base.feature_table import DatasetFiles, dataset_files, label_vocabulary
from kmervae.base.metric_keys import LOWEST_VAL_LOSS, Objective
from kmervae.base.storage import check_writable
from kmervae.binning.markers import KeyedMarkers, run_markers
from kmervae.core.checkpoint import CHECKPOINT_COPIES, Checkpoint, checkpoint_bytes, save_checkpoint
from kmervae.core.config import RunConfig
from kmervae.core.data import EpochData, InMemoryData, load_splits, use_resident
from kmervae.core.engine import (
    Collective,
    EpochHook,
    Scheduler,
    check_labels_for,
    compile_model,
    make_optimizer,
    make_scheduler,
    resolve_device,
    run_epochs,
)
from kmervae.core.epoch_table import EpochPrinter
from kmervae.core.model import BranchedVAE
from kmervae.core.run_outputs import RunOutputs

History = list[dict[str, float]]


@dataclass(frozen=True)
class RunPlan:
    """What the driver decides about a run before any process trains."""

    config: RunConfig  # for this dataset: `RunConfig.for_data` of its samples
    files: DatasetFiles
    labels: list[str]  # the dataset's distinct labels; [] when unlabelled
    markers: KeyedMarkers | None  # val/est_nc_bins' marker genes, when the config asks for them

    @property
    def labeled(self) -> bool:
        return bool(self.labels)


def plan_run(data_path: str | os.PathLike[str], config: RunConfig, labels: list[str] | None = None) -> RunPlan:
    """Check `config` against the dataset at `data_path` and fit it to the data; `labels`, when
    the caller has read them already. A foreign or corrupt dataset, a supervised setting without
    labels, an abundance branch without depths and est_nc_bins without markers are refused here."""
    files = dataset_files(data_path)
    config = config.for_data(files.format.samples)  # the one place a config meets its data
    labels = label_vocabulary(files) if labels is None else labels
    check_labels_for(config, bool(labels))
    return RunPlan(config, files, labels, run_markers(data_path, config))


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators seeded with `seed` inside the block (the model's initial weights
    and every draw of training: the reparameterisation, dropout) and restored after it, so a run
    is reproducible and leaves its caller's random state as it found it."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@dataclass
class TrainingRun:
    """One process's side of a run: what trains, how, and where a resumed run picks up."""

    config: RunConfig
    model: nn.Module  # on the device; wrapped as the engine prepared it (DDP on Ray)
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    printer: EpochPrinter  # the per-epoch table, marking the epochs best.pt comes from
    start_epoch: int = 0
    history: History = field(default_factory=list)

    def save(self, path: str | os.PathLike[str], epoch: int, metrics: dict[str, float], history: History) -> Path:
        """The checkpoint hook: model, config, optimizer and scheduler at this epoch, atomically."""
        return save_checkpoint(path, self.model, self.config, epoch, metrics, self.optimizer, self.scheduler, history)

    def train(
        self,
        data: EpochData,
        *,
        device: torch.device,
        on_epoch: EpochHook,
        runnable: nn.Module | None = None,
        collective: Collective | None = None,
        markers: KeyedMarkers | None = None,
    ) -> History:
        """The shared epoch loop from `start_epoch`; `runnable` is what steps, when it is not
        `model` itself (a torch.compile wrapper)."""
        return run_epochs(
            runnable or self.model, data, self.config, self.optimizer, self.scheduler,
            device=device, on_epoch=on_epoch, start_epoch=self.start_epoch, history=self.history,
            collective=collective, markers=markers,
        )  # fmt: skip


@contextlib.contextmanager
def start_run(
    config: RunConfig,
    device: torch.device,
    objective: Objective = LOWEST_VAL_LOSS,
    *,
    resumed: Checkpoint | None = None,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
) -> Iterator[TrainingRun]:
    """Build a run's model, optimizer, scheduler and printer inside `seeded(train.seed)`, which
    lasts as long as the block does (train inside it). `resumed` restores them and the history;
    `prepare` moves the model to the device (by default `.to(device)`; Ray's `prepare_model`)."""
    tc = config.train
    with seeded(tc.seed, device):
        model = BranchedVAE(config.model)
        if resumed is not None:
            model.load_state_dict(resumed.model_state)
        model = prepare(model) if prepare is not None else model.to(device)
        optimizer = make_optimizer(model, tc, device)
        scheduler = make_scheduler(optimizer, tc)
        printer = EpochPrinter(tc.epochs, objective)
        run = TrainingRun(config, model, optimizer, scheduler, printer)
        if resumed is not None:
            optimizer.load_state_dict(resumed.optimizer_state)
            scheduler.load_state_dict(resumed.scheduler_state)
            printer.prime(resumed.history)
            run.start_epoch, run.history = resumed.epoch + 1, list(resumed.history)
        yield run


@dataclass
class FitResult:
    """Where a local training run wrote its outputs, and its metric history."""

    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    history: History = field(default_factory=list)
    artifacts: list[Path] = field(default_factory=list)  # model.txt, model.png, metrics.jsonl


def fit_local(
    data_path: str | Path,
    config: RunConfig,
    out_dir: str | Path,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    on_epoch: EpochHook | None = None,
    objective: Objective = LOWEST_VAL_LOSS,
) -> FitResult:
    """Train in this process from a feature dataset; the run's outputs (`RunOutputs`: best.pt
    by `objective`, last.pt, metrics, tables) go to `out_dir`. `on_epoch` is called after each
    epoch is saved (MLflow logging lives in the layer above: `kmervae.tracking.run`)."""
    device = resolve_device(config.train.device)
    plan = plan_run(data_path, config)
    config, tc = plan.config, plan.config.train
    train, val = load_splits(data_path, config.data)
    outputs = RunOutputs(Path(out_dir), objective)
    check_writable(outputs.folder, CHECKPOINT_COPIES * checkpoint_bytes(config))
    outputs.folder.mkdir(parents=True, exist_ok=True)
    result = FitResult(outputs.folder, outputs.best_checkpoint, outputs.last_checkpoint)
    with start_run(config, device, objective) as run:
        data, where = local_data(train, val, tc.batch_size, tc.resident, tc.seed, device)
        lr = f"lr {tc.effective_lr:.2e}"
        log(f"training on {len(train):,} contigs, validating on {len(val):,}, device {device}, data {where}, {lr}")
        best = math.nan

        def save_and_log(epoch: int, metrics: dict[str, float], history: History) -> None:
            nonlocal best
            run.save(result.last_checkpoint, epoch, metrics, history)
            if objective.improves(metrics.get(objective.metric, math.nan), best):
                best = metrics[objective.metric]
                run.save(result.best_checkpoint, epoch, metrics, history)
            if on_epoch is not None:
                on_epoch(epoch, metrics, history)
            for line in run.printer.lines(epoch, metrics):
                log(line)

        runnable = compile_model(run.model, tc, log)
        result.history = run.train(data, device=device, on_epoch=save_and_log, runnable=runnable, markers=plan.markers)
    result.artifacts = outputs.write(config, result.history, log)
    return result


def local_data(train, val, batch_size: int, resident: str, seed: int, device: torch.device) -> tuple[EpochData, str]:
    """The local engine's batches, and where they live (for the log): copied to the GPU once and
    shuffled there when they fit (no host work or transfer per step), else streamed from host memory."""
    if use_resident(resident, device, train.batch.nbytes + val.batch.nbytes):
        megabytes = (train.batch.nbytes + val.batch.nbytes) / 2**20
        generator = torch.Generator(device=device).manual_seed(seed)
        return InMemoryData(train.to(device), val.to(device), batch_size, generator), (
            f"resident on {device} ({megabytes:,.0f} MiB)"
        )
    return InMemoryData(train, val, batch_size, torch.Generator().manual_seed(seed)), "streamed from host memory"
