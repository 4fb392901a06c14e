"""Bin quality as a user reads it: against known genomes (`QualityReport`) and estimated from
single-copy marker genes (`EstimateReport`), per bin and in counts.

These are what `kmervae bin` writes to summary.json and bin_summary.tsv and prints, and what
`kmervae evaluate` reports per embedding. `to_json` gives the files' form; code reads fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from kmervae.binning import bins
from kmervae.binning.markers import BinEstimates


@dataclass(frozen=True)
class BinTruth:
    """One bin against the labels: its main genome and that genome's purity and recall, in bases."""

    genome: str | None  # None: no labelled contig in the bin
    purity: float
    recall: float


@dataclass(frozen=True)
class QualityReport:
    """Bins against known genomes: counts at the quality levels, AMBER's grid, and each bin."""

    genomes: int
    labelled_contigs: int
    near_complete: int  # recall >= 0.9, purity >= 0.95
    medium: int  # recall >= 0.5, purity >= 0.9
    grid: dict[str, int]  # `bins.grid_key(recall, purity)` -> bins at both
    bins: dict[str, BinTruth]  # by bin name

    @classmethod
    def of(cls, q: bins.BinQuality, names: list[str], labelled: int) -> QualityReport:
        """The report of `q`, whose bin codes are indices into `names`."""
        return cls(
            genomes=len(q.genomes),
            labelled_contigs=labelled,
            near_complete=q.near_complete,
            medium=q.count(*bins.MEDIUM),
            grid=q.grid(),
            bins={
                name: BinTruth(
                    genome=q.genomes[q.main[i]] if q.main[i] >= 0 else None,
                    purity=round(float(q.purity[i]), 6),
                    recall=round(float(q.recall[i]), 6),
                )
                for i, name in enumerate(names)
            },
        )

    def at(self, recall: float, purity: float) -> int:
        """Bins at or above both thresholds (one of `bins.RECALLS` and `bins.PURITIES`)."""
        return self.grid[bins.grid_key(recall, purity)]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """Bins at each recall (columns) and purity (rows) level, as AMBER's tables."""
        lines = [f"{'bins at':<14}" + "".join(f"{'recall>=' + str(r):>13}" for r in bins.RECALLS)]
        for p in bins.PURITIES:
            lines.append(f"{'purity>=' + str(p):<14}" + "".join(f"{self.at(r, p):>13}" for r in bins.RECALLS))
        return "\n".join(lines)


@dataclass(frozen=True)
class BinEstimate:
    """One bin judged by its marker genes."""

    completeness: float
    contamination: float
    marker_set: str  # the set it was judged by (bacteria or archaea)
    judged: bool
    note: str  # why a bin was not judged; "" when it was


@dataclass(frozen=True)
class EstimateReport:
    """Bins judged by single-copy marker genes: counts at the MIMAG levels and each bin."""

    sets: dict[str, int]  # marker set -> genes in it
    near_complete: int  # completeness >= 90%, contamination <= 5%
    medium: int  # >= 50%, <= 10%
    not_judged: int
    score: float  # `BinEstimates.score`
    bins: dict[str, BinEstimate]

    @classmethod
    def of(cls, est: BinEstimates, names: list[str], sets: dict[str, int]) -> EstimateReport:
        return cls(
            sets=dict(sets),
            near_complete=est.near_complete,
            medium=est.medium,
            not_judged=est.not_judged,
            score=round(est.score(), 6),
            bins={
                name: BinEstimate(
                    completeness=round(float(est.completeness[i]), 6),
                    contamination=round(float(est.contamination[i]), 6),
                    marker_set=str(est.domain[i]),
                    judged=bool(est.judged[i]),
                    note=est.note(i),
                )
                for i, name in enumerate(names)
            },
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
