"""Read FASTA (or FASTQ), plain or compressed, and turn every format problem into one clear line.

The record-by-record reader: `kmervae bin` reads assemblies with it, and the featurizer's
block scanner (fasta_blocks.py) hands it any file, from the first record, that is not plain
FASTA or has an error. Parsing is dnaio's (maintained, used by cutadapt; 28 Mbp of gzipped
genomes parse in about 0.12 s here, see bench/RESULTS.md). Decompression is xopen's, in-process so the
raw file position can drive a progress bar; the compression is sniffed from the magic
bytes, so a gzipped file named `.fa` still reads. This module adds what a featurizer
needs on top: record ids, validation of the bases, and error messages that name the
file, the record and the line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dnaio
import numpy as np
import xopen

from kmervae.base.errors import DECOMPRESSION_ERRORS, InputError, InputNotFoundError
from kmervae.features.kmer_counter import BASE_CLASS, first_invalid_byte

_MAGIC = {b"\x1f\x8b": "gz", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zst"}
FASTA_SUFFIXES = (".fasta", ".fas", ".fa", ".fna", ".ffn", ".frn", ".fsa", ".fastq", ".fq", ".seq")
COMPRESSION_SUFFIXES = (".gz", ".bgz", ".bz2", ".xz", ".zst")


@dataclass(frozen=True)
class FastaRecord:
    """One sequence record: its id (first word of the header) and its bases as bytes."""

    path: Path
    index: int  # 0-based position of the record in its file
    id: str
    sequence: np.ndarray  # uint8, the bases exactly as written (case kept)


def file_stem(path: Path) -> str:
    """Name of a FASTA file without its compression and FASTA suffixes ('E_coli.fna.gz' -> 'E_coli')."""
    name = path.name
    for suffixes in (COMPRESSION_SUFFIXES, FASTA_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    return name


def wrap(sequence: bytes, width: int = 80) -> bytes:
    """Bases as FASTA lines of `width`."""
    return b"".join(sequence[i : i + width] + b"\n" for i in range(0, len(sequence), width))


def check_readable(path: Path) -> None:
    """Fail with one line if `path` is not a readable regular file."""
    if not path.exists():
        raise InputNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a FASTA file")
    if not os.access(path, os.R_OK):
        raise InputNotFoundError(f"{path}: not readable (check its permissions)")


def sniff_compression(raw: BinaryIO) -> str | None:
    head = raw.read(8)
    raw.seek(0)
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return fmt
    return None


class FastaReader:
    """Iterate over the records of one FASTA/FASTQ file; `raw_bytes_read` drives progress."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        check_readable(self.path)
        self.size = self.path.stat().st_size
        self._raw: BinaryIO | None = None

    @property
    def raw_bytes_read(self) -> int:
        """Bytes of the (possibly compressed) file consumed so far."""
        if self._raw is None or self._raw.closed:
            return self.size
        return self._raw.tell()

    def __iter__(self) -> Iterator[FastaRecord]:
        with open(self.path, "rb") as raw:
            self._raw = raw
            compression = sniff_compression(raw)
            index = -1
            utf8 = False
            try:
                stream = xopen.xopen(raw, "rb", threads=0, format=compression) if compression else raw
                with dnaio.open(stream) as records:
                    for index, record in enumerate(records):
                        yield self._check(index, record.name, record.sequence)
            except dnaio.exceptions.UnknownFileFormat:
                if compression:  # dnaio sniffs the text and hides a decompression failure
                    self._raise_if_corrupt(compression)
                raise InputError(
                    f"{self.path}: not a FASTA or FASTQ file (it does not start with '>' or '@')"
                ) from None
            except dnaio.exceptions.FileFormatError as err:
                # dnaio: "'name' ... must be ASCII encoded, but found 'é' at index 7": a UTF-8 id
                # (>ctg_ü1). Such files are read again by the plain reader below, which decodes
                # headers as UTF-8, from the first record dnaio did not give.
                if "must be ASCII encoded" not in str(err) or _is_fastq(self.path):
                    raise InputError(f"{self.path}: {_strip_dnaio_prefix(err)}") from None
                utf8, given = True, index
            except UnicodeDecodeError:
                raise InputError(
                    f"{self.path}: binary or non-ASCII data after {index + 1} good record(s); "
                    "FASTA must be ASCII text (is this a FASTA file?)"
                ) from None
            except DECOMPRESSION_ERRORS as err:
                what = f"{compression} data" if compression else "file"
                raise InputError(
                    f"{self.path}: corrupt or truncated {what} after {index + 1} good record(s) ({err}); "
                    "re-download or re-compress it"
                ) from None
            if utf8:
                for index, (name, sequence) in enumerate(_utf8_fasta(self.path)):
                    if index > given:
                        yield self._check(index, name, sequence)
            if index < 0:
                raise InputError(f"{self.path}: contains no FASTA records (is it empty?)")

    def _raise_if_corrupt(self, compression: str) -> None:
        try:
            with xopen.xopen(self.path, "rb", threads=0, format=compression) as stream:
                stream.read(1 << 16)
        except DECOMPRESSION_ERRORS as err:
            raise InputError(
                f"{self.path}: corrupt or truncated {compression} data at the start ({err}); "
                "re-download or re-compress it"
            ) from None

    def _check(self, index: int, name: str, sequence: str) -> FastaRecord:
        words = name.split(maxsplit=1)
        if not words:
            line = record_line(self.path, index)
            raise InputError(f"{self.path}: line {line}: record {index + 1} has an empty id (header '{name}')")
        # dnaio guarantees ASCII, so the bytes are the characters.
        bases = np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)
        bad = first_invalid_byte(bases, BASE_CLASS)
        if bad >= 0:
            line = base_line(self.path, index, bad)
            raise InputError(
                f"{self.path}: line {line}: record '{words[0]}' has character {sequence[bad]!r} at base "
                f"{bad + 1}, which is not an IUPAC nucleotide code (ACGTUN RYSWKMBDHV)"
            )
        return FastaRecord(self.path, index, words[0], bases)


def _utf8_fasta(path: Path) -> Iterator[tuple[str, str]]:
    """(header, sequence) of each record of a FASTA file whose headers are UTF-8 text (dnaio
    reads ASCII only). Plain Python, so slower than dnaio: used only for such files. Bytes that
    are not UTF-8 in a header, or not ASCII in a sequence, are refused with their line."""
    name, parts, start = None, [], 0
    for number, line in enumerate(_lines(path), start=1):
        line = line.rstrip(b"\r\n")
        if line.startswith(b">"):
            if name is not None:
                yield name, _ascii_bases(path, parts, start)
            try:
                name = line[1:].decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(
                    f"{path}: line {number}: the header is not UTF-8 text (byte {line[1 + err.start]:#04x}); "
                    "save the file as UTF-8 or rename the record"
                ) from None
            parts, start = [], number
        elif line.strip():
            if name is None:
                raise InputError(f"{path}: line {number}: Expected '>' at beginning of record")
            parts.append(line)
    if name is not None:
        yield name, _ascii_bases(path, parts, start)


def _ascii_bases(path: Path, parts: list[bytes], header_line: int) -> str:
    joined = b"".join(parts)
    try:
        return joined.decode("ascii")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path}: the record at line {header_line} has a non-ASCII byte ({joined[err.start]:#04x}) at base "
            f"{err.start + 1}; FASTA sequences are ASCII letters"
        ) from None


def _strip_dnaio_prefix(err: Exception) -> str:
    """dnaio says 'Error in FASTA file at line 3: ...'; keep the line, drop the noise."""
    text = str(err)
    for prefix in ("Error in FASTA file at ", "Error in FASTQ file at "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as raw:
        compression = sniff_compression(raw)
        with xopen.xopen(raw, "rb", threads=0, format=compression) if compression else raw as handle:
            yield from handle


def _is_fastq(path: Path) -> bool:
    return next((line for line in _lines(path) if line.strip()), b"").startswith(b"@")


def record_line(path: Path, index: int) -> int:
    """1-based line of the header of record `index` (error path only: rescans the file)."""
    if _is_fastq(path):
        return 4 * index + 1  # dnaio reads four-line FASTQ only
    seen = -1
    for number, line in enumerate(_lines(path), start=1):
        if line.startswith(b">") and (seen := seen + 1) == index:
            return number
    return 0


def base_line(path: Path, index: int, offset: int) -> int:
    """1-based line holding base `offset` of record `index` (error path only: rescans the file)."""
    if _is_fastq(path):
        return 4 * index + 2
    seen = -1
    remaining = offset
    for number, line in enumerate(_lines(path), start=1):
        if line.startswith(b">"):
            seen += 1
            continue
        if seen == index:
            width = len(line.rstrip(b"\r\n"))
            if remaining < width:
                return number
            remaining -= width
    return 0
