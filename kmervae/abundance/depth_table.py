"""Depth tables: per-sample mean read depth of every contig, in the formats binners exchange.

- MetaBAT's (`jgi_summarize_bam_contig_depths`, and `kmervae abundance`): `contigName`,
  `contigLen`, `totalAvgDepth`, then for each sample its mean and `<sample>-var`;
- VAMB's abundance TSV: `contigname` and one column per sample;
- CoverM's `coverm contig` output: `Contig` and one `<sample> Mean` column per sample
  (other methods' columns are refused: kmervae learns mean depths);
- strobealign's `--aemb` output (what SemiBin2 and VAMB also read): one file per sample, no
  header, the contig and its mean depth; a folder of them is one table, a sample per file
  (named by the file's name without `.tsv`/`.txt`), a single file a one-sample table.

`read_depth_table` reads any of them into a `DepthTable` and refuses what a binner would
mistrust: NaN, infinite or negative depths, duplicate contigs or sample names, ragged lines.
Each error names the file and the first offending contig or line.

A table of a million contigs and a hundred samples is 10^8 numbers, so both directions go
through Arrow's CSV reader and writer (pyarrow, already the parquet library): the
record-by-record reader below (`_read_rows`) took 65 s to read such a table and the writer
155 s. Arrow's streaming reader is single-threaded, and is used for its blocks: each is kept as
float32 in one array, so the table is held once (`_read_fast`); the writer's pieces run on one
thread per core (`_csv_text`). Numbers in bench/RESULTS.md "Issue 40: many samples". The
record-by-record reader stays the one source of the error messages: a table the fast path
cannot take as it is (a bad value, a ragged line, a comment line) is read again by it, which
names the first problem.
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
AEMB_SUFFIXES = (".tsv", ".txt")
"""Files of a folder of strobealign --aemb outputs; the sample is the name without the suffix."""


@dataclass(frozen=True)
class DepthTable:
    """Mean depth per contig (rows) and sample (columns)."""

    source: str
    format: str  # metabat, vamb, coverm or aemb
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
    if len(header) == 2 and _is_number(header[1]):
        return "aemb"
    raise InputError(
        f"{path}: not a depth table: the header starts {header[:3]}; expected MetaBAT's "
        "(contigName, contigLen, totalAvgDepth, ...), VAMB's (contigname, ...), CoverM's (Contig, ...) "
        "or strobealign --aemb's (contig<TAB>depth lines, no header)"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    if fmt == "aemb":
        return [1], [aemb_sample(path)]
    return list(range(1, len(header))), header[1:]


def aemb_sample(path: Path) -> str:
    """The sample of a strobealign --aemb file: its name without `.tsv` or `.txt`."""
    return next((path.name.removesuffix(s) for s in AEMB_SUFFIXES if path.name.endswith(s)), path.name)


def read_depth_table(path: str | os.PathLike[str]) -> DepthTable:
    """Read a MetaBAT, VAMB, CoverM or strobealign --aemb depth table (the format is recognised
    from its header), or a folder of --aemb files (one sample each)."""
    path = Path(path)
    if path.is_dir():
        return _read_aemb_folder(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such depth table; make one with 'kmervae abundance BAM... -o {path}'")
    header = _header(path)
    fmt = _format_of(header, path)
    columns, samples = _sample_columns(fmt, header, path)
    if not samples:
        raise InputError(f"{path}: no sample columns after {header[0]!r}")
    duplicate = next((s for i, s in enumerate(samples) if s in samples[:i]), None)
    if duplicate is not None:
        raise InputError(f"{path}: sample '{duplicate}' appears twice; each sample needs its own name")
    table = _read_fast(path, fmt, len(header), columns)
    if table is None:
        table = _read_rows(path, fmt, header, columns, samples)
    contigs, depths, lengths = table
    return DepthTable(str(path), fmt, tuple(contigs), tuple(samples), depths, lengths)


def _header(path: Path) -> list[str]:
    """The first line that is not a comment, split at tabs."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            first = next(
                (row for row in csv.reader(handle, delimiter="\t") if row and not row[0].startswith("#")), None
            )
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the depth table ({err})") from None
    if first is None:
        raise InputError(f"{path}: empty depth table")
    return [c.strip() for c in first]


BLOCK_BYTES = 1 << 22
"""Bytes of text the fast reader parses at a time (each block's depths are kept as float32)."""


def _read_fast(path: Path, fmt: str, width: int, columns: list[int]):
    """(contigs, depths, lengths) through Arrow's CSV reader, or None when the table needs the
    record-by-record reader: any value, line or contig it would refuse, or a comment line.

    The table is read a block at a time and each block's depths kept as float32 (parsed as
    float64 first, as the line reader does, so both give the same numbers): about 4 bytes per
    value at the peak instead of the 20 of a whole float64 table and its copies, which at 100
    samples x a million contigs was 1.9 GiB of `featurize`'s 3.2."""
    import pyarrow as pa
    import pyarrow.csv as pv

    names = [f"c{i}" for i in range(width)]
    types = {name: pa.float64() for name in names}
    types["c0"] = pa.string()
    if fmt == "metabat":
        types["c1"] = pa.int64()
    contigs: list[str] = []
    depths, rows, lengths = np.empty((0, len(columns)), dtype=np.float32), 0, []
    try:
        reader = pv.open_csv(
            path,
            read_options=pv.ReadOptions(
                column_names=names, skip_rows=0 if fmt == "aemb" else 1, block_size=BLOCK_BYTES
            ),
            parse_options=pv.ParseOptions(delimiter="\t"),
            convert_options=pv.ConvertOptions(column_types=types, null_values=[], strings_can_be_null=False),
        )
        for batch in reader:
            if rows + batch.num_rows > len(depths):
                depths = _grown(depths, rows, batch.num_rows, path)
            for j, c in enumerate(columns):
                values = batch.column(c).to_numpy()
                if not np.isfinite(values).all() or (values < 0).any():
                    return None
                depths[rows : rows + batch.num_rows, j] = values
            rows += batch.num_rows
            contigs.extend(batch.column(0).to_pylist())
            if fmt == "metabat":
                lengths.append(batch.column(1).to_numpy().astype(np.int64))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError):
        return None
    if not contigs:
        return None
    if any(c.startswith("#") or c != c.strip() for c in contigs) or len(set(contigs)) != len(contigs):
        return None
    return contigs, depths[:rows], np.concatenate(lengths) if fmt == "metabat" else None


def _grown(depths: np.ndarray, rows: int, more: int, path: Path) -> np.ndarray:
    """Room for `more` rows after the first `rows` of `depths`: the first block's rows per byte
    times the file's size, a quarter more, so the table is filled in place instead of joined
    from blocks (which held it twice: 8.3 GiB for 10 M contigs x 100 samples); rows never
    written take no memory. A later block that does not fit grows it by half."""
    if rows == 0:
        capacity = int(more * path.stat().st_size / BLOCK_BYTES * 1.25)
    else:
        capacity = int(len(depths) * 1.5)
    grown = np.empty((max(capacity, rows + more), depths.shape[1]), dtype=np.float32)
    grown[:rows] = depths[:rows]
    return grown


def _read_rows(path: Path, fmt: str, header: list[str], columns: list[int], samples: list[str]):
    """(contigs, depths, lengths) record by record, refusing the first bad line with its number."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.reader(handle, delimiter="\t") if row and not row[0].startswith("#")]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read the depth table ({err})") from None
    body = rows if fmt == "aemb" else rows[1:]
    first_line = 1 if fmt == "aemb" else 2
    if not body:
        raise InputError(f"{path}: no contigs in the depth table")
    contigs: list[str] = []
    seen: set[str] = set()
    depths = np.empty((len(body), len(samples)), dtype=np.float64)
    lengths = np.empty(len(body), dtype=np.int64) if fmt == "metabat" else None
    for i, row in enumerate(body):
        line = i + first_line
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
    return contigs, depths.astype(np.float32), lengths


def _read_aemb_folder(folder: Path) -> DepthTable:
    """A folder of strobealign --aemb files, one sample each (sorted by name), on one set of
    contigs: every file must list the same contigs (in any order); rows follow the first file."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(AEMB_SUFFIXES))
    if not files:
        raise InputError(
            f"{folder}: no depth files in this folder; give strobealign --aemb outputs named SAMPLE.tsv "
            "(one per sample), or a depth table file"
        )
    samples = [aemb_sample(p) for p in files]
    first = read_depth_table(files[0])
    if first.format != "aemb":
        raise InputError(f"{files[0]}: a {first.format} table in a folder of strobealign --aemb files; give it alone")
    row = first.index()
    depths = np.empty((len(first.contigs), len(files)), dtype=np.float32)
    depths[:, 0] = first.depths[:, 0]
    for j, path in enumerate(files[1:], start=1):
        table = read_depth_table(path)
        if table.format != "aemb":
            raise InputError(f"{path}: a {table.format} table in a folder of strobealign --aemb files; give it alone")
        rows = np.fromiter((row.get(c, -1) for c in table.contigs), dtype=np.int64, count=len(table.contigs))
        if (rows < 0).any() or len(rows) != len(row):
            other = next((c for c in table.contigs if c not in row), None)
            what = f"contig '{other}' is not in" if other else f"{len(rows)} contigs, not the {len(row)} of"
            raise InputError(
                f"{path}: {what} {files[0].name}; every sample's reads must be mapped to the same assembly"
            )
        depths[rows, j] = table.depths[:, 0]
    return DepthTable(str(folder), "aemb", first.contigs, tuple(samples), depths, None)


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
    abundance TSV (`contigname` and each sample's mean: what `vamb bin --abundance_tsv` reads).
    Numbers are float32, written in the fewest digits that read back to the same float32."""
    import pyarrow as pa

    path = Path(path)
    means = np.asarray(means, dtype=np.float32)
    columns: dict[str, pa.Array] = {"contig": pa.array(list(contigs), pa.string())}
    if fmt == "vamb":
        header = ["contigname", *samples]
        columns.update({f"m{j}": pa.array(means[:, j]) for j in range(means.shape[1])})
    else:
        header = [*METABAT_FIXED, *(name for sample in samples for name in (sample, f"{sample}-var"))]
        variances = np.asarray(variances, dtype=np.float32)
        columns["length"] = pa.array(np.asarray(lengths, dtype=np.int64))
        columns["total"] = pa.array(means.sum(axis=1, dtype=np.float64).astype(np.float32))
        for j in range(means.shape[1]):
            columns[f"m{j}"], columns[f"v{j}"] = pa.array(means[:, j]), pa.array(variances[:, j])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise OutputError(f"{path}: cannot write here ({err.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(("\t".join(header) + "\n").encode())
            for text in _csv_text(pa.table(columns)):
                out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


WRITE_ROWS = 100_000
"""Rows of a depth table turned into text at a time, one piece per thread."""


def _csv_text(table):
    """The rows of `table` as tab-separated text, in order, a piece of `WRITE_ROWS` rows at a
    time on one thread per core (Arrow's writer releases the GIL: a million contigs x 16 samples
    in MetaBAT's format take 2.2 s on 2 cores instead of 4.1 s). At most two pieces per thread
    wait in memory."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.csv as pv

    options = pv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")

    def text(start: int):
        sink = pa.BufferOutputStream()
        pv.write_csv(table.slice(start, WRITE_ROWS), sink, options)
        return sink.getvalue()

    threads = max(1, len(os.sched_getaffinity(0)))
    starts = range(0, table.num_rows, WRITE_ROWS)
    with ThreadPoolExecutor(threads) as pool:
        for lo in range(0, len(starts), 2 * threads):
            yield from pool.map(text, starts[lo : lo + 2 * threads])


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
            if f"{missing}_1" in self._row:
                raise InputError(
                    f"{self.table.source}: depths of the halves '{missing}_1' and '_2', not of contig '{missing}' "
                    f"of {path}: the table was made for SemiBin2's split contigs; map to the assembly itself"
                )
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
