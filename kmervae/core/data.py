"""Training data for one process: the deterministic train/validation split and count batches.

The split hashes `contig_id` (salted BLAKE2b), so every run, trial, resume and engine sees
the same validation contigs whatever the file order or number of workers. Counts stay
compact integers until the device: the model's transform widens and normalises them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor

from kmervae.base.errors import ConfigError, InputError
from kmervae.base.feature_contract import KMER_SIZES, id_hash, parse_fragment
from kmervae.base.feature_table import FeatureTable, dataset_files, read_keys
from kmervae.core.config import DataConfig

_HASH_SCALE = float(2**64)
SUBSAMPLE_SALT = ":subsample"
"""Appended to the split salt for the independent hash that picks `data.max_samples` contigs."""


def split_hash(contig_ids, salt: str) -> np.ndarray:
    """Uniform [0, 1) value per contig id, stable across runs, machines and Python versions."""
    prefix = salt.encode() + b"\x00"
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(prefix + str(cid).encode(), digest_size=8).digest(), "little") / _HASH_SCALE
            for cid in contig_ids
        ],
        dtype=np.float64,
    )


def subsample_threshold(contig_ids, cfg: DataConfig) -> float | None:
    """Largest subsample hash that `data.max_samples` keeps (None: keep every contig).

    The one rule of subsampling for every reader: keep the contigs whose independent
    subsample hash is at most this value, i.e. the `max_samples` lowest. A streamed read
    cannot sort globally, so the driver computes it once from the ids and the read tasks
    apply `split_mask` with it; the local engine does the same in one process.
    """
    if cfg.max_samples is None or cfg.max_samples >= len(contig_ids):
        return None
    return float(np.sort(split_hash(contig_ids, cfg.split_salt + SUBSAMPLE_SALT))[cfg.max_samples - 1])


GENOME_SALT = ":genome"
"""Appended to the split salt for the hash of labels that picks held-out genomes."""
MIN_HELD_OUT_GENOMES = 2
"""data.val_split=genome holds out at least this many labels: kNN accuracy needs two to tell apart."""


def held_out_labels(vocabulary: list[str], cfg: DataConfig) -> frozenset[str]:
    """The labels whose contigs validate under data.val_split=genome (empty for 'contig'): those
    whose salted label hash is below val_fraction, and at least MIN_HELD_OUT_GENOMES."""
    if cfg.val_split != "genome":
        return frozenset()
    if len(vocabulary) <= MIN_HELD_OUT_GENOMES:
        raise ConfigError(
            f"data.val_split=genome needs at least {MIN_HELD_OUT_GENOMES + 1} labels, the data has "
            f"{len(vocabulary)}; featurize with labels (--label-from-filename) or use data.val_split=contig"
        )
    hashes = split_hash(vocabulary, cfg.split_salt + GENOME_SALT)
    count = min(max(MIN_HELD_OUT_GENOMES, int((hashes < cfg.val_fraction).sum())), len(vocabulary) - 1)
    return frozenset(vocabulary[i] for i in np.argsort(hashes, kind="stable")[:count])


def split_mask(
    contig_ids,
    cfg: DataConfig,
    validation: bool,
    threshold: float | None = None,
    labels=None,
    held_out: frozenset[str] = frozenset(),
    hashes: np.ndarray | None = None,
) -> np.ndarray:
    """True for the contigs of one split, after the subsample rule of `subsample_threshold`.

    data.val_split=contig: validation is a `val_fraction` share of contigs chosen by hash;
    genome: the contigs whose label is in `held_out` (`held_out_labels`; `labels` per contig);
    all: every contig is in both splits (a binner's protocol).
    `hashes`: `split_hash(contig_ids, cfg.split_salt)` when the caller has it already.
    """
    if cfg.whole_assembly:
        keep = np.ones(len(contig_ids), dtype=bool)
    else:
        if cfg.val_split == "genome":
            is_val = np.array([label in held_out for label in labels], dtype=bool)
        else:
            hashes = split_hash(contig_ids, cfg.split_salt) if hashes is None else hashes
            is_val = hashes < cfg.val_fraction
        keep = is_val == validation
    if threshold is not None:
        keep &= split_hash(contig_ids, cfg.split_salt + SUBSAMPLE_SALT) <= threshold
    return keep


def label_codes(labels, vocabulary: list[str]) -> np.ndarray:
    """(n,) int32 index of each label in `vocabulary`; -1 for an unknown or missing label."""
    codes = {name: i for i, name in enumerate(vocabulary)}
    return np.array([-1 if v is None else codes.get(v, -1) for v in labels], dtype=np.int32)


def link_keys(contig_ids) -> np.ndarray:
    """(n, 3) int64 per contig: a 63-bit hash of the record it was cut from and its start
    coordinate (`feature_contract.parse_fragment`; (-1, -1) for an id without coordinates), and a
    hash of its own id (`feature_contract.id_hash`). Consecutive fragments of one record are the
    must-links of `metrics.link_agreement`; the contig's hash finds its row in per-contig tables
    (its marker genes: `markers.KeyedMarkers`). Hashes, not a vocabulary, so that every reader and
    rank codes a contig the same way on its own."""
    keys = np.full((len(contig_ids), LINK_COLUMNS), -1, dtype=np.int64)
    for i, cid in enumerate(contig_ids):
        cid = str(cid)
        keys[i, 2] = id_hash(cid)
        fragment = parse_fragment(cid)
        if fragment is not None:
            keys[i, :2] = id_hash(fragment[0]), fragment[1]
    return keys


LINK_COLUMNS = 3
"""Columns of `link_keys`: record hash, start, contig hash."""


class CountBatch(NamedTuple):
    """A batch of stored features as tensors: the model's input."""

    length: Tensor  # (B,) int64
    gc: Tensor  # (B,) float32
    kmer7: Tensor  # (B, 8192) uint8/uint16/int64 counts
    kmer4: Tensor  # (B, 136)
    kmer3: Tensor  # (B, 32)
    abundance: Tensor | None = None  # (B, samples) float32 mean depths, where the features have them

    def map(self, fn) -> CountBatch:
        """`fn` applied to every column present."""
        return CountBatch(*(None if t is None else fn(t) for t in self))

    @staticmethod
    def cat(batches) -> CountBatch:
        """Batches joined row-wise, column by column."""
        columns = zip(*batches, strict=True)
        return CountBatch(*(None if parts[0] is None else torch.cat(parts) for parts in columns))

    def to(self, device: torch.device, non_blocking: bool = False) -> CountBatch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def head(self, n: int) -> CountBatch:
        """The first `n` contigs."""
        return self.map(lambda t: t[:n])

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.numel() for t in self if t is not None)


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
        raise ConfigError(
            f"train.resident=on: the data needs {nbytes / 2**30:.1f} GiB, {device} has {free / 2**30:.1f} "
            "GiB free; use auto or off"
        )
    return mode == "on" or nbytes <= RESIDENT_SHARE * free


class ValidationBatch(NamedTuple):
    """A validation batch with what its metrics need beside the counts."""

    batch: CountBatch
    codes: Tensor | None  # (B,) int32 label codes (-1: none); None when the data is unlabeled
    links: Tensor | None  # (B, 3) int64 must-link and contig keys (`link_keys`); None where unknown


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
    """Contigs held as tensors (in host memory or on a GPU), iterated in (optionally shuffled) batches."""

    batch: CountBatch
    codes: Tensor | None = None  # (n,) int32 label code per contig (-1: none); None when unlabeled
    contig_ids: np.ndarray | None = None  # (n,) str, where known (the local engine)
    links: Tensor | None = None  # (n, 3) int64 must-link and contig keys (`link_keys`), host-side; validation only

    @classmethod
    def from_table(
        cls, table: FeatureTable, rows: np.ndarray, vocabulary: list[str] | None = None, links: bool = False
    ) -> TensorData:
        """Rows of a table; label codes against `vocabulary` (default: the table's own labels);
        with `links`, the must-link keys of `link_keys` (what validation scores)."""
        codes = None
        if table.labels is not None:
            vocabulary = vocabulary if vocabulary is not None else sorted({v for v in table.labels if v is not None})
            codes = torch.from_numpy(label_codes(table.labels[rows], vocabulary))
        counts = (torch.from_numpy(torch_counts(table.counts(k)[rows])) for k in KMER_SIZES)
        depth = None if table.abundance is None else torch.from_numpy(table.abundance[rows])
        batch = CountBatch(torch.from_numpy(table.length[rows]), torch.from_numpy(table.gc[rows]), *counts, depth)
        ids = table.contig_ids[rows]
        return cls(batch, codes, ids, torch.from_numpy(link_keys(ids)) if links else None)

    def __len__(self) -> int:
        return len(self.batch.length)

    def to(self, device: torch.device) -> TensorData:
        """The same data held on `device` (GPU-resident mode: copied once, shuffled there; the
        label codes too, so a shuffled batch's codes are gathered without a host round trip)."""
        codes = None if self.codes is None else self.codes.to(device)
        batch = self.batch.map(lambda t: _indexable(t.to(device)))
        return TensorData(batch, codes, self.contig_ids, self.links)

    def labeled_batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        drop_singleton: bool = False,
        drop_last: bool = False,
    ) -> Iterator[tuple[CountBatch, Tensor | None]]:
        """Batches in storage order, or shuffled by `generator` (on the generator's device, so
        resident data is shuffled on the GPU), each with its label codes (None when unlabeled);
        a trailing batch of 1 is dropped when `drop_singleton` (BatchNorm cannot train on one
        sample), any short one when `drop_last`."""
        n = len(self)
        order = torch.randperm(n, generator=generator, device=generator.device) if generator is not None else None
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            if (drop_singleton and hi - lo < 2) or (drop_last and hi - lo < batch_size):
                break
            rows = slice(lo, hi) if order is None else order[lo:hi]
            yield self.batch.map(lambda t, rows=rows: t[rows]), None if self.codes is None else self.codes[rows]

    def batches(self, batch_size: int, generator: torch.Generator | None = None, **drops) -> Iterator[CountBatch]:
        """`labeled_batches` without the codes."""
        return (batch for batch, _ in self.labeled_batches(batch_size, generator, **drops))

    def validation_batches(self, batch_size: int) -> Iterator[ValidationBatch]:
        """Every contig once in storage order, with its label codes and must-link keys."""
        links = self.links.split(batch_size) if self.links is not None else None
        for i, (batch, codes) in enumerate(self.labeled_batches(batch_size)):
            yield ValidationBatch(batch, codes, None if links is None else links[i])


class EpochData(Protocol):
    """What the epoch loop reads: training batches per epoch, validation batches with their labels.

    One implementation holds the data in memory (`InMemoryData`: the local engine, and a Ray
    worker's GPU-resident shard); the Ray engine's other streams a worker's shard through
    Ray Data every epoch (`kmervae.distributed.ray_data.StreamedShards`).
    """

    labeled: bool  # batches carry label codes (kNN accuracy is computed; loss.supcon can train on them)

    def train_batches(self, epoch: int) -> Iterable[tuple[CountBatch, Tensor | None]]: ...

    def all_train_batches(self) -> Iterable[CountBatch]:
        """Every training contig once, in storage order (fitting input statistics)."""
        ...

    def val_batches(self) -> Iterable[ValidationBatch]: ...


@dataclass
class InMemoryData:
    """Training and validation data held as tensors; the training order is reshuffled every epoch."""

    train: TensorData
    val: TensorData
    batch_size: int
    generator: torch.Generator  # on the data's device: resident data is shuffled there
    drop_last: bool = False  # full batches only (equal steps on every DDP rank); else only a batch of 1 is dropped

    @property
    def labeled(self) -> bool:
        return self.val.codes is not None

    def train_batches(self, epoch: int) -> Iterator[tuple[CountBatch, Tensor | None]]:
        return self.train.labeled_batches(
            self.batch_size, self.generator, drop_singleton=True, drop_last=self.drop_last
        )

    def all_train_batches(self) -> Iterator[CountBatch]:
        return self.train.batches(self.batch_size)

    def val_batches(self) -> Iterator[ValidationBatch]:
        return self.val.validation_batches(self.batch_size)


def load_splits(path, cfg: DataConfig) -> tuple[TensorData, TensorData]:
    """Read a feature dataset and split it into training and validation data (label codes
    against the dataset's sorted labels, as the Ray engine codes them)."""
    ids, labels = read_keys(dataset_files(path))  # the split is decided on ids and labels alone
    labels = labels if labels is not None else np.full(len(ids), None, dtype=object)
    vocabulary = sorted({v for v in labels if v is not None})
    held_out = held_out_labels(vocabulary, cfg)
    threshold = subsample_threshold(ids, cfg)
    hashes = split_hash(ids, cfg.split_salt)  # once for both splits
    split = dict(threshold=threshold, labels=labels, held_out=held_out, hashes=hashes)
    train_rows = np.flatnonzero(split_mask(ids, cfg, validation=False, **split))
    val_rows = np.flatnonzero(split_mask(ids, cfg, validation=True, **split))
    if len(train_rows) < 2 or len(val_rows) < 1:
        raise InputError(
            f"{path}: {len(train_rows) + len(val_rows)} contigs give {len(train_rows)} for training and "
            f"{len(val_rows)} for validation; featurize more contigs or change data.val_fraction"
        )
    # Only the rows either split uses are decoded (data.max_samples of a large dataset).
    kept = np.union1d(train_rows, val_rows)
    table = FeatureTable.from_parquet(path, rows=None if len(kept) == len(ids) else kept)
    if len(kept) < len(ids):
        train_rows, val_rows = np.searchsorted(kept, train_rows), np.searchsorted(kept, val_rows)
    return (
        TensorData.from_table(table, train_rows, vocabulary),
        TensorData.from_table(table, val_rows, vocabulary, links=True),
    )
