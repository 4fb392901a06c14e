"""Bins split by sample: multi-sample binning as large studies run it.

Each sample is assembled alone, the assemblies are concatenated with the sample in every
contig's name (`kmervae concat`: S1C<contig>), all contigs are clustered together, and each
cluster is split by sample (VAMB's binsplit, `-o C`; SemiBin2's `multi_easy_bin`): a genome
present in three samples gives three bins, one per sample assembly. A sample bin is judged
against its own sample: recall is of the genome's bases in that sample's assembly.
Dereplicated, a genome counts once however many samples recovered it (VAMB's paper counts so).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from kmervae.base.errors import InputError
from kmervae.binning import bins
from kmervae.binning.markers import NEAR_COMPLETE as NEAR_COMPLETE_ESTIMATE
from kmervae.binning.markers import BinEstimates


@dataclass(frozen=True)
class SampleSplit:
    """The sample bins of a clustering: each (cluster, sample) pair with at least the minimum
    bin size of bases is a bin, numbered by cluster then sample; the rest are unbinned."""

    separator: str
    codes: np.ndarray  # (contigs,) sample-bin index, or bins.UNBINNED
    names: list[str]  # sample bin names: <sample>_<cluster>
    cluster: list[str]  # each sample bin's cluster
    sample: list[str]  # each sample bin's sample
    contig_samples: np.ndarray  # (contigs,) each contig's sample, as str

    def per_sample(self, near_complete: np.ndarray) -> dict[str, dict[str, int]]:
        """{sample: {"bins": n, "near_complete": n}}, from `near_complete` (sample bins,) bool."""
        out: dict[str, dict[str, int]] = {}
        for sample, good in zip(self.sample, near_complete.tolist(), strict=True):
            counts = out.setdefault(sample, {"bins": 0, "near_complete": 0})
            counts["bins"] += 1
            counts["near_complete"] += int(good)
        return dict(sorted(out.items()))


def contig_samples(ids: np.ndarray, separator: str) -> np.ndarray:
    """Each contig's sample: its id up to the first `separator`. An id without it is refused."""
    parts = [str(cid).split(separator, 1) for cid in ids]
    bad = next((str(cid) for cid, p in zip(ids, parts, strict=True) if len(p) < 2 or not p[0] or not p[1]), None)
    if bad is not None:
        raise InputError(
            f"--split-by-sample {separator}: contig '{bad}' has no sample before a '{separator}'; "
            "bin a catalogue written by 'kmervae concat' (or name contigs <sample><separator><contig>)"
        )
    return np.asarray([p[0] for p in parts], dtype=object)


def split_by_sample(
    ids: np.ndarray, codes: np.ndarray, names: list[str], lengths: np.ndarray, separator: str, min_bin_size: int
) -> SampleSplit:
    """Split every cluster of `codes` (indices into `names`) by the contigs' samples."""
    samples = contig_samples(ids, separator)
    bases: dict[tuple[int, str], int] = defaultdict(int)
    for code, sample, length in zip(codes.tolist(), samples, lengths.tolist(), strict=True):
        if code != bins.UNBINNED:
            bases[(code, sample)] += length
    kept = sorted(key for key, size in bases.items() if size >= min_bin_size)
    index = {key: i for i, key in enumerate(kept)}
    split = np.asarray(
        [index.get((code, sample), bins.UNBINNED) for code, sample in zip(codes.tolist(), samples, strict=True)],
        dtype=np.int64,
    )
    return SampleSplit(
        separator=separator,
        codes=split,
        names=[f"{sample}_{names[code]}" for code, sample in kept],
        cluster=[names[code] for code, _ in kept],
        sample=[sample for _, sample in kept],
        contig_samples=samples,
    )


def sample_labels(labels: np.ndarray, split: SampleSplit) -> np.ndarray:
    """Labels that make each genome in each sample a genome of its own (<sample><separator><label>),
    so that a sample bin's recall is of its genome's bases in that sample."""
    return np.asarray(
        [None if label is None else f"{sample}{split.separator}{label}" for label, sample in zip(
            labels, split.contig_samples, strict=True
        )],
        dtype=object,
    )  # fmt: skip


def sample_counts(
    split: SampleSplit, truth: bins.BinQuality | None, estimates: BinEstimates | None
) -> tuple[dict[str, dict[str, int]], int | None]:
    """Each sample's bins and near-complete bins (by the truth, else by marker genes, by the same
    test that counts them: `passes`), and with the truth the genomes with a near-complete bin in
    some sample (dereplicated: a genome counts once, however many samples recovered it)."""
    if truth is not None:
        good = truth.passes(*bins.NEAR_COMPLETE)
        genomes = {truth.genomes[truth.main[i]].split(split.separator, 1)[1] for i in np.flatnonzero(good)}
        return split.per_sample(good), len(genomes)
    if estimates is not None:
        return split.per_sample(estimates.passes(*NEAR_COMPLETE_ESTIMATE)), None
    return split.per_sample(np.zeros(len(split.names), dtype=bool)), None
