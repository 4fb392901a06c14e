"""A slow, obviously correct k-mer counter that the compiled kernel is checked against.

It shares nothing with the code under test: k-mers are strings, canonical bins come
from sorting strings, and the reverse complement is a string translation.
"""

from __future__ import annotations

import itertools
from functools import cache

import numpy as np

COMPLEMENT = str.maketrans("ACGT", "TGCA")


def revcomp(kmer: str) -> str:
    return kmer.translate(COMPLEMENT)[::-1]


@cache
def canonical_bins(k: int) -> dict[str, int]:
    """Every k-mer string -> index of its canonical bin (sorted distinct canonical strings)."""
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    canonical = sorted({min(s, revcomp(s)) for s in kmers})
    position = {s: i for i, s in enumerate(canonical)}
    return {s: position[min(s, revcomp(s))] for s in kmers}


def reference_counts(sequence: str, k: int) -> np.ndarray:
    """Canonical k-mer counts; windows with anything but A/C/G/T (after upper-casing, U->T) skipped."""
    bins = canonical_bins(k)
    seq = sequence.upper().replace("U", "T")
    counts = np.zeros(len(set(bins.values())), dtype=np.int64)
    for i in range(len(seq) - k + 1):
        window = seq[i : i + k]
        if window in bins:
            counts[bins[window]] += 1
    return counts


def reference_gc(sequence: str) -> float:
    seq = sequence.upper().replace("U", "T")
    acgt = sum(seq.count(b) for b in "ACGT")
    return (seq.count("G") + seq.count("C")) / acgt if acgt else float("nan")
