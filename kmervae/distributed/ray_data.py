"""Ray Data over a feature dataset: the deterministic split, decoding, and per-worker batches.

The driver validates the files (`dataset_files`) before any worker starts, then builds
two lazy datasets, training and validation, that read only the needed columns and keep
the rows of their split by the same salted contig_id hash as the local engine. Counts are
decoded to compact integer arrays in the read tasks, travel to the workers as such, and
are widened and transformed on the device inside the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from kmervae.base.errors import KmervaeError
from kmervae.base.feature_contract import ABUNDANCE, KMER_COLUMNS, KMER_SIZES, MODEL_INPUTS, N_BINS, DatasetFormat
from kmervae.base.feature_table import DatasetFiles, decode_inputs, read_keys
from kmervae.core.config import DataConfig
from kmervae.core.data import (
    CountBatch,
    TensorData,
    ValidationBatch,
    held_out_labels,
    label_codes,
    link_keys,
    split_hash,
    split_mask,
    subsample_threshold,
    torch_counts,
)
from kmervae.core.metrics import must_link_pairs


def dataset_threshold(files: DatasetFiles, cfg: DataConfig) -> float | None:
    """`subsample_threshold` of the whole dataset, read once on the driver (contig_id only)."""
    if cfg.max_samples is None or cfg.max_samples >= files.rows:
        return None
    ids = [cid for p in files.paths for cid in pq.read_table(p, columns=["contig_id"]).column("contig_id").to_pylist()]
    return subsample_threshold(ids, cfg)


def validation_must_links(files: DatasetFiles, cfg: DataConfig, labels: list[str]) -> int:
    """How many must-link pairs (`metrics.link_agreement`) the validation split holds, read on
    the driver from the ids and labels alone: a sweep ranking on val/link_agreement needs some."""
    ids, row_labels = read_keys(files)
    row_labels = row_labels if row_labels is not None else [None] * len(ids)
    threshold = subsample_threshold(ids, cfg)
    keep = split_mask(ids, cfg, True, threshold, labels=row_labels, held_out=held_out_labels(labels, cfg))
    return len(must_link_pairs(link_keys([cid for cid, kept in zip(ids, keep, strict=True) if kept])))


def decode_split(
    table: pa.Table,
    fmt: DatasetFormat,
    cfg: DataConfig,
    validation: bool,
    labels: list[str],
    threshold: float | None,
    held_out: frozenset[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: keep one split's rows (the local engine's rule,
    `split_mask`) and decode the model's input columns; label codes when `labels` is given,
    and for validation the must-link keys (`link_keys`)."""
    ids = table.column("contig_id").to_pylist()
    row_labels = table.column("label").to_pylist() if "label" in table.column_names else [None] * len(ids)
    hashes = split_hash(ids, cfg.split_salt)  # for the split and the validation buckets: computed once
    keep = split_mask(ids, cfg, validation, threshold, labels=row_labels, held_out=held_out, hashes=hashes)
    table = table.take(pa.array(np.flatnonzero(keep), pa.int64()))
    out = decode_inputs(table, fmt)
    for name in KMER_COLUMNS.values():
        out[name] = torch_counts(out[name])
    # A stable integer per contig that spreads the unsplit validation set over ranks.
    out["bucket"] = (hashes[keep] * 2**31).astype(np.int64)
    if labels:
        out["label"] = label_codes(table.column("label").to_pylist(), labels)
    if validation:  # must-links between fragments of one record score val/link_agreement
        out["link"] = link_keys([cid for cid, kept in zip(ids, keep, strict=True) if kept])
    return out


DATA_MODES = ("auto", "materialize", "stream")
MATERIALIZE_SHARE = 0.3
"""`auto` materializes the decoded data when it takes at most this share of the object store."""


def build_datasets(files: DatasetFiles, cfg: DataConfig, labels: list[str], seed: int, mode: str = "auto"):
    """(train, validation) Ray datasets of decoded counts, with label codes when `labels` is not
    empty (validation scores embeddings with them; loss.supcon trains on them).

    `materialize` decodes once into the object store (shared memory) and every epoch
    streams from there; `stream` re-reads the parquet files every epoch (for data larger
    than the object store); `auto` materializes when it fits comfortably. Either way each
    worker streams its shard: no worker holds the dataset. The training block order is
    reshuffled at every epoch, and each worker adds a local shuffle buffer seeded by epoch
    and rank.
    """
    import ray
    import ray.data
    from ray.data import DataContext, RandomSeedConfig

    context = DataContext.get_current()  # travels with the datasets to the workers
    context.enable_progress_bars = False  # per-epoch lines from rank 0 instead of a bar per read
    context.print_on_execution_start = False
    threshold = dataset_threshold(files, cfg)
    columns = ["contig_id", *files.format.input_columns] + (["label"] if labels else [])
    base = ray.data.read_parquet([str(p) for p in files.paths]).select_columns(
        columns
    )  # projection pushed into the read
    common = dict(fmt=files.format, cfg=cfg, threshold=threshold, held_out=held_out_labels(labels, cfg))
    common["labels"] = labels
    train = base.map_batches(decode_split, fn_kwargs=dict(common, validation=False), batch_format="pyarrow")
    val = base.map_batches(decode_split, fn_kwargs=dict(common, validation=True), batch_format="pyarrow")
    if mode == "materialize" or (mode == "auto" and decoded_bytes(files) <= MATERIALIZE_SHARE * object_store_bytes()):
        train, val = train.materialize(), val.materialize()
    train = train.randomize_block_order(seed=RandomSeedConfig(seed, reseed_after_execution=True))
    return train, val


def decoded_bytes(files: DatasetFiles, cfg: DataConfig | None = None) -> int:
    """Size of the decoded counts in memory (what materializing, or holding on a GPU, costs);
    with `cfg`, of the `data.max_samples` subsample only."""
    row = (
        8
        + 4
        + 8
        + 4 * len(files.format.samples)
        + sum(
            N_BINS[k] * np.dtype(torch_counts(np.zeros(1, files.format.count_dtypes[k])).dtype).itemsize
            for k in KMER_SIZES
        )
    )
    rows = files.rows if cfg is None or cfg.max_samples is None else min(files.rows, cfg.max_samples)
    return rows * row


def object_store_bytes() -> float:
    """Object store capacity of the connected Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("object_store_memory", 0))


def gather_shard(shard, device: torch.device, bucket: tuple[int, int] | None = None) -> TensorData:
    """Read a worker's whole shard once onto `device` (with its label codes and must-link keys, if any)."""
    parts = list(shard_batches(shard, 8192, device, bucket=bucket))
    if not parts:
        raise KmervaeError("this worker's shard is empty; featurize more contigs or use fewer workers")
    batch = CountBatch.cat([part.batch for part in parts])
    codes = [part.codes for part in parts if part.codes is not None]
    links = [part.links for part in parts if part.links is not None]
    return TensorData(batch, torch.cat(codes) if codes else None, links=torch.cat(links) if links else None).to(device)


def shard_batches(
    shard,
    batch_size: int,
    device: torch.device,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    bucket: tuple[int, int] | None = None,
) -> Iterator[ValidationBatch]:
    """A worker's batches as model input on `device`, each with its label codes and must-link
    keys (on the host; None when the dataset carries none).

    `shuffle_seed` turns on a local shuffle buffer; `drop_last` keeps every training step
    at full size (equal shards then give every DDP rank the same number of steps);
    `bucket=(rank, world)` keeps this rank's share of an unsplit dataset.
    """
    for batch in shard.iter_torch_batches(
        batch_size=batch_size,
        device=device,
        drop_last=drop_last,
        local_shuffle_buffer_size=4 * batch_size if shuffle_seed is not None else None,
        local_shuffle_seed=shuffle_seed,
        prefetch_batches=2,
    ):
        if bucket is not None and bucket[1] > 1:
            keep = batch["bucket"] % bucket[1] == bucket[0]
            batch = {key: value[keep] for key, value in batch.items()}
            if not len(batch["length"]):
                continue
        codes = batch["label"].cpu() if "label" in batch else None
        links = batch["link"].cpu() if "link" in batch else None
        inputs = CountBatch(*(batch[name] for name in MODEL_INPUTS), batch.get(ABUNDANCE))
        yield ValidationBatch(inputs, codes, links)


@dataclass
class StreamedShards:
    """A Ray Train worker's data read through Ray Data every epoch (the `EpochData` of streaming).

    Training streams this worker's split of the training set, reshuffled by epoch and rank;
    validation streams the unsplit validation set and keeps this rank's hash buckets, so no
    contig is dropped to equalise shards and the all-reduced metrics are exact.
    """

    train_shard: object  # ray.data.DataIterator
    val_shard: object
    batch_size: int
    device: torch.device
    rank: int
    world: int
    seed: int
    labeled: bool

    def train_batches(self, epoch: int) -> Iterator[tuple[CountBatch, torch.Tensor | None]]:
        seed = self.seed * 1_000_003 + epoch * 1009 + self.rank  # a different, reproducible order every epoch
        batches = shard_batches(self.train_shard, self.batch_size, self.device, shuffle_seed=seed, drop_last=True)
        return ((part.batch, part.codes) for part in batches)

    def all_train_batches(self) -> Iterator[CountBatch]:
        # A whole pass (every rank at once): stopping a streaming split early can stall the others.
        return (part.batch for part in shard_batches(self.train_shard, self.batch_size, self.device))

    def val_batches(self) -> Iterator[ValidationBatch]:
        return shard_batches(self.val_shard, self.batch_size, self.device, bucket=(self.rank, self.world))
