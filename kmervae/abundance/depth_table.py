"""Depth tables: per-sample mean read depth of every contig, in the formats binners exchange.

- MetaBAT's (`jgi_summarize_bam_contig_depths`, and `kmervae abundance`): `contigName`,
  `contigLen`, `totalAvgDepth`, then for each sample its mean and `<sample>-var`;
- VAMB's abundance TSV: `contigname` and one column per sample;
- CoverM's `coverm contig` output: `Contig` and one `<sample> Mean` column per sample
  (other methods' columns are refused: kmervae learns mean depths).

`read_depth_table` reads any of them into a `DepthTable` and refuses what a binner would
mistrust: NaN, infinite or negative depths, duplicate contigs or sample names, ragged lines.
Each error names the file and the first offending contig or line.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmervae.base.errors import InputError, InputNotFoundError, OutputError

METABAT_FIXED = ("contigName", "contigLen", "totalAvgDepth")


@dataclass(frozen=True)
class DepthTable:
    """Mean depth per contig (rows) and sample (columns)."""

    source: str
    format: str  # metabat, vamb or coverm
    contigs: tuple[str, ...]
    samples: tuple[str, ...]
    depths: np.ndarray  # (contigs, samples) float32
    lengths: np.ndarray | None  # (contigs,) int64 where the format records them (MetaBAT's)

    def index(self) -> dict[str, int]:
        """Row of each contig id."""
        return {cid: i for i, cid in enumerate(self.contigs)}


def _format_of(header: list[str], path: Path) -> str:
    if header[:3] == list(METABAT_FIXED):
        return "metabat"
    if header and header[0].lower() == "contigname":
        return "vamb"
    if header and header[0].lower() == "contig":
        return "coverm"
    raise InputError(
        f"{path}: not a depth table: the header starts {header[:3]}; expected MetaBAT's "
        "(contigName, contigLen, totalAvgDepth, ...), VAMB's (contigname, ...) or CoverM's (Contig, ...)"
    )


def _sample_columns(fmt: str, header: list[str], path: Path) -> tuple[list[int], list[str]]:
    """Positions and names of the per-sample mean columns."""
    if fmt == "metabat":
        rest = header[3:]
        if len(rest) % 2 or any(rest[i + 1] != f"{rest[i]}-var" for i in range(0, len(rest), 2)):
            raise InputError(f"{path}: MetaBAT depth columns must come in pairs 'SAMPLE', 'SAMPLE-var'")
        return list(range(3, len(header), 2)), rest[0::2]
    if fmt == "coverm":
        columns = header[1:]
        others = [c for c in columns if not c.endswith(" Mean")]
        if others:
            raise InputError(
                f"{path}: column '{others[0]}' is not a mean depth; run 'coverm contig -m mean' for kmervae"
            )
        return list(range(1, len(header))), [c.removesuffix(" Mean") for c in columns]
    return list(range(1, len(header))), header[1:]


def read_depth_table(path: str | os.PathLike[str]) -> DepthTable:
    """Read a MetaBAT, VAMB or CoverM depth table (the format is recognised from its header)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such depth table; make one with 'kmervae abundance BAM... -o {path}'")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle, delimiter="\t") if row and not row[0].startswith("#")]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the depth table ({err})") from None
    if not rows:
        raise InputError(f"{path}: empty depth table")
    header = [c.strip() for c in rows[0]]
    fmt = _format_of(header, path)
    columns, samples = _sample_columns(fmt, header, path)
    if not samples:
        raise InputError(f"{path}: no sample columns after {header[0]!r}")
    duplicate = next((s for i, s in enumerate(samples) if s in samples[:i]), None)
    if duplicate is not None:
        raise InputError(f"{path}: sample '{duplicate}' appears twice; each sample needs its own name")
    contigs: list[str] = []
    seen: set[str] = set()
    depths = np.empty((len(rows) - 1, len(samples)), dtype=np.float64)
    lengths = np.empty(len(rows) - 1, dtype=np.int64) if fmt == "metabat" else None
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) != len(header):
            raise InputError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)}")
        contig = row[0].strip()
        if contig in seen:
            raise InputError(f"{path}: contig '{contig}' appears twice (line {line})")
        seen.add(contig)
        contigs.append(contig)
        try:
            depths[i] = [float(row[c]) for c in columns]
            if lengths is not None:
                lengths[i] = int(row[1])
        except ValueError:
            raise InputError(f"{path}: line {line}: contig '{contig}' has a value that is not a number") from None
        bad = next((s for s, v in zip(samples, depths[i], strict=True) if not (math.isfinite(v) and v >= 0)), None)
        if bad is not None:
            raise InputError(
                f"{path}: contig '{contig}' has depth {depths[i][samples.index(bad)]} in sample '{bad}'; "
                "depths must be finite and >= 0"
            )
    return DepthTable(str(path), fmt, tuple(contigs), tuple(samples), depths.astype(np.float32), lengths)


def write_table(
    path: str | os.PathLike[str],
    contigs: Sequence[str],
    lengths: np.ndarray,
    samples: Sequence[str],
    means: np.ndarray,
    variances: np.ndarray,
    fmt: str = "metabat",
) -> None:
    """Write a depth table atomically (a temporary file beside `path`, renamed into place when
    complete): MetaBAT's (`means`, `variances`: (contigs, samples)) or, with `fmt="vamb"`, VAMB's
    abundance TSV (`contigname` and each sample's mean: what `vamb bin --abundance_tsv` reads)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: cannot write here ({err.strerror})") from None
    try:
        with os.fdopen(fd, "w", newline="") as out:
            if fmt == "vamb":
                out.write("\t".join(["contigname", *samples]) + "\n")
                for i, contig in enumerate(contigs):
                    out.write("\t".join([contig, *(f"{v:.6g}" for v in means[i])]) + "\n")
            else:
                names = [name for sample in samples for name in (sample, f"{sample}-var")]
                out.write("\t".join([*METABAT_FIXED, *names]) + "\n")
                totals = means.sum(axis=1)
                for i, contig in enumerate(contigs):
                    values = [f"{v:.6g}" for pair in zip(means[i], variances[i], strict=True) for v in pair]
                    out.write("\t".join([contig, str(int(lengths[i])), f"{totals[i]:.6g}", *values]) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AbundanceLookup:
    """The depths of an assembly's records, from a depth table that must cover exactly that assembly.

    `for_records` refuses a record the table lacks, or one whose length differs from the table's
    (a table made for another assembly); `check_complete` refuses table rows that matched no
    record. Each error names the table and the first offending contig.
    """

    def __init__(self, table: DepthTable):
        self.table = table
        self._row = table.index()
        self._used = np.zeros(len(table.contigs), dtype=bool)

    @property
    def samples(self) -> tuple[str, ...]:
        return self.table.samples

    def for_records(self, path: Path, record_ids: Sequence[str], lengths: np.ndarray) -> np.ndarray:
        """(records, samples) float32 depths of a file's records, in order."""
        rows = np.fromiter((self._row.get(rid, -1) for rid in record_ids), dtype=np.int64, count=len(record_ids))
        if (rows < 0).any():
            missing = record_ids[int(np.flatnonzero(rows < 0)[0])]
            raise InputError(
                f"{self.table.source}: no depth for contig '{missing}' of {path}; make the table from "
                "reads mapped to this assembly ('kmervae abundance')"
            )
        if self.table.lengths is not None:
            differ = np.flatnonzero(self.table.lengths[rows] != lengths)
            if len(differ):
                i = int(differ[0])
                raise InputError(
                    f"{self.table.source}: contig '{record_ids[i]}' is {int(self.table.lengths[rows[i]])} bp in "
                    f"the table and {int(lengths[i])} bp in {path}: the table belongs to another assembly"
                )
        self._used[rows] = True
        return self.table.depths[rows]

    def check_complete(self) -> None:
        """Refuse table rows that matched no record of the inputs."""
        if not self._used.all():
            first = self.table.contigs[int(np.flatnonzero(~self._used)[0])]
            raise InputError(
                f"{self.table.source}: contig '{first}' ({int((~self._used).sum())} row(s) in all) is not in "
                "the assembly; give the FASTA the reads were mapped to, or the depth table made from it"
            )
