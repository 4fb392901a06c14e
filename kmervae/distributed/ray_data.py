"""Ray Data over a feature dataset: the deterministic split, decoding, and per-worker batches.

The driver validates the files (`dataset_files`) before any worker starts, then builds
two lazy datasets, training and validation, that read only the needed columns and keep
the rows of their split by the same salted contig_id hash as the local engine. Counts are
decoded to compact integer arrays in the read tasks, travel to the workers as such, and
are widened and transformed on the device inside the model.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from kmervae.core.config import DataConfig
from kmervae.core.data import SUBSAMPLE_SALT, CountBatch, split_hash, torch_counts
from kmervae.core.feature_contract import KMER_COLUMNS, KMER_SIZES, N_BINS, DatasetFormat, decode_counts
from kmervae.core.errors import KmervaeError
from kmervae.core.feature_table import DatasetFiles

READ_COLUMNS = ["contig_id", "length", "gc", *(KMER_COLUMNS[k] for k in KMER_SIZES)]


def label_vocabulary(files: DatasetFiles) -> list[str]:
    """Sorted distinct labels of a dataset (reads only the label column); [] when unlabeled."""
    labels: set[str] = set()
    for path in files.paths:
        if "label" not in pq.read_schema(path).names:
            continue
        column = pq.read_table(path, columns=["label"]).column("label")
        labels.update(v for v in pc.unique(column).to_pylist() if v is not None)
    return sorted(labels)


def subsample_threshold(files: DatasetFiles, cfg: DataConfig) -> float | None:
    """Largest subsample hash kept by `data.max_samples` (None: keep all).

    The local engine keeps the `max_samples` contigs with the lowest subsample hash; a
    streamed read cannot sort globally, so the driver finds that hash once (reading only
    contig_id) and the read tasks keep rows at or under it: the same contigs either way.
    """
    if cfg.max_samples is None or cfg.max_samples >= files.rows:
        return None
    ids = [cid for p in files.paths for cid in pq.read_table(p, columns=["contig_id"]).column("contig_id").to_pylist()]
    hashes = np.sort(split_hash(ids, cfg.split_salt + SUBSAMPLE_SALT))
    return float(hashes[cfg.max_samples - 1])


def decode_split(
    table: pa.Table, fmt: DatasetFormat, cfg: DataConfig, validation: bool, labels: list[str], threshold: float | None
) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: keep one split's rows and decode the count columns."""
    ids = table.column("contig_id").to_pylist()
    hashes = split_hash(ids, cfg.split_salt)
    keep = (hashes < cfg.val_fraction) == validation
    if threshold is not None:
        keep &= split_hash(ids, cfg.split_salt + SUBSAMPLE_SALT) <= threshold
    table = table.take(pa.array(np.flatnonzero(keep), pa.int64()))
    out = {
        "length": table.column("length").to_numpy().astype(np.int64, copy=False),
        "gc": table.column("gc").to_numpy().astype(np.float32, copy=False),
        # A stable integer per contig that spreads the unsplit validation set over ranks.
        "bucket": (hashes[keep] * 2**31).astype(np.int64),
    }
    for k in KMER_SIZES:
        name = KMER_COLUMNS[k]
        out[name] = torch_counts(decode_counts(table.column(name), N_BINS[k], fmt.count_dtypes[k]))
    if labels:
        codes = {name: i for i, name in enumerate(labels)}
        out["label"] = np.array([-1 if v is None else codes.get(v, -1) for v in table.column("label").to_pylist()], np.int32)
    return out


DATA_MODES = ("auto", "materialize", "stream")
MATERIALIZE_SHARE = 0.3
"""`auto` materializes the decoded data when it takes at most this share of the object store."""


def build_datasets(files: DatasetFiles, cfg: DataConfig, labels: list[str], seed: int, mode: str = "auto"):
    """(train, validation) Ray datasets of decoded counts; validation carries label codes.

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
    threshold = subsample_threshold(files, cfg)
    columns = READ_COLUMNS + (["label"] if labels else [])
    base = ray.data.read_parquet([str(p) for p in files.paths]).select_columns(columns)  # projection pushed into the read
    common = dict(fmt=files.format, cfg=cfg, threshold=threshold)
    train = base.map_batches(decode_split, fn_kwargs=dict(common, validation=False, labels=[]), batch_format="pyarrow")
    val = base.map_batches(decode_split, fn_kwargs=dict(common, validation=True, labels=labels), batch_format="pyarrow")
    if mode == "materialize" or (mode == "auto" and decoded_bytes(files) <= MATERIALIZE_SHARE * object_store_bytes()):
        train, val = train.materialize(), val.materialize()
    train = train.randomize_block_order(seed=RandomSeedConfig(seed, reseed_after_execution=True))
    return train, val


def decoded_bytes(files: DatasetFiles, cfg: DataConfig | None = None) -> int:
    """Size of the decoded counts in memory (what materializing, or holding on a GPU, costs);
    with `cfg`, of the `data.max_samples` subsample only."""
    row = 8 + 4 + 8 + sum(N_BINS[k] * np.dtype(torch_counts(np.zeros(1, files.format.count_dtypes[k])).dtype).itemsize for k in KMER_SIZES)
    rows = files.rows if cfg is None or cfg.max_samples is None else min(files.rows, cfg.max_samples)
    return rows * row


def object_store_bytes() -> float:
    """Object store capacity of the connected Ray cluster."""
    import ray

    return float(ray.cluster_resources().get("object_store_memory", 0))


def gather_shard(shard, device: torch.device, bucket: tuple[int, int] | None = None, labeled: bool = False):
    """Read a worker's whole shard once onto `device`: (TensorData, label codes or None)."""
    from kmervae.core.data import TensorData

    labels: list[torch.Tensor] = []
    parts = list(shard_batches(shard, 8192, device, labels_out=labels if labeled else None, bucket=bucket))
    if not parts:
        raise KmervaeError("this worker's shard is empty; featurize more contigs or use fewer workers")
    batch = CountBatch(*(torch.cat(columns) for columns in zip(*parts)))
    return TensorData(batch, np.array([], dtype=object), None).to(device), (torch.cat(labels) if labels else None)


def shard_batches(
    shard,
    batch_size: int,
    device: torch.device,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    labels_out: list | None = None,
    bucket: tuple[int, int] | None = None,
) -> Iterator[CountBatch]:
    """A worker's batches as model input on `device`.

    `shuffle_seed` turns on a local shuffle buffer; `drop_last` keeps every training step
    at full size (equal shards then give every DDP rank the same number of steps);
    `bucket=(rank, world)` keeps this rank's share of an unsplit dataset; label codes,
    when present, are appended to `labels_out` in batch order.
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
        if labels_out is not None and "label" in batch:
            labels_out.append(batch["label"].cpu())
        yield CountBatch(batch["length"], batch["gc"], *(batch[KMER_COLUMNS[k]] for k in KMER_SIZES))
