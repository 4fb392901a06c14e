"""A corpus of malformed and unusual FASTA files, each run through `kmervae featurize`.

Every case is either handled (the written counts are checked against the reference
counter, or against the same sequence written plainly) or refused with one line naming
the file, exit code 2, no traceback and nothing left in the output folder.
"""

from __future__ import annotations

import gzip
import random

import numpy as np
import pytest

from kmervae.base.feature_contract import KMER_SIZES
from kmervae.base.feature_table import FeatureTable
from kmervae.cli import main
from tests.reference import reference_counts, reference_gc

RNG = random.Random(8)
SEQ = "".join(RNG.choice("ACGT") for _ in range(3000))
LONG = "".join(RNG.choice("ACGT") for _ in range(10_000_000))
PLAIN = f">a\n{SEQ}\n".encode()


def _truncated_gzip() -> bytes:
    data = gzip.compress(b">a\n" + SEQ.encode() * 20 + b"\n")
    return data[: len(data) // 2]


def _wrapped(header: str, seq: str, newline: str = "\n", width: int = 60) -> bytes:
    lines = [f">{header}", *(seq[i : i + width] for i in range(0, len(seq), width))]
    return (newline.join(lines) + newline).encode()


# name, file content, and either the error text or the records the file must give
# ({contig_id: sequence the counts must match}).
REFUSED = [
    ("empty.fa", b"", "contains no FASTA records (is it empty?)"),
    ("header-only.fa", b">only\n", "no contig left to write: 1 shorter than --min-length (1000)"),
    ("no-gt.fa", b"seq1\n" + SEQ.encode() + b"\n", "line 1: Expected '>' at beginning of record, but got 'seq1'"),
    ("binary.fa", bytes(range(256)) * 40, "binary or non-ASCII data after 0 good record(s)"),
    ("truncated.fa.gz", _truncated_gzip(), "corrupt or truncated gz data after 0 good record(s)"),
    ("duplicates.fa", PLAIN + PLAIN, "line 3: duplicate record id 'a' (also earlier in this file)"),
    ("latin1.fa", b">contig_\xe9\n" + SEQ.encode() + b"\n", "binary or non-ASCII data"),
    ("utf8-then-latin1.fa", _wrapped("ctg_\u00fc1", SEQ) + b">contig_\xe9\n", "binary or non-ASCII data"),
    (
        "utf8-id-bad-base.fa",
        ">ctg_\u00fc1\n".encode() + SEQ[:10].encode() + "\u00e9".encode() + b"\n",
        "the record at line 1 has a non-ASCII byte (0xc3) at base 11; FASTA sequences are ASCII letters",
    ),
    (
        "bad-base.fa",
        b">a\n" + SEQ[:100].encode() + b"\n" + SEQ[100:200].encode() + b"J\n",
        "line 3: record 'a' has character 'J' at base 201, which is not an IUPAC nucleotide code",
    ),
]
IUPAC = SEQ[:1000] + "NRYKMSWBDHVnrykmswbdhv" + SEQ[1000:]
HANDLED = [
    ("crlf.fa", _wrapped("a", SEQ, newline="\r\n"), {"a": SEQ}),
    ("mixed-case.fa", _wrapped("a", SEQ[:1500].lower() + SEQ[1500:]), {"a": SEQ}),
    ("iupac.fa", _wrapped("a", IUPAC), {"a": IUPAC}),  # windows over IUPAC codes are skipped, length counts them
    ("rna.fa", _wrapped("a", SEQ.replace("T", "U")), {"a": SEQ}),
    ("id-with-spaces.fa", _wrapped("contig 1 length=3000 some description", SEQ), {"contig": SEQ}),
    ("utf8-id.fa", _wrapped("contig_\u00e9\u00df\u4e2d desc", SEQ), {"contig_\u00e9\u00df\u4e2d": SEQ}),
    ("utf8-second.fa", PLAIN + _wrapped("ctg_\u00fc1", SEQ[::-1]), {"a": SEQ, "ctg_\u00fc1": SEQ[::-1]}),
]


def featurize_cli(tmp_path, name: str, data: bytes, capsys):
    path = tmp_path / name
    path.write_bytes(data)
    code = main(["featurize", str(path), "-o", str(tmp_path / "out"), "--quiet"])
    return code, capsys.readouterr()


@pytest.mark.parametrize("name, data, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_one_line_and_no_output(tmp_path, capsys, name, data, message):
    code, captured = featurize_cli(tmp_path, name, data, capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("kmervae featurize: error: ") and message in lines[0], lines[0]
    if "no contig left" not in message:
        assert f"{name}:" in lines[0]  # names the file
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no output, no staging folder


@pytest.mark.parametrize("name, data, records", HANDLED, ids=[c[0] for c in HANDLED])
def test_handled_with_exact_counts(tmp_path, capsys, name, data, records):
    code, captured = featurize_cli(tmp_path, name, data, capsys)
    assert code == 0, captured.err
    table = FeatureTable.from_parquet(tmp_path / "out")
    assert len(table) == len(records)
    for row, (record, seq) in enumerate(records.items()):
        assert table.contig_ids[row] == record  # unfragmented: the id is the first word of the header
        assert table.length[row] == len(seq)
        assert table.gc[row] == pytest.approx(reference_gc(seq), rel=1e-6)
        for k in KMER_SIZES:
            np.testing.assert_array_equal(table.counts(k)[row], reference_counts(seq, k), err_msg=f"k={k}")


def test_a_10_mb_single_line_counts_like_the_wrapped_sequence(tmp_path, capsys):
    code, captured = featurize_cli(tmp_path, "one-line.fa", f">big\n{LONG}\n".encode(), capsys)
    assert code == 0, captured.err
    one_line = FeatureTable.from_parquet(tmp_path / "out")
    (tmp_path / "wrapped").mkdir()
    code, captured = featurize_cli(tmp_path / "wrapped", "wrapped.fa", _wrapped("big", LONG, width=80), capsys)
    assert code == 0, captured.err
    wrapped = FeatureTable.from_parquet(tmp_path / "wrapped" / "out")
    assert one_line.length[0] == wrapped.length[0] == 10_000_000
    for k in KMER_SIZES:
        np.testing.assert_array_equal(one_line.counts(k), wrapped.counts(k))
        assert int(one_line.counts(k).sum()) == 10_000_000 - k + 1  # every window is unambiguous
