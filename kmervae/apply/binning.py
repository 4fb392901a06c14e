"""`kmervae bin`: contig embeddings -> genome bins on disk, with their quality when genomes are known.

Clustering and quality are `kmervae.binning.bins` (one definition for the command, `evaluate`,
`val/nc_bins` and the benchmark). This module adds what a user of a binner expects around
them: reading the embeddings, the contigs' lengths and labels, the original sequences, and
writing a bins folder that appears whole or not at all:

- `bins.tsv`: contig_id, bin (`bin_001` ..., largest first; `unbinned` for the rest);
- `bin_summary.tsv`: per bin its contigs, bases and GC, and with labels its main genome,
  purity and recall (in bases);
- `summary.json`: the counts, and with labels the bins at each recall/purity level and per-bin
  numbers;
- with `--fasta`: `fasta/bin_001.fna` ..., the original sequences. A record whose fragments
  (`RECORD:START-END` contigs) all landed in one bin is written whole under its own id; a
  record split across bins (or partly unbinned) is listed in `split_records.tsv` and each
  binned fragment is written to its own bin under the fragment's id: never silently
  assigned to one of them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kmervae.apply.embed import read_ensemble
from kmervae.base.errors import ConfigError, InputError, OutputError
from kmervae.base.feature_contract import fragment_contig_id, fragment_span
from kmervae.base.feature_table import contig_labels
from kmervae.base.metric_keys import (
    BINS_BINNED_BASES,
    BINS_COUNT,
    BINS_DEREPLICATED_NEAR_COMPLETE,
    BINS_EST_MEDIUM,
    BINS_EST_NEAR_COMPLETE,
    BINS_MEDIUM,
    BINS_NEAR_COMPLETE,
)
from kmervae.binning import bins, markers, samples
from kmervae.binning import recluster as reclustering
from kmervae.binning.reports import EstimateReport, QualityReport
from kmervae.binning.samples import SampleSplit
from kmervae.features.fasta import wrap

UNBINNED_NAME = "unbinned"
SUMMARY_JSON = "summary.json"
MARKERS_TSV = "markers.tsv"
FLUSH_BYTES = 64 << 20
"""Sequences buffered per write pass before they are appended to the bin files."""


def bin_names(count: int) -> list[str]:
    """`bin_001` ... zero-padded to the widest number, so the files sort in bin order."""
    width = max(3, len(str(count)))
    return [f"bin_{i + 1:0{width}d}" for i in range(count)]


@dataclass(frozen=True)
class Placement:
    """Where a contig's bases are in the FASTA: a whole record or a fragment [start, end)."""

    record: str
    start: int
    end: int | None  # None: the whole record


@dataclass
class BinResult:
    """What `bin_contigs` wrote and measured."""

    out: Path
    contigs: int
    bins: int
    binned_bases: int
    total_bases: int
    method: str
    min_bin_size: int
    recluster: str = "none"  # how the bins were reclustered by their markers (`recluster.METHODS`)
    quality: QualityReport | None = None  # against the labels, where there are labels
    estimated: EstimateReport | None = None  # by marker genes, where they are known
    markers_written: Path | None = None
    split: SampleSplit | None = None  # --split-by-sample: the sample bins
    samples: dict[str, dict[str, int]] | None = None  # per sample: its bins and near-complete ones
    dereplicated: int | None = None  # genomes with a near-complete bin in any sample (with labels)
    fasta_files: int = 0
    split_records: int = 0
    fasta_records_unused: int = 0
    files: list[Path] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """The counts `kmervae bin --mlflow-run` logs."""
        metrics = {BINS_COUNT: self.bins, BINS_BINNED_BASES: self.binned_bases}
        if self.quality is not None:
            metrics |= {BINS_NEAR_COMPLETE: self.quality.near_complete, BINS_MEDIUM: self.quality.medium}
        if self.estimated is not None:
            metrics |= {BINS_EST_NEAR_COMPLETE: self.estimated.near_complete, BINS_EST_MEDIUM: self.estimated.medium}
        if self.dereplicated is not None:
            metrics[BINS_DEREPLICATED_NEAR_COMPLETE] = self.dereplicated
        return metrics

    def lines(self) -> list[str]:
        """The end-of-run summary."""
        share = self.binned_bases / self.total_bases if self.total_bases else 0.0
        out = [
            f"binned    {self.contigs:,} contigs into {self.bins} bin(s) ({self.method}"
            f"{'' if self.recluster == 'none' else ', reclustered: ' + self.recluster}); "
            f"{share:.1%} of {self.total_bases:,} bases binned",
        ]
        if (q := self.quality) is not None:
            out.append(
                f"quality   {q.near_complete} near-complete bin(s) (recall >= 0.9, purity >= 0.95), "
                f"{q.medium} at recall >= 0.5, purity >= 0.9, of {q.genomes} genome(s)"
            )
        if (e := self.estimated) is not None:
            out.append(
                f"estimated {e.near_complete} near-complete bin(s) (completeness >= 90%, contamination <= 5%), "
                f"{e.medium} at >= 50% / <= 10%, by {e.sets.get('bacteria', 0)} bacterial marker genes; "
                f"{e.not_judged} bin(s) not judged (archaea, phages, plasmids, fragments: see bin_summary.tsv)"
            )
        if self.samples is not None:
            per = ", ".join(f"{s} {c['bins']} ({c.get('near_complete', 0)} nc)" for s, c in self.samples.items())
            out.append(f"samples   {len(self.samples)}, each cluster split by sample: {per}")
        if self.dereplicated is not None:
            out.append(f"genomes   {self.dereplicated} with a near-complete bin in some sample (dereplicated)")
        if self.markers_written is not None:
            out.append(f"markers   {self.markers_written} (pass it as --markers to bin this assembly again sooner)")
        if self.fasta_files:
            out.append(f"fasta     {self.fasta_files} bin file(s) in {self.out / 'fasta'}")
        if self.split_records:
            out.append(
                f"split     {self.split_records} record(s) have fragments in several bins (or unbinned): "
                f"{self.out / 'split_records.tsv'}; each fragment went to its own bin"
            )
        if self.fasta_records_unused:
            out.append(f"fasta     {self.fasta_records_unused} FASTA record(s) had no embedded contig (not written)")
        out.append(f"output    {self.out}")
        return out


def read_labels_tsv(path: Path, ids: np.ndarray) -> np.ndarray:
    """Labels of contigs from a 'record_id<TAB>label' table: a contig's own id, else its record's."""
    from kmervae.features.labels import Labels

    table = Labels.from_tsv(path).table or {}
    out = []
    for cid in ids:
        label = table.get(cid)
        if label is None and (span := fragment_span(cid)) is not None:
            label = table.get(span[0])
        out.append(label)
    labels = np.asarray(out, dtype=object)
    if all(label is None for label in labels):
        raise InputError(f"{path}: labels none of the embedded contigs (e.g. '{ids[0]}'); is it for this assembly?")
    return labels


def place_contigs(
    ids: np.ndarray, fasta: Sequence[Path], lengths: np.ndarray | None
) -> tuple[list[Placement], np.ndarray, int]:
    """Where every contig lies in the FASTA files (a first pass over their headers and lengths),
    its length there, and how many records hold no contig. Refuses ids the FASTA lacks and
    fragments beyond their record's end, before anything is written."""
    from kmervae.features.fasta import FastaReader

    record_length: dict[str, int] = {}
    for path in fasta:
        for record in FastaReader(path):
            if record.id in record_length:
                raise InputError(f"{path}: record '{record.id}' appears twice in the --fasta files")
            record_length[record.id] = len(record.sequence)
    placements, sizes, missing = [], [], []
    for i, cid in enumerate(ids):
        if cid in record_length:
            placements.append(Placement(cid, 0, None))
            size = record_length[cid]
        elif (span := fragment_span(cid)) is not None and span[0] in record_length:
            record, start, end = span
            if end > record_length[record] or start >= end:
                raise InputError(
                    f"contig '{cid}': bases {start + 1}-{end} lie beyond record '{record}' "
                    f"({record_length[record]:,} bases) in --fasta; give the FASTA the features were made from"
                )
            placements.append(Placement(record, start, end))
            size = end - start
        else:
            missing.append(cid)
            continue
        sizes.append(size)
        if lengths is not None and size != lengths[i]:
            raise InputError(
                f"contig '{cid}': {lengths[i]:,} bases in the embeddings but {size:,} in --fasta: "
                "the embeddings come from another assembly; give the FASTA the features were made from"
            )
    if missing:
        raise InputError(
            f"--fasta: {len(missing):,} of the {len(ids):,} embedded contigs are not in {', '.join(map(str, fasta))} "
            f"(e.g. '{missing[0]}'); give the FASTA file(s) the features were made from"
        )
    used = {p.record for p in placements}
    return placements, np.asarray(sizes, dtype=np.int64), sum(1 for record in record_length if record not in used)


def write_fasta(
    fasta: Sequence[Path],
    placements: list[Placement],
    codes: np.ndarray,
    names: list[str],
    folder: Path,
    progress: bool | None,
) -> tuple[int, list[tuple[str, list[tuple[str, int]]]]]:
    """One FASTA per bin; returns the files written and the records split across bins."""
    from tqdm import tqdm

    from kmervae.features.fasta import FastaReader

    by_record: dict[str, list[int]] = defaultdict(list)
    for i, placement in enumerate(placements):
        by_record[placement.record].append(i)
    folder.mkdir()
    split: list[tuple[str, list[tuple[str, int]]]] = []
    buffered: dict[int, list[bytes]] = defaultdict(list)
    size = 0
    written: set[int] = set()

    def flush() -> None:
        for code, parts in buffered.items():
            with open(folder / f"{names[code]}.fna", "ab") as handle:
                handle.writelines(parts)
            written.add(code)
        buffered.clear()

    total = sum(path.stat().st_size for path in fasta)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc="bin fasta", disable=progress is False, file=sys.stderr
    ) as bar:
        for path in fasta:
            reader = FastaReader(path)
            seen = 0
            for record in reader:
                entries, bases_per_bin = _record_entries(record, by_record.get(record.id, []), placements, codes, names)
                if bases_per_bin is not None:
                    split.append((record.id, bases_per_bin))
                for code, parts in entries.items():
                    for name, sequence in parts:
                        text = b">" + name.encode() + b"\n" + wrap(sequence.tobytes())
                        buffered[code].append(text)
                        size += len(text)
                if size > FLUSH_BYTES:
                    flush()
                    size = 0
                bar.update(reader.raw_bytes_read - seen)
                seen = reader.raw_bytes_read
    flush()
    return len(written), split


def _record_entries(record, members: list[int], placements: list[Placement], codes: np.ndarray, names: list[str]):
    """What one FASTA record puts in each bin code: the whole record under its own id when all
    its embedded contigs went to one bin, else each fragment under its contig id; and, for a
    record split across bins (or partly unbinned), its bases per bin name (else None)."""
    targets = {int(codes[i]) for i in members}
    bases_per_bin = None
    if len(targets) > 1:  # fragments in several bins, or partly unbinned
        per_bin: dict[str, int] = defaultdict(int)
        for i in members:
            per_bin[names[codes[i]] if codes[i] >= 0 else UNBINNED_NAME] += placements[i].end - placements[i].start
        bases_per_bin = sorted(per_bin.items())
    entries = {}
    for code in targets - {bins.UNBINNED}:
        if len(targets) == 1:
            entries[code] = [(record.id, record.sequence)]
        else:
            entries[code] = [
                (
                    fragment_contig_id(record.id, placements[i].start, placements[i].end),
                    record.sequence[placements[i].start : placements[i].end],
                )
                for i in members
                if codes[i] == code
            ]
    return entries, bases_per_bin


def contig_markers(fasta: Sequence[Path], ids: np.ndarray, placements: list[Placement], log) -> markers.MarkerTable:
    """Marker genes of the embedded contigs, cut from the FASTA where `place_contigs` found them."""
    from kmervae.binning.marker_search import find_markers
    from kmervae.features.fasta import FastaReader

    by_record: dict[str, list[int]] = defaultdict(list)
    for i, placement in enumerate(placements):
        by_record[placement.record].append(i)

    def contigs():
        for path in fasta:
            for record in FastaReader(path):
                for i in by_record.get(record.id, ()):
                    p = placements[i]
                    yield str(ids[i]), record.sequence[p.start : p.end].tobytes()

    log("finding marker genes (pyrodigal, pyhmmer) to estimate completeness and contamination")
    return find_markers(contigs(), log=log)


DEFAULT_RECLUSTER = "unmarked"
"""`kmervae bin`'s reclustering where the contigs' marker genes are known (`recluster.METHODS`)."""


def bin_contigs(
    embeddings: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    fasta: Sequence[Path] = (),
    labels_tsv: Path | None = None,
    labels_from_features: Path | None = None,
    method: str = bins.DEFAULT_METHOD,
    min_bin_size: int = bins.DEFAULT_MIN_BIN_SIZE,
    resolution: float = bins.LEIDEN_RESOLUTION,
    seed: int = 0,
    markers_tsv: Path | None = None,
    find_markers: bool = True,
    recluster: str | None = None,
    split_by_sample: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> BinResult:
    """Bin the embedded contigs into `out` (written whole, or not at all). Several embedding files
    of the same contigs bin as one ensemble (`embed.read_ensemble`). Bins are judged by the
    contigs' marker genes (`marker_table`) and improved by them (`recluster_method`: by default
    `unmarked` where there are markers; bench/RESULTS.md "Issue 38, lever 6"). `split_by_sample`:
    the separator after each contig's sample; every cluster is then split by sample (`samples`)."""
    started = time.perf_counter()

    def done(what: str) -> None:
        log(f"{what} ({time.perf_counter() - started:.1f} s)")

    out, fasta = Path(out), [Path(p) for p in fasta]
    _check_settings(out, method, min_bin_size, resolution, overwrite, recluster)
    paths = [embeddings] if isinstance(embeddings, (str, Path)) else list(embeddings)
    contigs = read_contigs(paths, fasta, labels_tsv, labels_from_features)
    ids, lengths, labels = contigs.ids, contigs.lengths, contigs.labels
    table, found = marker_table(contigs, fasta, markers_tsv, find_markers, log, done)
    recluster = recluster_method(recluster, table)
    done(f"read {len(ids):,} embedded contigs ({int(lengths.sum()):,} bases); clustering ({method})")
    present = table.presence(ids) if table is not None else None
    codes = reclustering.partition(
        contigs.vectors, lengths, present, recluster, cluster_method=method, min_bin_size=min_bin_size,
        resolution=resolution, seed=seed,
    )  # fmt: skip
    names = bin_names(int(codes.max()) + 1 if (codes >= 0).any() else 0)
    split = None
    if split_by_sample is not None:
        split = samples.split_by_sample(ids, codes, names, lengths, split_by_sample, min_bin_size)
        codes, names = split.codes, split.names
        labels = samples.sample_labels(labels, split) if labels is not None else None
    done(f"clustered into {len(names)} bin(s) of >= {min_bin_size:,} bases" + (
        f" (reclustered: {recluster})" if recluster != "none" else ""
    ))  # fmt: skip
    result = BinResult(
        out=out,
        contigs=len(ids),
        bins=len(names),
        binned_bases=int(lengths[codes >= 0].sum()),
        total_bases=int(lengths.sum()),
        method=method,
        min_bin_size=min_bin_size,
        recluster=recluster,
        markers_written=out / MARKERS_TSV if found is not None else None,
        fasta_records_unused=contigs.unused_records,
    )
    truth = estimates = None
    if labels is not None and (labelled := int(sum(label is not None for label in labels))):
        truth = bins.bin_quality(codes, labels, lengths)
        result.quality = QualityReport.of(truth, names, labelled)
    if present is not None:
        estimates = markers.estimate_bins(codes, present)
        result.estimated = EstimateReport.of(estimates, names, table.sets)
    if split is not None:
        result.split = split
        result.samples, result.dereplicated = samples.sample_counts(split, truth, estimates)
    _write_folder(out, ids, codes, names, lengths, contigs.gc, result, fasta, contigs.placements, progress, done, found)
    result.files = sorted(out.rglob("*.tsv")) + sorted(out.glob("*.json"))
    return result


def recluster_method(recluster: str | None, table: markers.MarkerTable | None) -> str:
    """The reclustering to run (a method of `recluster.METHODS`): the one asked for, else
    `DEFAULT_RECLUSTER` where markers are known (it never cost a near-complete bin on the
    benchmark's sets, and gained up to one per set), else `none`."""
    if recluster is None:
        return DEFAULT_RECLUSTER if table is not None else "none"
    if recluster != "none" and table is None:
        raise ConfigError(
            f"--recluster {recluster} splits bins by their marker genes: give --markers TSV ('kmervae markers'), "
            "or --fasta to find them"
        )
    return recluster


@dataclass
class BinInput:
    """The contigs `kmervae bin` clusters: their embeddings, lengths, labels and GC, and where
    each lies in the FASTA files (when given)."""

    ids: np.ndarray
    vectors: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray | None
    gc: np.ndarray | None
    placements: list[Placement]
    unused_records: int  # FASTA records that hold no embedded contig


def read_contigs(
    paths: list[str | Path], fasta: list[Path], labels_tsv: Path | None, labels_from_features: Path | None
) -> BinInput:
    """Read the embeddings (one file, or an ensemble of the same contigs embedded by models trained
    with other seeds or settings: a contig's neighbours are those the models agree on; bench/RESULTS.md
    "Issue 38": no steadier than one seed on the one-sample sets), place the contigs in the FASTA and
    find their labels; refuse what cannot be binned before anything is written."""
    ids, vectors, labels, lengths, gc = read_ensemble(paths)
    embeddings = paths[0]  # what the messages name
    if len(ids) == 0:
        raise InputError(f"{embeddings}: holds no contigs")
    if len(set(ids)) != len(ids):
        raise InputError(f"{embeddings}: contig ids repeat; embed one feature dataset per file")
    placements, sizes, unused = place_contigs(ids, fasta, lengths) if fasta else ([], None, 0)
    if lengths is None:
        if sizes is None:
            raise InputError(
                f"{embeddings}: has no 'length' column (written by an older kmervae embed); "
                "run 'kmervae embed' again, or give --fasta"
            )
        lengths = sizes
    if labels_tsv is not None:
        labels = read_labels_tsv(labels_tsv, ids)
    elif labels_from_features is not None:
        labels = contig_labels(labels_from_features, ids, every=True)[0]
    return BinInput(ids, vectors, lengths, labels, gc, placements, unused)


def marker_table(
    contigs: BinInput, fasta: list[Path], markers_tsv: Path | None, find: bool, log, done
) -> tuple[markers.MarkerTable | None, markers.MarkerTable | None]:
    """The contigs' marker genes (and those found here, to be written beside the bins as
    markers.tsv): read from `markers_tsv`, else found in the FASTA when `find` and the markers
    extra is installed."""
    if markers_tsv is not None:
        table = markers.read_markers(markers_tsv)
        table.check_contigs(contigs.ids, str(markers_tsv))
        return table, None
    if not (fasta and find):
        return None, None
    from kmervae.binning.marker_search import INSTALL_HINT, markers_available

    if not markers_available():
        log(f"no completeness/contamination estimates: {INSTALL_HINT}")
        return None, None
    found = contig_markers(fasta, contigs.ids, contigs.placements, log)
    done(f"found {len(found.contig):,} marker hits on {found.contigs:,} contigs")
    return found, found


def _check_settings(
    out: Path, method: str, min_bin_size: int, resolution: float, overwrite: bool, recluster: str | None
) -> None:
    """Refuse bad flags and an existing output before anything is read."""
    if recluster is not None and recluster not in reclustering.METHODS:
        raise ConfigError(f"--recluster {recluster!r}: expected one of {', '.join(reclustering.METHODS)}")
    if method not in bins.METHODS:
        raise ConfigError(f"--method {method!r}: expected one of {', '.join(bins.METHODS)}")
    if not resolution > 0:
        raise ConfigError(f"--resolution must be > 0, got {resolution}")
    if min_bin_size < 0:
        raise ConfigError(f"--min-bin-size must be >= 0 bases, got {min_bin_size}")
    if out.exists() and not (overwrite and (out / "bins.tsv").is_file()):
        hint = "pass --overwrite" if out.is_dir() and (out / "bins.tsv").is_file() else "choose another -o"
        raise OutputError(f"{out}: exists; {hint}")


def _write_folder(
    out: Path, ids, codes, names, lengths, gc, result: BinResult, fasta, placements, progress, done, found
) -> None:
    """Write the tables (and with `fasta` one FASTA file per bin) into a temporary folder beside
    `out` and rename it into place: the output is whole or absent."""
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_tables(tmp, ids, codes, names, lengths, gc, result)
        if found is not None:
            markers.write_markers(found, tmp / MARKERS_TSV)
        if fasta:
            result.fasta_files, split = write_fasta(fasta, placements, codes, names, tmp / "fasta", progress)
            result.split_records = len(split)
            if split:
                with open(tmp / "split_records.tsv", "w", newline="") as handle:
                    writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
                    writer.writerow(["record", "bin", "bases"])
                    for record, parts in split:
                        writer.writerows([record, name, bases] for name, bases in parts)
            done(f"wrote {result.fasta_files} bin FASTA file(s)")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_tables(folder: Path, ids, codes, names, lengths, gc, result: BinResult) -> None:
    quality, estimated = result.quality, result.estimated
    split = result.split
    with open(folder / "bins.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        if split is None:
            writer.writerow(["contig_id", "bin"])
            writer.writerows((cid, names[c] if c >= 0 else UNBINNED_NAME) for cid, c in zip(ids, codes, strict=True))
        else:  # each sample's bins: the bin, the cluster it was split from and the sample
            writer.writerow(["contig_id", "bin", "cluster", "sample"])
            for cid, c, sample in zip(ids, codes, split.contig_samples, strict=True):
                binned = c >= 0
                writer.writerow(
                    [cid, names[c] if binned else UNBINNED_NAME, split.cluster[c] if binned else UNBINNED_NAME, sample]
                )
    with open(folder / "bin_summary.tsv", "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        header = ["bin", "contigs", "bases", "gc"] + (["genome", "purity", "recall"] if quality else [])
        header += ["completeness", "contamination", "marker_set", "note"] if estimated else []
        writer.writerow(header)
        for i, name in enumerate(names):
            member = codes == i
            bases = int(lengths[member].sum())
            row = [name, int(member.sum()), bases]
            row.append(f"{float((gc[member] * lengths[member]).sum() / bases):.4f}" if gc is not None else "NA")
            if quality:
                b = quality.bins[name]
                row += [b.genome or "NA", f"{b.purity:.4f}", f"{b.recall:.4f}"]
            if estimated:
                e = estimated.bins[name]
                row += [f"{e.completeness:.4f}", f"{e.contamination:.4f}", e.marker_set, e.note or "judged"]
            writer.writerow(row)
    summary = {
        "contigs": result.contigs,
        "bins": result.bins,
        "binned_bases": result.binned_bases,
        "total_bases": result.total_bases,
        "method": result.method,
        "min_bin_size": result.min_bin_size,
        "recluster": result.recluster,
        "quality": quality.to_json() if quality else None,
        "estimated": estimated.to_json() if estimated else None,
    }
    if split is not None:
        summary["split_by_sample"] = {
            "separator": split.separator,
            "samples": result.samples,
            "dereplicated_near_complete": result.dereplicated,
        }
    (folder / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
