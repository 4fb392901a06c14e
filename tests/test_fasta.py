"""FASTA/FASTQ reading: formats, compression, and one-line errors naming file, record and line."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from kmervae.base.errors import InputError, InputNotFoundError
from kmervae.features.fasta import FastaReader, file_stem
from tests.conftest import write_bytes, write_fasta

RECORDS = [("chr1 some description", "ACGT" * 40 + "NNNN" + "acgt" * 10), ("chr2", "GGCC" * 3), ("chr3", "")]


def read(path: Path) -> list[tuple[str, str]]:
    return [(r.id, r.sequence.tobytes().decode()) for r in FastaReader(path)]


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz", ".zst"])
def test_reads_plain_and_compressed_multiline_fasta(tmp_path, suffix):
    path = write_fasta(tmp_path / f"in.fa{suffix}", RECORDS, width=17)
    assert read(path) == [("chr1", RECORDS[0][1]), ("chr2", RECORDS[1][1]), ("chr3", "")]


def test_compression_is_detected_from_content_not_name(tmp_path):
    path = tmp_path / "actually_gzip.fa"
    path.write_bytes(gzip.compress(b">a\nACGT\n"))
    assert read(path) == [("a", "ACGT")]


def test_windows_line_endings_and_blank_lines(tmp_path):
    path = write_bytes(tmp_path / "crlf.fa", b">a x\r\nACGT\r\n\r\nacgn\r\n>b\r\nTT\r\n")
    assert read(path) == [("a", "ACGTacgn"), ("b", "TT")]


def test_fastq_is_read_too(tmp_path):
    path = write_bytes(tmp_path / "reads.fq.gz", b"@r1 x\nACGT\n+\nIIII\n@r2\nGG\n+\nII\n")
    assert read(path) == [("r1", "ACGT"), ("r2", "GG")]


def test_progress_counts_raw_bytes(tmp_path):
    path = write_fasta(tmp_path / "in.fa.gz", RECORDS)
    reader = FastaReader(path)
    assert reader.raw_bytes_read == path.stat().st_size  # before reading: nothing open
    records = list(reader)
    assert len(records) == 3 and records[0].index == 0 and records[2].index == 2
    assert reader.raw_bytes_read == path.stat().st_size
    assert records[1].sequence.dtype == np.uint8


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.fa", b"", "contains no FASTA records"),
        ("html.fa", b"<html><body>Not found</body></html>\n", "line 1: Expected '>' at beginning of record"),
        ("text.fa", b"hello", "line 1: Expected .>. at beginning of record, but got .hello."),
        ("nohead.fa", b"\n\nACGT\n>b\nAC\n", "line 3: Expected '>' at beginning of record"),
        ("binary.fa", b">a\nACGT\n>b\n" + bytes(range(128, 256)), "binary or non-ASCII data"),
        ("emptyid.fa", b">a\nACGT\n>\nACGT\n", r"line 3: record 2 has an empty id"),
        ("spaceid.fa", b">a\nACGT\n>   \nACGT\n", r"line 3: record 2 has an empty id"),
        ("badchar.fa", b">a\nACGT\n>b\nACGTACGT\nACXT\n", r"line 5: record 'b' has character 'X' at base 11"),
        ("gap.fa", b">a\nAC-GT\n", r"line 2: record 'a' has character '-' at base 3"),
        ("space.fa", b">a\nAC GT\n", r"line 2: record 'a' has character ' '"),
    ],
)
def test_malformed_input_gets_one_line_naming_file_and_line(tmp_path, name, data, message):
    path = write_bytes(tmp_path / name, data)
    with pytest.raises(InputError, match=message) as info:
        read(path)
    text = str(info.value)
    assert text.startswith(str(path)) and "\n" not in text


def test_truncated_gzip_is_reported(tmp_path):
    data = gzip.compress(b">a\n" + b"ACGT" * 50_000 + b"\n>b\nACGT\n")
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated gz data"):
        read(path)


def test_corrupt_xz_is_reported(tmp_path):
    path = write_fasta(tmp_path / "x.fa.xz", RECORDS)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt or truncated xz data"):
        read(path)


def test_missing_unreadable_and_directory_inputs(tmp_path):
    with pytest.raises(InputNotFoundError, match="no such file"):
        FastaReader(tmp_path / "nope.fa")
    with pytest.raises(InputError, match="is a directory"):
        FastaReader(tmp_path)


@pytest.mark.parametrize(
    "name, stem",
    [
        ("E_coli.fna.gz", "E_coli"),
        ("a.b.fasta", "a.b"),
        ("reads.fq.zst", "reads"),
        ("genome", "genome"),
        (".fa", ".fa"),
    ],
)
def test_file_stem(name, stem):
    assert file_stem(Path(name)) == stem


def test_the_utf8_reader_names_the_line_of_bytes_it_cannot_read(tmp_path):
    """dnaio reads ASCII only; files with UTF-8 ids go through the plain reader, which accepts
    UTF-8 headers and refuses other bytes with their line (dnaio, which decodes ahead, usually
    reports undecodable bytes itself first)."""
    from kmervae.features.fasta import _utf8_fasta

    path = write_bytes(tmp_path / "ids.fa", ">ctg_\u00fc1 x\nACGT\nAC\n>b\nGG\n".encode())
    assert list(_utf8_fasta(path)) == [("ctg_\u00fc1 x", "ACGTAC"), ("b", "GG")]
    bad = write_bytes(tmp_path / "bad.fa", ">ctg_\u00fc1\nACGT\n".encode() + b">contig_\xe9\nACGT\n")
    with pytest.raises(InputError, match=r"bad.fa: line 3: the header is not UTF-8 text \(byte 0xe9\)"):
        list(_utf8_fasta(bad))
