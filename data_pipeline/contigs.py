"""Cut records into contigs and group contigs into batches, one batch per output file.

A batch carries only the bases it needs (a slice of each record), so a batch can be
shipped to a worker process cheaply, and a huge record is spread over several batches.
Batch boundaries depend only on the input and the settings, never on the number of
workers, so the output is the same for any `--workers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_pipeline.fasta import FastaRecord
from kmervae.core.feature_contract import fragment_contig_id


def fragment_bounds(length: int, fragment_length: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the non-overlapping fragments of a record (one if not fragmenting)."""
    if fragment_length is None or length == 0:
        return np.array([0], dtype=np.int64), np.array([length], dtype=np.int64)
    starts = np.arange(0, length, fragment_length, dtype=np.int64)
    return starts, np.minimum(starts + fragment_length, length)


def contig_id(record_id: str, start: int, end: int, fragmented: bool) -> str:
    """`RECORD` or, for a fragment, `RECORD:START-END` with 1-based inclusive coordinates."""
    return fragment_contig_id(record_id, start, end) if fragmented else record_id


@dataclass
class Batch:
    """Contigs bound for one output file: their bases, bounds, ids and labels."""

    index: int
    pieces: list[np.ndarray] = field(default_factory=list)  # uint8 slices of records
    starts: list[int] = field(default_factory=list)  # contig bounds in the joined pieces
    ends: list[int] = field(default_factory=list)
    contig_ids: list[str] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    bases: int = 0

    def __len__(self) -> int:
        return len(self.contig_ids)

    def add(self, sequence: np.ndarray, bounds: list[tuple[int, int]], ids: list[str], label: str | None) -> None:
        """Add contigs lying in `sequence` at `bounds` (offsets into it)."""
        lo, hi = bounds[0][0], bounds[-1][1]
        for start, end in bounds:
            self.starts.append(self.bases + start - lo)
            self.ends.append(self.bases + end - lo)
        self.pieces.append(sequence[lo:hi])
        self.contig_ids.extend(ids)
        self.labels.extend([label] * len(ids))
        self.bases += hi - lo

    def joined(self) -> np.ndarray:
        """All bases of the batch in one buffer (what the counting kernel reads)."""
        return np.concatenate(self.pieces) if len(self.pieces) != 1 else self.pieces[0]


@dataclass
class SkipCounts:
    """Contigs not written, by reason, with their bases (nothing is dropped silently)."""

    too_short: int = 0
    too_short_bases: int = 0
    no_acgt_window: int = 0
    no_acgt_window_bases: int = 0

    def merge(self, other: SkipCounts) -> None:
        """Add another count to this one."""
        self.too_short += other.too_short
        self.too_short_bases += other.too_short_bases
        self.no_acgt_window += other.no_acgt_window
        self.no_acgt_window_bases += other.no_acgt_window_bases


class Batcher:
    """Turns records into full batches of at most `rows` contigs or `max_bases` bases."""

    def __init__(self, fragment_length: int | None, min_length: int, rows: int, max_bases: int = 64_000_000):
        self.fragment_length = fragment_length
        self.min_length = min_length
        self.rows = rows
        self.max_bases = max_bases
        self.skipped = SkipCounts()
        self.too_short_ids: list[str] = []  # for --strict messages (first few only)
        self._current = Batch(0)

    def add(self, record: FastaRecord, label: str | None) -> list[Batch]:
        """Add a record's contigs; return the batches it completed."""
        starts, ends = fragment_bounds(len(record.sequence), self.fragment_length)
        fragmented = self.fragment_length is not None
        keep = (ends - starts) >= max(self.min_length, 1)
        if not keep.all():
            short = ~keep
            self.skipped.too_short += int(short.sum())
            self.skipped.too_short_bases += int((ends - starts)[short].sum())
            if len(self.too_short_ids) < 3:
                s, e = int(starts[short][0]), int(ends[short][0])
                self.too_short_ids.append(contig_id(record.id, s, e, fragmented))
        done = []
        pending = [(int(s), int(e)) for s, e in zip(starts[keep], ends[keep], strict=True)]
        while pending:
            room = self.rows - len(self._current)
            base_room = max(self.max_bases - self._current.bases, 1)
            take, taken_bases = 0, 0
            while take < min(room, len(pending)) and (take == 0 or taken_bases < base_room):
                taken_bases += pending[take][1] - pending[take][0]
                take += 1
            chunk, pending = pending[:take], pending[take:]
            ids = [contig_id(record.id, s, e, fragmented) for s, e in chunk]
            self._current.add(record.sequence, chunk, ids, label)
            if len(self._current) >= self.rows or self._current.bases >= self.max_bases:
                done.append(self._current)
                self._current = Batch(self._current.index + 1)
        return done

    def finish(self) -> list[Batch]:
        """The last, partly filled batch, if any."""
        return [self._current] if len(self._current) else []
