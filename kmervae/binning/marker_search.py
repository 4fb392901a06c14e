"""Single-copy marker genes of an assembly's contigs: genes called by pyrodigal, searched with
pyhmmer against the shipped marker sets at their trusted cutoffs (what VAMB 5 and SemiBin2 do).

    table = find_markers(contigs_of_fasta(["assembly.fna"], fragment_length=None, min_length=1000))
    write_markers(table, "markers.tsv")        # kmervae.binning.markers: the table and what it scores

Both libraries run in this process on every core: pyrodigal releases the GIL, so a thread pool
calls genes on all cores (27.9 Mbp of 5 kb contigs: 33 s on one core, 17 s on two), and
pyhmmer's `hmmsearch` spreads the search over `cpus` threads. Contigs go through in blocks of
about BLOCK_BASES, so memory stays flat on any assembly. Genes are called in metagenomic mode
(Prodigal's `-p meta`: each contig alone, no training genome).

pyrodigal is GPL-3 and so an optional extra (`pip install 'kmervae[markers]'`); pyhmmer is MIT.
Prodigal as a Debian program would need a FASTA written and parsed back per block; the binding
calls genes on the bases we hold already.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kmervae.base.errors import ConfigError, InputError, InputNotFoundError, KmervaeError
from kmervae.binning.markers import MarkerTable, ids_digest

SETS_DIR = Path(__file__).with_name("marker_sets")
MARKER_SETS = {"bacteria": SETS_DIR / "bacteria.hmm.gz", "archaea": SETS_DIR / "archaea.hmm.gz"}
"""The shipped sets (licences and sources: marker_sets/README.md)."""
PAIRED_PROFILES = {
    "TIGR00388": "TIGR00389",
    "TIGR00471": "TIGR00472",
    "TIGR00408": "TIGR00409",
    "TIGR02386": "TIGR02387",
}
"""TIGRFAM profiles of one gene split in two (the glycyl-tRNA synthetase's two subunits and the like):
counted as one marker, as SemiBin and VAMB do, so the bacterial set has 107 markers from 111 profiles."""
MIN_HMM_COVERAGE = 0.4
"""Least share of a profile a hit's best domain must align to for a full-length copy (SemiBin2's
rule, which drops shorter hits): a gene that an assembly or a 5 kb cut split in two is one copy.
Shorter hits are kept as partial (copies 0): they show the marker, not a second copy
(`kmervae.binning.markers`; bench/RESULTS.md "Marker genes")."""
BLOCK_BASES = 20_000_000
"""Bases of contigs called and searched together: large enough to keep every core busy in both
stages, small enough that the proteins of one block take tens of MB."""
INSTALL_HINT = "install the markers extra: pip install -c constraints.txt -e '.[markers]' (pyrodigal, pyhmmer)"


@dataclass
class MarkerSummary:
    """What `find_markers` scanned and found."""

    contigs: int = 0
    bases: int = 0
    genes: int = 0
    hits: int = 0
    skipped_short: int = 0  # contigs under min_length, not scanned (featurize skips them too)
    sets: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        sets = ", ".join(f"{name} ({size} markers)" for name, size in self.sets.items())
        out = [
            f"scanned   {self.contigs:,} contigs ({self.bases:,} bases): {self.genes:,} genes, "
            f"{self.hits:,} marker hits against {sets}"
        ]
        if self.skipped_short:
            out.append(f"skipped   {self.skipped_short:,} contigs under --min-length (not in the table)")
        return out


def markers_available() -> bool:
    """Whether the gene caller and the search library are installed (the markers extra)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("pyrodigal", "pyhmmer"))


def _libraries():
    try:
        import pyhmmer
        import pyrodigal
    except ImportError as err:
        raise KmervaeError(f"marker genes need pyrodigal and pyhmmer ({err.name} is missing); {INSTALL_HINT}") from None
    return pyrodigal, pyhmmer


def load_profiles(paths: dict[str, Path]) -> dict[str, list]:
    """The HMM profiles of each set, each checked for the trusted cutoff the search uses."""
    _, pyhmmer = _libraries()
    profiles = {}
    for name, path in paths.items():
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such HMM file (marker set '{name}'); give an HMMER3 profile file")
        try:
            opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
            with opener(path, "rb") as handle, pyhmmer.plan7.HMMFile(handle) as hmm_file:
                hmms = list(hmm_file)
        except (OSError, ValueError, EOFError) as err:
            raise InputError(f"{path}: not a readable HMMER3 profile file ({err}); give an HMMER3 .hmm file") from None
        if not hmms:
            raise InputError(f"{path}: holds no HMM profile; give an HMMER3 .hmm file")
        lacking = [h.name for h in hmms if h.cutoffs.trusted is None]
        if lacking:
            raise InputError(
                f"{path}: profile '{_text(lacking[0])}' has no trusted cutoff (TC line), which the search needs; "
                "use curated profiles (Pfam, TIGRFAM) that carry one"
            )
        profiles[name] = hmms
    return profiles


def set_sizes(profiles: dict[str, list]) -> dict[str, int]:
    """Distinct markers of each set (paired profiles merged)."""
    return {name: len({_marker_name(h) for h in hmms}) for name, hmms in profiles.items()}


def contigs_of_fasta(
    paths: Sequence[str | os.PathLike[str]], fragment_length: int | None, min_length: int, summary: MarkerSummary
) -> Iterator[tuple[str, bytes]]:
    """(contig id, bases) of every contig `kmervae featurize` would make with these settings
    (records, or their `RECORD:START-END` fragments; shorter ones counted in `summary`)."""
    from kmervae.features.contigs import contig_id, fragments
    from kmervae.features.fasta import FastaReader

    for path in paths:
        for record in FastaReader(path):
            bases = record.sequence
            _, starts, ends = fragments(np.array([len(bases)]), fragment_length)
            for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
                if end - start < min_length or end == start:
                    summary.skipped_short += 1
                    continue
                yield contig_id(record.id, start, end, fragment_length is not None), bases[start:end].tobytes()


def check_marker_flags(fragment_length: int | None, min_length: int, workers: int | None) -> None:
    """Refuse `kmervae markers`' bad numbers before any work, one line each."""
    if fragment_length is not None and fragment_length < 1:
        raise ConfigError(f"--fragment-length must be >= 1, got {fragment_length}")
    if min_length < 0:
        raise ConfigError(f"--min-length must be >= 0, got {min_length}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")


def markers_of_fasta(
    paths: Sequence[str | os.PathLike[str]],
    fragment_length: int | None,
    min_length: int,
    *,
    hmm: Path | None = None,
    workers: int | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> tuple[MarkerTable, MarkerSummary]:
    """The markers of every contig `kmervae featurize` would make of `paths` with these settings
    (`hmm`: profiles to search instead of the bundled bacterial set), with progress lines to `log`."""
    profiles = load_profiles(dict(MARKER_SETS) | ({"bacteria": Path(hmm)} if hmm else {}))
    workers = workers or len(os.sched_getaffinity(0)) or 1
    summary = MarkerSummary()
    log(f"markers   calling genes and searching {', '.join(profiles)} markers in {workers} thread(s)")
    contigs = contigs_of_fasta(paths, fragment_length, min_length, summary)
    return find_markers(contigs, profiles, workers=workers, summary=summary, log=log), summary


def find_markers(
    contigs: Iterable[tuple[str, bytes]],
    profiles: dict[str, list] | None = None,
    *,
    workers: int | None = None,
    summary: MarkerSummary | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> MarkerTable:
    """Call genes on every contig and search them against each marker set; the contigs' table.
    `log` gets a line per stage of every block (genes called, each set searched) with its time."""
    import time

    pyrodigal, pyhmmer = _libraries()
    profiles = profiles if profiles is not None else load_profiles(MARKER_SETS)
    workers = workers or os.cpu_count() or 1
    summary = summary if summary is not None else MarkerSummary()
    summary.sets = set_sizes(profiles)
    finder = pyrodigal.GeneFinder(meta=True)
    alphabet = pyhmmer.easel.Alphabet.amino()
    ids: list[str] = []
    hits: dict[tuple[int, str, str], set[int]] = {}  # (contig, set, marker) -> full-length genes
    with ThreadPoolExecutor(workers) as pool:
        for number, block in enumerate(_blocks(contigs, BLOCK_BASES), start=1):
            started = time.perf_counter()
            first = len(ids)
            ids.extend(cid for cid, _ in block)
            proteins = _call_genes(pool, finder, block, first, workers)
            summary.genes += len(proteins)
            summary.bases += sum(len(seq) for _, seq in block)
            log(
                f"  block {number}: {len(block):,} contigs, {summary.bases:,} bases so far: "
                f"{len(proteins):,} genes called ({time.perf_counter() - started:.1f} s)"
            )
            if proteins:
                digital = pyhmmer.easel.TextSequenceBlock(proteins).digitize(alphabet)
                for name, hmms in profiles.items():
                    started = time.perf_counter()
                    _search(pyhmmer, hmms, digital, name, workers, hits)
                    seconds = time.perf_counter() - started
                    log(f"  block {number}: searched {len(hmms)} {name} profiles ({seconds:.1f} s)")
    summary.contigs = len(ids)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        twice = next(cid for cid in ids if cid in seen or seen.add(cid))
        raise InputError(f"contig '{twice}' appears twice; contig ids must be unique in the assembly")
    if summary.contigs and not summary.genes:
        raise InputError(
            f"no gene was found on any of the {summary.contigs:,} contigs ({summary.bases:,} bases): "
            "is this a nucleotide assembly of prokaryotic DNA?"
        )
    summary.hits = len(hits)
    return _table(ids, hits, summary.sets)


def _search(pyhmmer, hmms, digital, name: str, workers: int, hits: dict[tuple[int, str, str], set[int]]) -> None:
    """Search one marker set's profiles at their trusted cutoffs; add each contig's genes that
    hit a marker over at least `MIN_HMM_COVERAGE` of its profile to `hits`."""
    for top in pyhmmer.hmmsearch(hmms, digital, cpus=workers, bit_cutoffs="trusted"):
        marker, size = _marker_name(top.query), top.query.M
        for hit in top.included:
            aligned = hit.best_domain.alignment
            contig, gene = map(int, _text(hit.name).split("_"))
            genes = hits.setdefault((contig, name, marker), set())
            if (aligned.hmm_to - aligned.hmm_from + 1) / size >= MIN_HMM_COVERAGE:
                genes.add(gene)


def _table(ids: list[str], hits: dict[tuple[int, str, str], set[int]], sets: dict[str, int]) -> MarkerTable:
    """The markers table of `hits` ((contig, set, marker) -> genes), by contig, set and marker."""
    order = sorted(hits, key=lambda k: (k[0], k[1], k[2]))
    return MarkerTable(
        sets=sets,
        contigs=len(ids),
        digest=ids_digest(ids),
        contig=np.asarray([ids[c] for c, _, _ in order], dtype=object),
        set_name=np.asarray([s for _, s, _ in order], dtype=object),
        marker=np.asarray([m for _, _, m in order], dtype=object),
        copies=np.asarray([len(hits[k]) for k in order], dtype=np.int64),
    )


def _blocks(contigs: Iterable[tuple[str, bytes]], bases: int) -> Iterator[list[tuple[str, bytes]]]:
    block, size = [], 0
    for contig in contigs:
        block.append(contig)
        size += len(contig[1])
        if size >= bases:
            yield block
            block, size = [], 0
    if block:
        yield block


def _call_genes(pool: ThreadPoolExecutor, finder, block: list[tuple[str, bytes]], first: int, workers: int):
    """Protein sequences of every gene in `block`, named 'CONTIG_GENE' (contig: its index in the
    whole scan), in contig order."""
    import pyhmmer

    per_task = max(1, len(block) // (workers * 8))  # small tasks: one long contig cannot idle the other cores
    chunks = [(i, block[i : i + per_task]) for i in range(0, len(block), per_task)]

    def call(chunk: tuple[int, list[tuple[str, bytes]]]) -> list:
        start, contigs = chunk
        out = []
        for offset, (_, seq) in enumerate(contigs):
            for gene_no, gene in enumerate(finder.find_genes(seq)):
                name = f"{first + start + offset}_{gene_no}".encode()
                out.append(pyhmmer.easel.TextSequence(name=name, sequence=gene.translate()))
        return out

    return [protein for part in pool.map(call, chunks) for protein in part]


def _marker_name(hmm) -> str:
    name = _text(hmm.name)
    return PAIRED_PROFILES.get(name, name)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
