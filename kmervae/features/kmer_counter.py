"""Count canonical 7-, 4- and 3-mers and GC of many contigs in one compiled pass.

The kernel is compiled with numba: it is on PyPI and in most CUDA images, compiles
once per machine (cached next to this file), and a plain loop over bytes with a
rolling 2-bit code runs at several hundred Mbp/s per core (bench/featurize.py).
One rolling 14-bit code serves all three k: its low 8 and 6 bits are the last 4-mer
and 3-mer, and a run length of consecutive A/C/G/T says which windows are complete,
so a window containing any other character is skipped for every k.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np

from kmervae.base.feature_contract import BASES, KMER_SIZES, N_BINS, canonical_index

INVALID = 255
"""Class of a byte that is not an IUPAC nucleotide code."""
AMBIGUOUS = 4
"""Class of an IUPAC code other than A/C/G/T (N, R, Y, ...): valid, but breaks windows."""


def _base_classes() -> np.ndarray:
    """Byte -> 0..3 for A/C/G/T (either case; U counts as T), 4 for other IUPAC, 255 otherwise."""
    table = np.full(256, INVALID, dtype=np.uint8)
    for code, base in enumerate(BASES):
        table[ord(base)] = table[ord(base.lower())] = code
    table[ord("U")] = table[ord("u")] = BASES.index("T")  # RNA: uracil pairs like thymine
    for base in "RYSWKMBDHVN":
        table[ord(base)] = table[ord(base.lower())] = AMBIGUOUS
    return table


BASE_CLASS = _base_classes()
_K7, _K4, _K3 = KMER_SIZES
assert (_K7, _K4, _K3) == (7, 4, 3)
_INDEX7, _INDEX4, _INDEX3 = (np.ascontiguousarray(canonical_index(k)) for k in KMER_SIZES)


@numba.njit(cache=True, nogil=True)
def first_invalid_byte(seq: np.ndarray, base_class: np.ndarray) -> int:
    """Offset of the first byte that is not an IUPAC nucleotide code, or -1."""
    for i in range(seq.shape[0]):
        if base_class[seq[i]] == 255:
            return i
    return -1


@numba.njit(cache=True, nogil=True)
def _count_kernel(seq, starts, ends, base_class, index7, index4, index3, out7, out4, out3, gc, acgt, windows7):
    # 4- and 3-mers are counted by their 2-bit code into two small arrays and folded into their
    # canonical bins once per contig: one table lookup per base fewer for each (+29% speed,
    # bench/RESULTS.md).
    raw4 = np.zeros(256, dtype=np.uint32)
    raw3 = np.zeros(64, dtype=np.uint32)
    for row in range(starts.shape[0]):
        out7[row, :] = 0  # buffers are reused between calls
        raw4[:] = 0
        raw3[:] = 0
        code = 0  # last 7 bases, 2 bits each
        run = 0  # consecutive A/C/G/T bases ending here
        n_gc = 0
        n_acgt = 0
        n7 = 0
        for i in range(starts[row], ends[row]):
            b = base_class[seq[i]]
            if b < 4:
                code = ((code << 2) | b) & 0x3FFF
                run += 1
                n_acgt += 1
                n_gc += (b == 1) | (b == 2)
                if run >= 3:
                    raw3[code & 0x3F] += 1
                    if run >= 4:
                        raw4[code & 0xFF] += 1
                        if run >= 7:
                            out7[row, index7[code]] += 1
                            n7 += 1
            else:
                run = 0
        out4[row, :] = 0
        out3[row, :] = 0
        for c in range(256):
            out4[row, index4[c]] += raw4[c]
        for c in range(64):
            out3[row, index3[c]] += raw3[c]
        gc[row] = n_gc
        acgt[row] = n_acgt
        windows7[row] = n7


@dataclass(frozen=True)
class KmerCounts:
    """Counts of a batch of contigs: one row per contig."""

    kmer7: np.ndarray  # (n, 8192) uint32
    kmer4: np.ndarray  # (n, 136) uint32
    kmer3: np.ndarray  # (n, 32) uint32
    gc_bases: np.ndarray  # (n,) int64, G + C
    acgt_bases: np.ndarray  # (n,) int64, A + C + G + T
    windows7: np.ndarray  # (n,) int64, 7-mers counted (windows of 7 unambiguous bases)

    def by_k(self, k: int) -> np.ndarray:
        """The count matrix of k."""
        return {7: self.kmer7, 4: self.kmer4, 3: self.kmer3}[k]

    @property
    def gc_fraction(self) -> np.ndarray:
        """(G+C)/(A+C+G+T) as float32; NaN where a contig has no unambiguous base."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.gc_bases / self.acgt_bases).astype(np.float32)


class KmerCounter:
    """Counts batches of contigs into buffers it reuses, so the hot loop never page-faults.

    Returned arrays are views into those buffers: valid until the next `count` call.
    """

    def __init__(self, capacity: int = 1024):
        self._buffers = {k: np.empty((0, N_BINS[k]), dtype=np.uint32) for k in KMER_SIZES}
        self._grow(capacity)

    def _grow(self, rows: int) -> None:
        if rows > len(self._buffers[7]):
            self._buffers = {k: np.empty((rows, N_BINS[k]), dtype=np.uint32) for k in KMER_SIZES}

    def count(self, seq: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> KmerCounts:
        """Count the contigs `seq[starts[i]:ends[i]]` of a uint8 sequence buffer.

        Bytes should have been validated (`first_invalid_byte`): an invalid byte only
        breaks windows, like N.
        """
        n = len(starts)
        self._grow(n)
        out = {k: buf[:n] for k, buf in self._buffers.items()}
        gc = np.zeros(n, dtype=np.int64)
        acgt = np.zeros(n, dtype=np.int64)
        windows7 = np.zeros(n, dtype=np.int64)
        _count_kernel(
            seq,
            np.asarray(starts, dtype=np.int64),
            np.asarray(ends, dtype=np.int64),
            BASE_CLASS,
            _INDEX7,
            _INDEX4,
            _INDEX3,
            out[7],
            out[4],
            out[3],
            gc,
            acgt,
            windows7,
        )
        return KmerCounts(out[7], out[4], out[3], gc, acgt, windows7)


@contextmanager
def without_blas_and_cffi() -> Iterator[None]:
    """Load numba's compiled kernels inside this to keep numba from importing scipy.linalg and cffi.

    The first kernel a process loads sets up numba's CPU target, which imports scipy.linalg
    (to find a BLAS for np.dot) and cffi: 0.14 s of the 0.6 s start-up of `kmervae featurize`,
    for features these kernels never use (bench/RESULTS.md). For a process that runs the
    featurizer alone, as the CLI does: numba has no BLAS in it afterwards. Modules already
    imported are left alone, and both import normally again after the block.
    """
    blocked = [name for name in ("scipy.linalg", "cffi") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # importing it raises ImportError
    try:
        yield
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


@numba.njit(cache=True, nogil=True)
def copy_rows(src: np.ndarray, keep: np.ndarray, dst: np.ndarray, at: int) -> int:
    """Copy the rows of `src` flagged in `keep` to `dst[at:]` in dst's dtype (one pass, instead of
    numpy's select, max and cast); returns the largest value copied. A value wider than dst is
    truncated: the caller widens dst and copies again."""
    peak = 0
    out = at
    for row in range(src.shape[0]):
        if keep[row]:
            for j in range(src.shape[1]):
                value = src[row, j]
                if value > peak:
                    peak = value
                dst[out, j] = value
            out += 1
    return peak


def count_sequence(sequence: str | bytes) -> KmerCounts:
    """Count one sequence into fresh arrays (a convenience for tests and small inputs)."""
    data = sequence.encode("ascii") if isinstance(sequence, str) else bytes(sequence)
    buf = np.frombuffer(data, dtype=np.uint8)
    return KmerCounter(1).count(buf, np.array([0]), np.array([len(buf)]))
