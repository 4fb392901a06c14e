"""Single-copy marker genes of contigs, and each bin's completeness and contamination estimated
from them: how users judge bins of a real assembly, which has no truth table.

    table = read_markers("markers.tsv")            # written by `kmervae markers` (kmervae.binning.marker_search)
    table.check_contigs(ids, "markers.tsv")        # refuses a table made from another assembly
    est = estimate_bins(codes, table.presence(ids))
    est.near_complete, est.completeness[0], est.judged[0]

A marker set is genes found once in nearly every genome of a domain (CheckM's idea): the share of
the set a bin holds estimates its completeness, and extra copies its contamination
(completeness = unique markers / set size; contamination = extra copies / set size, as CheckM,
VAMB's `parsemarkers` and SemiBin count them). A contig counts each marker once: several copies
on one contig are one genome's paralogs or a gene split by the assembler, not a second genome
(VAMB's reasoning), so `copies` is kept in the table but does not count as contamination. A hit
that aligns to under 40% of its profile (a gene cut by a contig's end) shows the marker is there
but not that a second copy is: it counts for completeness, and only full-length hits count as
extra copies (`copies` = 0 for a contig with partial hits only; bench/RESULTS.md "Marker genes":
SemiBin2 drops partial hits, which cost 0.01 of completeness on 4 kb contigs; keeping none of
them as copies took pure genomes' contamination from up to 0.05 to up to 0.02-0.05).

Two sets ship (kmervae/binning/marker_sets/README.md): 107 bacterial genes (SemiBin's and VAMB's)
and 131 archaeal Pfam domains (miComplete's). A bin is judged with the bacterial set. A bin that
holds clearly more of the archaeal set than of the bacterial one is an archaeon, and a bin with
under MIN_JUDGED of either set holds too few markers to say anything (a phage, a plasmid, a
genome fragment): both are reported as not judged, never counted as near-complete or
contaminated (bench/RESULTS.md "Marker genes" measures why: the archaeal domains are too often
multi-copy to estimate contamination).

The table on disk (`write_markers`, `read_markers`): TSV rows `contig`, `set`, `marker`,
`copies` for every contig with a marker, under comment lines that name the format, each set
with its size, and the contigs scanned (count and a SHA-256 of their sorted ids, which bins and
features are checked against).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kmervae.base.errors import ConfigError, InputError, InputNotFoundError
from kmervae.base.feature_contract import id_hash

FORMAT_LINE = "# kmervae markers 1"
DATASET_MARKERS = "markers.tsv"
"""A feature dataset's marker table, in its folder (`featurize --markers`, or `kmervae markers -o`)."""
COLUMNS = ("contig", "set", "marker", "copies")
BACTERIA, ARCHAEA = "bacteria", "archaea"
NOT_JUDGED = "none"

NEAR_COMPLETE = (0.9, 0.05)
"""(completeness >=, contamination <=) of an estimated near-complete bin (CheckM/MIMAG high quality)."""
MEDIUM = (0.5, 0.10)
"""(completeness >=, contamination <=) of an estimated medium-quality bin (MIMAG)."""
MIN_JUDGED = 0.2
"""Least share of a set a bin must hold to be judged: below it a bin is a phage, a plasmid or a
genome fragment whose few markers say little (a 391 kb fragment held 0.17 of the bacterial set)."""
ARCHAEA_RATIO = 1.5
"""A bin is an archaeon when it holds this many times the share of the archaeal set as of the
bacterial one: complete bacteria hold 0.39-0.50 of the archaeal set against 0.90-0.95 of theirs,
an archaeon 0.97 of the archaeal set against 0.32 (the ten shared genomes, bench/RESULTS.md)."""


def ids_digest(ids: Sequence[str]) -> str:
    """SHA-256 of the sorted contig ids: the same set of contigs in any order gives the same digest."""
    h = hashlib.sha256()
    for cid in sorted(map(str, ids)):
        h.update(cid.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class MarkerTable:
    """Marker hits of an assembly's contigs: which contig holds which marker of which set, how often."""

    sets: dict[str, int]  # set name -> distinct markers in it (the completeness denominator)
    contigs: int  # contigs scanned (with or without a marker)
    digest: str  # ids_digest of the contigs scanned
    contig: np.ndarray  # (hits,) str: the contig of each hit
    set_name: np.ndarray  # (hits,) str
    marker: np.ndarray  # (hits,) str: marker name, paired profiles merged
    copies: np.ndarray  # (hits,) int64 >= 0: full-length genes on the contig that carry the marker

    def __post_init__(self) -> None:
        n = len(self.contig)
        assert len(self.set_name) == len(self.marker) == len(self.copies) == n
        unknown = sorted(set(self.set_name.tolist()) - set(self.sets))
        if unknown:
            raise InputError(f"marker set(s) {', '.join(unknown)} are used by hits but not declared in the header")

    def check_contigs(self, ids: Sequence[str], where: str) -> None:
        """Refuse contigs other than those the table was made from (another assembly, or other
        --fragment-length / --min-length settings)."""
        if len(ids) != self.contigs or ids_digest(ids) != self.digest:
            named = set(map(str, ids))
            stray = next((c for c in self.contig.tolist() if c not in named), None)
            example = f" (e.g. '{stray}' is not among them)" if stray else ""
            raise InputError(
                f"{where}: made from {self.contigs:,} contigs, but here are {len(ids):,} other contigs{example}: "
                "it describes another assembly or other --fragment-length/--min-length settings; run "
                "'kmervae markers' on the FASTA these contigs come from, with the settings featurize used"
            )

    def restricted_to(self, ids: Sequence[str]) -> MarkerTable:
        """The table of `ids` alone (contigs it scanned; the hits of the others dropped)."""
        named = set(map(str, ids))
        keep = np.array([c in named for c in self.contig.tolist()], dtype=bool)
        return MarkerTable(
            dict(self.sets), len(named), ids_digest(named), self.contig[keep], self.set_name[keep],
            self.marker[keep], self.copies[keep],
        )  # fmt: skip

    def keyed(self) -> KeyedMarkers:
        """The hits keyed by contig-id hash (`feature_contract.id_hash`), one column per (set, marker)."""
        pairs = list(zip(self.set_name.tolist(), self.marker.tolist(), strict=True))
        columns = sorted(set(pairs))
        index = {pair: i for i, pair in enumerate(columns)}
        return KeyedMarkers(
            keys=np.array([id_hash(c) for c in self.contig.tolist()], dtype=np.int64),
            cols=np.array([index[p] for p in pairs], dtype=np.int64),
            full=self.copies >= 1,
            column_set=[name for name, _ in columns],
            sets=dict(self.sets),
        )

    def presence(self, ids: Sequence[str]) -> ContigMarkers:
        """The markers of each of `ids` (rows in that order), each counted once per contig."""
        return self.keyed().presence(np.array([id_hash(str(c)) for c in ids], dtype=np.int64))


@dataclass(frozen=True)
class KeyedMarkers:
    """Marker hits keyed by the hash of their contig's id: what validation rows carry
    (`data.link_keys`), so a training run scores its embeddings without the ids themselves."""

    keys: np.ndarray  # (hits,) int64 id_hash of the hit's contig
    cols: np.ndarray  # (hits,) int64 column: one per (set, marker)
    full: np.ndarray  # (hits,) bool: a full-length gene (copies >= 1), not only a partial one
    column_set: list[str]  # set of each column
    sets: dict[str, int]

    def presence(self, keys: np.ndarray) -> ContigMarkers:
        """The markers of contigs with these id hashes (rows in that order; unknown keys hold none)."""
        keys = np.asarray(keys, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        ranked = keys[order]
        pos = np.searchsorted(ranked, self.keys).clip(max=max(len(ranked) - 1, 0))
        found = (ranked[pos] == self.keys) if len(ranked) else np.zeros(len(self.keys), dtype=bool)
        return ContigMarkers(
            len(keys), order[pos[found]], self.cols[found], self.full[found], self.column_set, self.sets
        )


@dataclass(frozen=True)
class ContigMarkers:
    """Marker presence of n contigs, as (row, column) pairs: contig `rows[i]` holds marker `cols[i]`."""

    n: int
    rows: np.ndarray  # (hits,) int64 contig row
    cols: np.ndarray  # (hits,) int64 marker column
    full: np.ndarray  # (hits,) bool: a full-length gene, which may count as an extra copy
    column_set: list[str]  # set of each column
    sets: dict[str, int]

    def subset(self, mask: np.ndarray) -> ContigMarkers:
        """The markers of the contigs where `mask` is true, rows renumbered in order."""
        new_row = np.cumsum(mask) - 1
        keep = mask[self.rows]
        return ContigMarkers(
            int(mask.sum()), new_row[self.rows[keep]], self.cols[keep], self.full[keep], self.column_set, self.sets
        )

    def counts(self, codes: np.ndarray, full_only: bool = False) -> np.ndarray:
        """(bins, markers) contigs of each bin holding each marker (with `full_only`, as a
        full-length gene); codes < 0: in no bin."""
        codes = np.asarray(codes, dtype=np.int64)
        bins = int(codes.max()) + 1 if len(codes) and codes.max() >= 0 else 0
        table = np.zeros((bins, len(self.column_set)), dtype=np.int64)
        use = (codes[self.rows] >= 0) & (self.full if full_only else True)
        np.add.at(table, (codes[self.rows[use]], self.cols[use]), 1)
        return table


@dataclass(frozen=True)
class BinEstimates:
    """Per bin (index = bin code): estimated completeness and contamination, the set that judged
    it, and whether it can be judged at all."""

    completeness: np.ndarray  # (bins,) of the bin's own set (`domain`)
    contamination: np.ndarray  # (bins,)
    domain: np.ndarray  # (bins,) str: bacteria, archaea, or none (too few markers)
    judged: np.ndarray  # (bins,) bool: bacterial bins with at least MIN_JUDGED of the set

    def passes(self, completeness: float, contamination: float) -> np.ndarray:
        """(bins,) bool: judged bins at or above `completeness` and at or below `contamination`."""
        return self.judged & (self.completeness >= completeness) & (self.contamination <= contamination + 1e-9)

    def count(self, completeness: float, contamination: float) -> int:
        """Judged bins at or above `completeness` and at or below `contamination`."""
        return int(self.passes(completeness, contamination).sum())

    @property
    def near_complete(self) -> int:
        return self.count(*NEAR_COMPLETE)

    @property
    def medium(self) -> int:
        return self.count(*MEDIUM)

    @property
    def not_judged(self) -> int:
        return int((~self.judged).sum())

    def score(self) -> float:
        """`val/est_nc_bins`: the estimated near-complete bins plus a tie-breaker in [0, 1): the
        mean of (completeness - 5 x contamination), clipped to [0, 1], over the judged bins of at
        least medium quality, shrunk by one more bin so it never reaches 1. The whole part is the
        count; between two equal counts the one whose good bins are more complete and cleaner wins."""
        good = self.judged & (self.completeness >= MEDIUM[0]) & (self.contamination <= MEDIUM[1] + 1e-9)
        quality = np.clip(self.completeness[good] - 5.0 * self.contamination[good], 0.0, 1.0)
        return float(self.near_complete + quality.sum() / (good.sum() + 1))

    def note(self, i: int) -> str:
        """Why bin i is not judged (empty when it is)."""
        if self.judged[i]:
            return ""
        if self.domain[i] == ARCHAEA:
            return "archaeon: the archaeal domains are too often multi-copy to estimate contamination"
        return "too few markers: a phage, plasmid or genome fragment"


def estimate_bins(codes: np.ndarray, markers: ContigMarkers) -> BinEstimates:
    """Completeness and contamination of every bin of `codes` (UNBINNED < 0) from its contigs' markers."""
    held, full = markers.counts(codes), markers.counts(codes, full_only=True)
    column_set = np.asarray(markers.column_set, dtype=object)
    shares = {}
    for name, size in markers.sets.items():
        columns = column_set == name if len(column_set) else np.zeros(0, dtype=bool)
        present = (held[:, columns] > 0).sum(axis=1)
        extra = np.clip(full[:, columns] - 1, 0, None).sum(axis=1)
        shares[name] = (present / size, extra / size)
    zeros = np.zeros(len(held))
    bact_comp, bact_cont = shares.get(BACTERIA, (zeros, zeros))
    arch_comp, arch_cont = shares.get(ARCHAEA, (zeros, zeros))
    archaeal = (arch_comp >= MIN_JUDGED) & (arch_comp >= ARCHAEA_RATIO * bact_comp)
    bacterial = ~archaeal & (bact_comp >= MIN_JUDGED)
    domain = np.where(archaeal, ARCHAEA, np.where(bacterial, BACTERIA, NOT_JUDGED)).astype(object)
    completeness = np.where(archaeal, arch_comp, bact_comp)
    contamination = np.where(archaeal, arch_cont, bact_cont)
    return BinEstimates(completeness, contamination, domain, bacterial)


def write_markers(table: MarkerTable, path: str | Path) -> None:
    """Write `table` as TSV (a temporary file renamed into place: whole or absent)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "w") as out:
            out.write(FORMAT_LINE + "\n")
            out.write("# sets " + " ".join(f"{name}={size}" for name, size in table.sets.items()) + "\n")
            out.write(f"# contigs {table.contigs} sha256 {table.digest}\n")
            out.write("\t".join(COLUMNS) + "\n")
            for row in zip(table.contig, table.set_name, table.marker, table.copies, strict=True):
                out.write("\t".join(map(str, row)) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_markers(path: str | Path) -> MarkerTable:
    """Read a table `write_markers` wrote, refusing anything else with the line at fault."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such markers table; make one with 'kmervae markers ASSEMBLY -o {path}'")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot be read as a markers table ({err})") from None
    if len(lines) < 4 or lines[0] != FORMAT_LINE or not lines[1].startswith("# sets "):
        raise InputError(
            f"{path}: not a kmervae markers table (it must start with '{FORMAT_LINE}'); make one with 'kmervae markers'"
        )
    try:
        sets = {name: int(size) for name, size in (part.split("=") for part in lines[1][len("# sets ") :].split())}
        _, _, contigs, _, digest = lines[2].split()
        contigs = int(contigs)
    except ValueError:
        raise InputError(f"{path}: line 2-3: malformed header; make the table again with 'kmervae markers'") from None
    if lines[3].split("\t") != list(COLUMNS):
        raise InputError(f"{path}: line 4: expected the columns {', '.join(COLUMNS)}")
    rows = []
    for number, line in enumerate(lines[4:], start=5):
        fields = line.split("\t")
        if len(fields) != 4 or not fields[3].isdigit():
            raise InputError(f"{path}: line {number}: expected contig, set, marker and copies >= 0, got {line!r}")
        rows.append(fields)
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
    return MarkerTable(
        sets=sets,
        contigs=contigs,
        digest=digest,
        contig=np.asarray(columns[0], dtype=object),
        set_name=np.asarray(columns[1], dtype=object),
        marker=np.asarray(columns[2], dtype=object),
        copies=np.asarray([int(c) for c in columns[3]], dtype=np.int64),
    )


def keep_with_dataset(table: MarkerTable, data_path: str | os.PathLike[str]) -> Path:
    """Write `table` into a feature dataset's folder (`DATASET_MARKERS`), for the contigs the
    dataset kept: featurize also skips contigs without a 7-mer of unambiguous bases."""
    from kmervae.base.feature_table import dataset_files, read_keys

    path = Path(data_path) / DATASET_MARKERS
    write_markers(table.restricted_to(read_keys(dataset_files(data_path))[0]), path)
    return path


def dataset_markers(data_path: str | os.PathLike[str]) -> MarkerTable:
    """The marker table kept in a feature dataset's folder, checked against the dataset's contigs."""
    from kmervae.base.feature_table import dataset_files, read_keys

    files = dataset_files(data_path)
    folder = Path(data_path) if Path(data_path).is_dir() else Path(data_path).parent
    path = folder / DATASET_MARKERS
    if not path.is_file():
        raise ConfigError(
            f"val/est_nc_bins (train.est_nc_bins) judges bins by marker genes, and {data_path} has none ({path}); "
            f"find them with 'kmervae markers ASSEMBLY -o {path}' (featurize's --fragment-length and "
            "--min-length), or featurize with --markers"
        )
    table = read_markers(path)
    ids, _ = read_keys(files)
    table.check_contigs(ids, str(path))
    return table


def run_markers(data_path: str | os.PathLike[str], config) -> KeyedMarkers | None:
    """What a training run scores val/est_nc_bins with: the dataset's markers when the run asks for
    them (train.est_nc_bins), refused before training when the dataset has none; else None."""
    return dataset_markers(data_path).keyed() if config.train.est_nc_bins else None
