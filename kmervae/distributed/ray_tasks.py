"""`kmervae featurize --engine ray` and `kmervae abundance --engine ray`: the two stages that
read the inputs, as Ray tasks of one CPU each.

- featurize: this process reads the FASTA files and cuts them into batches, as the local engine
  does (the scan is about 1 GB/s; counting is about 23 Mbp/s a core, so one reader feeds dozens of
  tasks); each batch is a task that counts it and returns its parquet file as bytes, which this
  process writes into the staging folder. Nodes need no shared file system, and the parts are
  the local engine's, byte for byte (`feature_writer.part_bytes`).
- abundance: one task per BAM file (`bam_depth.depth_column`), read where the task runs: the
  files must be at the same path on every node (a shared file system).

Both run as many tasks at once as the cluster has CPUs for them (or `--workers`), hand the
results on in the order submitted, and refuse before any input is read when the cluster has
no CPU for a task.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

from kmervae.abundance.bam_depth import ColumnSource, DepthSettings, SampleDepth, depth_column
from kmervae.base.errors import ConfigError, KmervaeError
from kmervae.base.feature_contract import part_name
from kmervae.distributed.ray_engine import cluster_capacity, init_ray
from kmervae.features.contigs import Batch
from kmervae.features.feature_writer import PartLayout, PartResult, part_bytes, widened_bytes
from kmervae.features.featurize import PartsFactory

TASK_CPUS = 1.0
"""CPUs of each task: the counting kernel and the BAM scan run on one thread."""


def task_slots(address: str | None, workers: int | None, what: str) -> int:
    """Connect to the cluster and return how many tasks run at once: `workers`, else one per
    CPU of the cluster; refuse a cluster with no CPU for one task, or fewer than `workers`."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    init_ray(address)
    cpus = float(cluster_capacity().get("CPU", 0))
    slots = int(cpus // TASK_CPUS)
    if slots < 1:
        raise ConfigError(
            f"cannot run the {what} tasks: the cluster has {cpus:g} CPU(s) and each task needs {TASK_CPUS:g}; "
            "add a node with CPUs or use --engine local"
        )
    if workers is not None and workers > slots:
        raise ConfigError(
            f"cannot run {workers} {what} tasks at once: the cluster has {slots} CPU(s) for them; "
            f"ask for at most {slots} with --workers or add nodes"
        )
    return workers or slots


def _result(ref):
    """A task's result; a task that refused its input raises that one-line error here, not
    Ray's wrapper with the task's traceback."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, KmervaeError):
            raise err.cause from None
        raise


class _InFlight:
    """Ray tasks that run at most `slots` at a time, their results handed back in the order
    submitted. A result that arrives before an older one waits here; at most `2 * slots`
    tasks are running or waiting at once, which bounds memory when one task is slow."""

    def __init__(self, slots: int):
        self.slots = slots
        self.running: dict = {}  # object ref -> its place in submission order
        self.done: dict[int, object] = {}  # place -> result, until the older ones are handed back
        self.submitted = self.handed = 0

    def submit(self, start) -> list:
        """Start one task (`start()` returns its object ref) once a slot is free; return the
        results that are now next in order."""
        out = []
        while len(self.running) >= self.slots or len(self.running) + len(self.done) >= 2 * self.slots:
            out.extend(self._wait_one())
        self.running[start()] = self.submitted
        self.submitted += 1
        return out

    def drain(self) -> Iterator:
        while self.running:
            yield from self._wait_one()

    def _wait_one(self) -> list:
        import ray

        ready, _ = ray.wait(list(self.running), num_returns=1)
        for ref in ready:
            self.done[self.running.pop(ref)] = _result(ref)
        out = []
        while self.handed in self.done:
            out.append(self.done.pop(self.handed))
            self.handed += 1
        return out

    def cancel(self) -> None:
        import ray

        for ref in self.running:
            ray.cancel(ref, force=True)
        self.running.clear()
        self.done.clear()


class RayParts:
    """`featurize.Parts` on Ray: a task per batch, its file written here as it comes back."""

    def __init__(self, slots: int, staging: Path, layout: PartLayout, strict: bool, samples: tuple[str, ...]):
        import ray

        self.workers = slots
        self.task = ray.remote(num_cpus=TASK_CPUS, max_retries=2)(part_bytes)
        self.staging, self.layout, self.strict, self.samples = staging, layout, strict, samples
        self.flight = _InFlight(slots)
        self.results: list[PartResult] = []

    def submit(self, batches: list[Batch]) -> None:
        for batch in batches:
            start = partial(self.task.remote, batch, self.layout, self.strict, self.samples)
            for done in self.flight.submit(start):
                self._keep(*done)

    def _keep(self, result: PartResult, data: bytes) -> None:
        if data:
            (self.staging / part_name(result.index)).write_bytes(data)
        self.results.append(result)

    def finish(self) -> list[PartResult]:
        for done in self.flight.drain():
            self._keep(*done)
        return self.results

    def widen(self, paths: list[Path], dtypes: dict, layout: PartLayout) -> None:
        """Each file's bytes widened by a task (`feature_writer.widened_bytes`), written back here."""
        import ray

        task = ray.remote(num_cpus=TASK_CPUS, max_retries=2)(widened_bytes)
        flight = _InFlight(self.workers)
        queue = iter(paths)
        for path in paths:
            for data in flight.submit(partial(task.remote, path.read_bytes(), dtypes, layout)):
                next(queue).write_bytes(data)
        for data in flight.drain():
            next(queue).write_bytes(data)

    def cancel(self) -> None:
        self.flight.cancel()

    def close(self) -> None:
        pass


def ray_parts(address: str | None, workers: int | None) -> PartsFactory:
    """The featurize engine on the cluster at `address` (or $RAY_ADDRESS, else a local one),
    `workers` tasks at once (default: one per CPU); it connects when featurize has checked its
    inputs and output."""

    def parts(staging: Path, layout: PartLayout, strict: bool, samples: tuple[str, ...]) -> RayParts:
        return RayParts(task_slots(address, workers, "featurize"), staging, layout, strict, samples)

    return parts


def ray_columns(address: str | None, workers: int | None, log=lambda line: None) -> ColumnSource:
    """The abundance engine on the cluster at `address`: one task per BAM file, `workers` at
    once (default: one per CPU); it connects when the files and the output have been checked."""

    def columns(paths: Sequence[Path], settings: DepthSettings) -> Iterator[SampleDepth]:
        import ray

        slots = task_slots(address, workers, "abundance")
        log(f"reading   {len(paths)} BAM file(s) as Ray tasks, {min(slots, len(paths))} at a time")
        task = ray.remote(num_cpus=TASK_CPUS, max_retries=2)(depth_column)
        flight = _InFlight(slots)
        try:
            for i, path in enumerate(paths):
                yield from flight.submit(partial(task.remote, str(path.absolute()), settings, i == 0))
            yield from flight.drain()
        finally:
            flight.cancel()

    return columns
