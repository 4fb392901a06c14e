"""`kmervae concat`: per-sample assemblies -> one FASTA whose contig names carry their sample.

Large studies assemble each sample on its own, bin all contigs together and split each bin by
sample (VAMB's default, `-o C`; SemiBin2's `multi_easy_bin`). This writes the catalogue they
bin: each contig renamed `<sample><separator><contig>`, as VAMB's concatenate.py does (samples
S1, S2, ... in the order given, separator `C`), contigs under the minimum length left out and
counted. Every sample's reads are then mapped to this file, so BAM files and depth tables are
keyed by the new names, and `kmervae bin` can split a bin at the first separator.

The output appears whole or not at all: written beside its place and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xopen

from kmervae.base.errors import ConfigError, InputError, OutputError
from kmervae.features.fasta import FastaReader, check_readable, wrap

SEPARATOR = "C"
"""VAMB's: its binsplit (`-o C`) and concatenate.py name contigs S1C<contig>, S2C<contig>, ..."""
MIN_LENGTH = 2000
"""VAMB's concatenate.py default: shorter contigs carry too little composition to bin."""


@dataclass
class SampleCount:
    """What one sample's assembly gave."""

    name: str
    path: Path
    kept: int = 0
    kept_bases: int = 0
    short: int = 0  # records under the minimum length, left out
    short_bases: int = 0


@dataclass
class ConcatSummary:
    """What `concatenate` wrote, per sample."""

    out: Path
    separator: str
    min_length: int
    samples: list[SampleCount] = field(default_factory=list)

    def lines(self) -> list[str]:
        kept, bases = sum(s.kept for s in self.samples), sum(s.kept_bases for s in self.samples)
        short, short_bases = sum(s.short for s in self.samples), sum(s.short_bases for s in self.samples)
        out = [f"  {s.name}: {s.kept:,} contigs ({s.kept_bases:,} bp) from {s.path.name}" for s in self.samples]
        return [
            *out,
            f"samples   {len(self.samples)}, named <sample>{self.separator}<contig>",
            f"wrote     {kept:,} contigs ({bases:,} bp)",
            f"skipped   {short:,} contigs shorter than --min-length {self.min_length:,} ({short_bases:,} bp)",
            f"output    {self.out.absolute()}",
        ]


def sample_names(count: int, names: Sequence[str] | None, separator: str) -> list[str]:
    """The samples' names: `names` as given, else S1, S2, ... (VAMB's). A name must be non-empty,
    unique, without white space and without the separator, so that the first separator in a
    contig's name always ends its sample."""
    if not separator or any(c.isspace() for c in separator):
        raise ConfigError(f"--separator {separator!r}: expected a non-empty string without white space")
    names = list(names) if names is not None else [f"S{i + 1}" for i in range(count)]
    if len(names) != count:
        raise ConfigError(f"--names gives {len(names)} name(s) for {count} assembly file(s); give one per file")
    for name in names:
        if not name or any(c.isspace() for c in name) or separator in name:
            raise ConfigError(
                f"--names: sample name {name!r} is empty, holds white space or holds the separator "
                f"{separator!r}; a bin could not be split by sample"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"--names: a sample name is given twice ({', '.join(names)})")
    return names


def concatenate(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    min_length: int = MIN_LENGTH,
    separator: str = SEPARATOR,
    names: Sequence[str] | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda line: None,
) -> ConcatSummary:
    """Write the contigs of `inputs` (one assembly per sample, in sample order) to `out` (gzip,
    bz2, xz or zstd by its suffix), each named `<sample><separator><contig>`."""
    paths = [Path(p) for p in inputs]
    out = Path(out)
    if not paths:
        raise ConfigError("no assembly files given")
    if min_length < 1:
        raise ConfigError(f"--min-length must be >= 1, got {min_length}")
    for path in paths:
        check_readable(path)
    if len({p.resolve() for p in paths}) != len(paths):
        raise ConfigError("the same assembly file is given twice")
    names = sample_names(len(paths), names, separator)
    if out.exists() and not overwrite:
        raise OutputError(f"{out}: exists already; pass --overwrite to replace it")
    summary = ConcatSummary(out, separator, min_length)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}{''.join(out.suffixes[-1:])}")
    made = [] if out.parent.exists() else [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with xopen.xopen(tmp, "wb", threads=0) as handle:
            for name, path in zip(names, paths, strict=True):
                summary.samples.append(write_sample(handle, name, path, separator, min_length))
                log(summary.lines()[len(summary.samples) - 1])
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in made:  # the folders made for the output, innermost first: nothing is left
            folder.rmdir()
        raise
    return summary


def write_sample(handle, name: str, path: Path, separator: str, min_length: int) -> SampleCount:
    """One sample's contigs of at least `min_length` bases, renamed; a contig id twice in one
    assembly is refused (two contigs would get one name)."""
    count = SampleCount(name, path)
    seen: set[str] = set()
    for record in FastaReader(path):
        if record.id in seen:
            raise InputError(
                f"{path}: contig id '{record.id}' appears twice (record {record.index + 1}); "
                "ids must be unique in each assembly"
            )
        seen.add(record.id)
        length = len(record.sequence)
        if length < min_length:
            count.short += 1
            count.short_bases += length
            continue
        handle.write(f">{name}{separator}{record.id}\n".encode() + wrap(record.sequence.tobytes()))
        count.kept += 1
        count.kept_bases += length
    return count
