"""`kmervae embed --engine ray`: batch inference with Ray Data over a pool of model actors.

Ray Data reads the feature parquet, `map_batches` sends each batch to one of a fixed pool of
actors (each loads the model once: a checkpoint, TorchScript, ONNX or MLflow model, as the
local engine does) and the driver writes the embedded batches through the same writer as
`kmervae embed --engine local`: the same schema, the same rows in the same order. Ray Data's
`preserve_order` alone does not give that order: in Ray 2.60 a dataset of several files had its
short last batch handed back among the first (100,000 contigs in 25 files: rows 99,328-99,999
after row 7,167), so the driver puts rows back in the dataset's order by their contig ids, which
the feature contract makes unique, holding only the rows that arrive early. Everything that can
refuse the job (the data, the output path, the model, a cluster that cannot host one actor) does
so before a batch is read.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from kmervae.apply.embed import (
    EmbedSummary,
    check_embed_job,
    decode_batch,
    embed_columns,
    embedded_table,
    load_embedder,
    write_embedding_tables,
)
from kmervae.base.errors import ConfigError
from kmervae.base.feature_table import has_labels, read_keys
from kmervae.distributed.ray_engine import DATA_CPUS, cluster_capacity, init_ray


class EmbedActor:
    """One model, loaded once, embedding the batches Ray Data hands it (pyarrow tables)."""

    def __init__(self, model: str, device: str, fmt, labeled: bool, threads: int):
        import torch

        torch.set_num_threads(threads)  # the CPUs this actor was given
        self.embedder, self.fmt, self.labeled = load_embedder(model, device), fmt, labeled

    def __call__(self, batch):
        return embedded_table(batch, self.embedder(decode_batch(batch, self.fmt)), self.labeled)


def in_dataset_order(tables: Iterable[pa.Table], ids: np.ndarray) -> Iterator[pa.Table]:
    """The rows of `tables` (every contig of the dataset once, in any order) in the order of
    `ids`: runs of consecutive rows are passed on as soon as every row before them has been."""
    position = {cid: i for i, cid in enumerate(ids)}
    pending: list[tuple[int, int, pa.Table]] = []  # (first row, arrival, run of consecutive rows)
    arrival = next_row = 0
    for table in tables:
        rows = np.fromiter((position[cid] for cid in table.column("contig_id").to_pylist()), np.int64, len(table))
        order = np.argsort(rows, kind="stable")
        table, rows = table.take(order), rows[order]
        starts = [0, *(np.flatnonzero(np.diff(rows) != 1) + 1).tolist()]
        for start, end in zip(starts, [*starts[1:], len(rows)], strict=True):
            heapq.heappush(pending, (int(rows[start]), arrival, table.slice(start, end - start)))
            arrival += 1
        while pending and pending[0][0] == next_row:
            run = heapq.heappop(pending)[2]
            next_row += run.num_rows
            yield run
    if next_row != len(ids):
        raise RuntimeError(f"Ray Data returned rows up to {next_row:,} of {len(ids):,} in order; the rest are missing")


def actor_resources(capacity: dict[str, float], actors: int, gpus_per_actor: float) -> float:
    """CPUs per actor when `actors` of them fit beside Ray Data's readers on a cluster of
    `capacity` (`cluster_capacity`), or why not."""
    cpus, gpus = float(capacity.get("CPU", 0)), float(capacity.get("GPU", 0))
    if actors * gpus_per_actor > gpus:
        raise ConfigError(
            f"cannot host {actors} embedding actor(s) x {gpus_per_actor:g} GPU: the cluster has {gpus:g} GPU(s); "
            "ask for fewer actors or use --device cpu"
        )
    per_actor = min(1.0, (cpus - DATA_CPUS) / actors)
    if per_actor < 0.25:
        raise ConfigError(
            f"cannot host {actors} embedding actor(s): the cluster has {cpus:g} CPU(s), {DATA_CPUS:g} of which "
            f"Ray Data's readers need, and each actor needs at least 0.25; ask for at most "
            f"{max(int((cpus - DATA_CPUS) / 0.25), 0)} actor(s) or add nodes"
        )
    return round(per_actor, 3)


def embed_on_ray(
    model: str,
    features: str | Path,
    out: str | Path,
    *,
    batch_size: int = 1024,
    actors: int = 2,
    device: str = "cpu",
    address: str | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> EmbedSummary:
    """Embed every contig of a feature dataset on a Ray cluster (`address`, $RAY_ADDRESS or a
    local one): `actors` model actors (one GPU each with --device cuda)."""
    import ray
    from ray.data import DataContext

    if actors < 1:
        raise ConfigError(f"--actors must be >= 1, got {actors}")
    files = check_embed_job(features, out, batch_size, overwrite)
    load_embedder(model, device)  # a model that cannot be opened is refused before Ray starts
    labeled = has_labels(files)
    init_ray(address)
    gpus_per_actor = 1.0 if device == "cuda" else 0.0
    cpus_per_actor = actor_resources(cluster_capacity(), actors, gpus_per_actor)
    context = DataContext.get_current()
    kept = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # the local engine's row order
    try:
        data = ray.data.read_parquet([str(p) for p in files.paths]).select_columns(embed_columns(files, labeled))
        embedded = data.map_batches(
            EmbedActor,
            fn_constructor_args=(model, device, files.format, labeled, max(1, int(cpus_per_actor))),
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
        )
        tables = embedded.iter_batches(batch_size=None, batch_format="pyarrow")
        ids, _ = read_keys(files)
        return write_embedding_tables(in_dataset_order(tables, ids), out, model, features, files.rows, progress)
    finally:
        context.execution_options.preserve_order = kept
