"""Training data for one process: the deterministic train/validation split and count batches.

The split hashes `contig_id` (salted BLAKE2b), so every run, trial, resume and engine sees
the same validation contigs whatever the file order or number of workers. Counts stay
compact integers until the device: the model's transform widens and normalises them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from kmervae.core.config import DataConfig
from kmervae.core.errors import ConfigError, InputError
from kmervae.core.feature_table import FeatureTable

_HASH_SCALE = float(2**64)
SUBSAMPLE_SALT = ":subsample"
"""Appended to the split salt for the independent hash that picks `data.max_samples` contigs."""


def split_hash(contig_ids, salt: str) -> np.ndarray:
    """Uniform [0, 1) value per contig id, stable across runs, machines and Python versions."""
    prefix = salt.encode() + b"\x00"
    return np.array(
        [int.from_bytes(hashlib.blake2b(prefix + str(cid).encode(), digest_size=8).digest(), "little") / _HASH_SCALE for cid in contig_ids],
        dtype=np.float64,
    )


def validation_mask(contig_ids, cfg: DataConfig) -> np.ndarray:
    """True for the contigs held out for validation (a `val_fraction` share, chosen by hash)."""
    return split_hash(contig_ids, cfg.split_salt) < cfg.val_fraction


class CountBatch(NamedTuple):
    """A batch of stored features as tensors: the model's input."""

    length: Tensor  # (B,) int64
    gc: Tensor  # (B,) float32
    kmer7: Tensor  # (B, 8192) uint8/uint16/int64 counts
    kmer4: Tensor  # (B, 136)
    kmer3: Tensor  # (B, 32)

    def to(self, device: torch.device, non_blocking: bool = False) -> "CountBatch":
        return CountBatch(*(t.to(device, non_blocking=non_blocking) for t in self))

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self)


def torch_counts(counts: np.ndarray) -> np.ndarray:
    """Counts as they travel to the device: uint8 and uint16 stay (1 or 2 bytes a bin; the
    model widens them there), uint32 widens to int64 (torch has few uint32 kernels)."""
    kept = {np.dtype("uint8"): np.uint8, np.dtype("uint16"): np.uint16, np.dtype("uint32"): np.int64}
    return np.ascontiguousarray(counts, dtype=kept[np.dtype(counts.dtype).newbyteorder("=")])


RESIDENT_SHARE = 0.5
"""`auto` keeps data on the GPU when it takes at most this share of the free GPU memory
(the rest is for the model, optimiser state and activations)."""


def use_resident(mode: str, device: torch.device, nbytes: int) -> bool:
    """Whether data of `nbytes` should live on `device` for the whole run (train.resident).

    `auto` chooses it on CUDA devices only (on the CPU the local engine's data is in memory
    already, and Ray Data's streaming overlaps with compute); `on` forces it anywhere, e.g.
    a Ray CPU worker then reads its shard once instead of every epoch."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    if mode == "on" and nbytes > free:
        raise ConfigError(f"train.resident=on: the data needs {nbytes / 2**30:.1f} GiB, {device} has {free / 2**30:.1f} GiB free; use auto or off")
    return mode == "on" or nbytes <= RESIDENT_SHARE * free


def _indexable(t: Tensor) -> Tensor:
    """`t`, or `t` widened to int32 where this torch build cannot gather its dtype on its device
    (uint16 support on CUDA is recent): resident data is gathered by index every step."""
    if t.dtype not in (torch.uint16, torch.uint32) or t.numel() == 0:
        return t
    try:
        t[torch.zeros(1, dtype=torch.int64, device=t.device)].float()
        return t
    except (RuntimeError, NotImplementedError):
        return t.to(torch.int32)


@dataclass
class TensorData:
    """Contigs held in memory as tensors, iterated in (optionally shuffled) batches."""

    batch: CountBatch
    contig_ids: np.ndarray
    labels: np.ndarray | None

    @classmethod
    def from_table(cls, table: FeatureTable, rows: np.ndarray) -> "TensorData":
        return cls(
            CountBatch(
                torch.from_numpy(table.length[rows]),
                torch.from_numpy(table.gc[rows]),
                torch.from_numpy(torch_counts(table.kmer7[rows])),
                torch.from_numpy(torch_counts(table.kmer4[rows])),
                torch.from_numpy(torch_counts(table.kmer3[rows])),
            ),
            table.contig_ids[rows],
            None if table.labels is None else table.labels[rows],
        )

    def __len__(self) -> int:
        return len(self.batch.length)

    def to(self, device: torch.device) -> "TensorData":
        """The same data held on `device` (GPU-resident mode: copied once, shuffled there)."""
        return TensorData(CountBatch(*(_indexable(t.to(device)) for t in self.batch)), self.contig_ids, self.labels)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, drop_singleton: bool = False, drop_last: bool = False
    ) -> Iterator[CountBatch]:
        """Batches in storage order, or shuffled by `generator` (on the generator's device, so
        resident data is shuffled on the GPU); a trailing batch of 1 is dropped when
        `drop_singleton` (BatchNorm cannot train on one sample), any short one when `drop_last`."""
        n = len(self)
        order = torch.randperm(n, generator=generator, device=generator.device) if generator is not None else None
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            if (drop_singleton and hi - lo < 2) or (drop_last and hi - lo < batch_size):
                break
            if order is None:
                yield CountBatch(*(t[lo:hi] for t in self.batch))
            else:
                idx = order[lo:hi]
                yield CountBatch(*(t[idx] for t in self.batch))


def load_splits(path, cfg: DataConfig) -> tuple[TensorData, TensorData]:
    """Read a feature dataset and split it into training and validation data."""
    table = FeatureTable.from_parquet(path)
    hashes = split_hash(table.contig_ids, cfg.split_salt)
    rows = np.arange(len(table))
    if cfg.max_samples is not None and cfg.max_samples < len(table):
        # An independent hash picks the subsample, so it keeps the validation share.
        subsample = split_hash(table.contig_ids, cfg.split_salt + SUBSAMPLE_SALT)
        rows = np.sort(np.argsort(subsample, kind="stable")[: cfg.max_samples])
    val = hashes[rows] < cfg.val_fraction
    train_rows, val_rows = rows[~val], rows[val]
    if len(train_rows) < 2 or len(val_rows) < 1:
        raise InputError(
            f"{path}: {len(rows)} contigs give {len(train_rows)} for training and {len(val_rows)} for validation; "
            "featurize more contigs or change data.val_fraction"
        )
    return TensorData.from_table(table, train_rows), TensorData.from_table(table, val_rows)
