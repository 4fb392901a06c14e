"""Records in blocks: the compiled scanner and FastaReader give the same records and errors.

The scanner reads the plain dialect and hands any other record, with the rest of its file,
to FastaReader; each case runs with a tiny buffer too, so records cross reads and a record
longer than the buffer makes it grow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kmervae.base.errors import InputError
from kmervae.features import fasta_blocks
from kmervae.features.fasta import FastaReader
from kmervae.features.fasta_blocks import read_blocks, read_files
from tests.conftest import write_bytes, write_fasta

SEQ = "ACGTTGCAAC" * 30

READABLE = [
    ("plain.fa", b">a desc\n" + SEQ.encode() + b"\n>b\nACGT\nac\n"),
    ("crlf-blank-lines.fa", b">a x\r\nACGT\r\n\r\nacgn\r\n>b\r\nTT\r\n"),
    ("blank-lines-first.fa", b"\n\n>a\nACGT\n"),
    ("cr-inside-a-line.fa", b">a\nAC\rGT\n"),
    ("cr-before-gt.fa", b">a\nACGT\n\r>b\nAC\n"),
    ("cr-then-gt-inside.fa", b">a\nAC\r>GT\n"),  # dnaio reads CR as a line end before '>'
    ("empty-record.fa", b">a\n>b\nACGT\n>c"),
    ("no-final-newline.fa", b">a\nACGT"),
    ("id-after-spaces.fa", b">  \x1ca b\nACGT\n"),
    ("iupac-rna.fa", b">a\nNRYKMSWBDHVnrykmswbdhvUu\n"),
    ("fastq.fq", b"@r1 x\nACGT\n+\nIIII\n@r2\nGG\n+\nII\n"),
    ("utf8-second.fa", b">a\n" + SEQ.encode() + "\n>ctg_\u00fc1 d\nACGT\n>c\nGG\n".encode()),
    ("trailing-spaces-later.fa", b">a\n" + SEQ.encode() + b"\n>b\nACGT  \n>c\nGG\n"),
    ("blank-line-of-tabs.fa", b">a\nACGT\n\t\n>b\nC\n"),
]

REFUSED = [
    ("empty.fa", b""),
    ("only-newlines.fa", b"\n\n"),
    ("semicolon.fa", b";comment\n>a\nACGT\n"),
    ("empty-id.fa", b">a\nACGT\n>\nACGT\n"),
    ("bad-base-later.fa", b">a\n" + SEQ.encode() + b"\n>b\nACGT\nACXT\n"),
    ("gt-inside.fa", b">a\nAC>GT\n"),
    ("space-inside.fa", b">a\nAC GT\n"),
    ("binary-after.fa", b">a\nACGT\n>b\n" + bytes(range(128, 256))),
]


def exact(path: Path) -> list[tuple[str, bytes]]:
    return [(r.id, r.sequence.tobytes()) for r in FastaReader(path)]


def in_blocks(path: Path) -> list[tuple[str, bytes]]:
    out = []
    index = 0
    for block in read_blocks(path):
        assert block.first_index == index  # records are numbered across readers
        index += len(block)
        for i, rid in enumerate(block.ids):
            out.append((rid, block.seq[block.bounds[i] : block.bounds[i + 1]].tobytes()))
    return out


@pytest.fixture(params=[fasta_blocks.BLOCK_BYTES, 16], ids=["block", "tiny-buffer"])
def block_bytes(request, monkeypatch):
    monkeypatch.setattr(fasta_blocks, "BLOCK_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("name, data", READABLE, ids=[c[0] for c in READABLE])
def test_the_same_records_as_fasta_reader(tmp_path, block_bytes, name, data):
    path = write_bytes(tmp_path / name, data)
    records = exact(path)
    assert records and in_blocks(path) == records


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz", ".zst"])
def test_compressed_files_are_scanned(tmp_path, block_bytes, suffix):
    records = [(f"r{i} d", SEQ[i:] * (i + 1)) for i in range(20)]
    path = write_fasta(tmp_path / f"in.fa{suffix}", records, width=17)
    assert in_blocks(path) == [(h.split()[0], s.encode()) for h, s in records]


@pytest.mark.parametrize("name, data", REFUSED, ids=[c[0] for c in REFUSED])
def test_the_same_error_as_fasta_reader(tmp_path, block_bytes, name, data):
    path = write_bytes(tmp_path / name, data)
    with pytest.raises(InputError) as expected:
        exact(path)
    with pytest.raises(InputError) as got:
        in_blocks(path)
    assert str(got.value) == str(expected.value)


def test_a_truncated_gzip_gives_the_records_before_and_the_error(tmp_path, block_bytes):
    data = write_fasta(tmp_path / "whole.fa.gz", [(f"r{i}", SEQ * 50) for i in range(40)]).read_bytes()
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as expected:
        exact(path)
    with pytest.raises(InputError) as got:
        in_blocks(path)
    assert str(got.value) == str(expected.value) and "corrupt or truncated gz data" in str(got.value)


def test_a_real_genome_in_small_blocks(examples_dir, monkeypatch):
    path = examples_dir / "Helicobacter_pylori_G27.fna.gz"
    monkeypatch.setattr(fasta_blocks, "BLOCK_BYTES", 100_000)  # the chromosome (1.65 Mbp) grows the buffer
    assert in_blocks(path) == exact(path)


@pytest.mark.parametrize("name", ["in.fa.gz", "in.fq"])
def test_progress_reaches_the_file_size(tmp_path, block_bytes, name):
    path = write_bytes(tmp_path / name, b"".join(f"@r{i}\n{SEQ}\n+\n{'I' * len(SEQ)}\n".encode() for i in range(50)))
    if name.endswith(".gz"):
        path = write_fasta(path, [(f"r{i}", SEQ) for i in range(50)])
    seen = [block.raw_end for block in read_blocks(path, block_records=7)]
    assert seen and seen == sorted(seen) and seen[-1] == path.stat().st_size


def test_several_files_read_at_once_come_in_input_order(tmp_path, block_bytes):
    paths = [write_fasta(tmp_path / f"f{n}.fa.gz", [(f"f{n}r{i}", SEQ[n:]) for i in range(30)]) for n in range(5)]
    got = [(number, rid) for number, block in read_files(paths, ahead=3) for rid in block.ids]
    assert got == [(n, f"f{n}r{i}") for n in range(5) for i in range(30)]


def test_an_error_in_a_later_file_comes_after_the_earlier_files(tmp_path):
    good = [write_fasta(tmp_path / f"f{n}.fa", [(f"f{n}r{i}", SEQ) for i in range(30)]) for n in range(2)]
    bad = write_bytes(tmp_path / "bad.fa", b">x\nACXT\n")  # read first by its own thread
    numbers = []
    with pytest.raises(InputError, match="bad.fa: line 2: record 'x' has character 'X'"):
        for number, _ in read_files([*good, bad, good[0]], ahead=4):
            numbers.append(number)
    assert numbers[-1] == 1 and sorted(set(numbers)) == [0, 1]


@pytest.mark.parametrize("name", ["plain.fa", "crlf-blank-lines.fa", "empty-record.fa", "iupac-rna.fa"])
def test_the_plain_dialect_never_reaches_fasta_reader(tmp_path, monkeypatch, name):
    path = write_bytes(tmp_path / f"{name}.gz", dict(READABLE)[name])
    handed: list[int] = []
    monkeypatch.setattr(fasta_blocks, "_exact_blocks", lambda reader, skip, *_: handed.append(skip) or iter(()))
    records = in_blocks(path)
    assert handed == [] and records == exact(path)
    in_blocks(write_bytes(tmp_path / "reads.fq", dict(READABLE)["fastq.fq"]))
    assert handed == [0]  # FASTQ is FastaReader's from its first record
