"""`kmervae featurize --abundance`: depths stored per contig, the old schema still read, and
every bad depth table refused with one line and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from kmervae.base.feature_contract import MANIFEST_NAME, META_SCHEMA_VERSION
from kmervae.base.feature_table import FeatureTable, dataset_files
from tests.conftest import kmervae, write_fasta

RECORDS = [("r1", "ACGT" * 500), ("r2", "GGCATTAC" * 400), ("r3", "AACCGGTTA" * 300)]  # 2000, 3200, 2700 bp


def metabat_table(path, rows, samples=("s1.bam", "s2.bam")):
    header = ["contigName", "contigLen", "totalAvgDepth"] + [c for s in samples for c in (s, f"{s}-var")]
    lines = ["\t".join(header)]
    for contig, length, depths in rows:
        values = [str(v) for d in depths for v in (d, 0.5)]
        lines.append("\t".join([contig, str(length), str(sum(depths)), *values]))
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = [("r1", 2000, (1.5, 3.0)), ("r2", 3200, (0.0, 7.25)), ("r3", 2700, (10.0, 2.0))]


def test_depths_are_stored_per_contig_and_shared_by_fragments(tmp_path):
    fasta = write_fasta(tmp_path / "asm.fna", RECORDS)
    table = metabat_table(tmp_path / "depth.tsv", GOOD)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    result = kmervae("featurize", str(fasta), "--abundance", str(table), "-o", str(whole), "--min-length", "100")
    assert result.returncode == 0, result.stderr
    assert "abundance 2 sample(s) per contig" in result.stdout
    features = FeatureTable.from_parquet(whole)
    assert features.samples == ("s1.bam", "s2.bam")
    np.testing.assert_array_equal(features.abundance, [[1.5, 3.0], [0.0, 7.25], [10.0, 2.0]])
    manifest = json.loads((whole / MANIFEST_NAME).read_text())
    assert manifest["abundance"]["samples"] == ["s1.bam", "s2.bam"] and manifest["abundance"]["format"] == "metabat"
    result = kmervae(
        "featurize", str(fasta), "--abundance", str(table), "-o", str(cut), "--fragment-length", "1000",
        "--min-length", "500",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fragments = FeatureTable.from_parquet(cut)
    records = [cid.split(":")[0] for cid in fragments.contig_ids]
    expected = {"r1": [1.5, 3.0], "r2": [0.0, 7.25], "r3": [10.0, 2.0]}
    np.testing.assert_array_equal(fragments.abundance, [expected[r] for r in records])


def test_a_dataset_without_abundance_and_the_old_schema_read_as_before(tmp_path):
    fasta = write_fasta(tmp_path / "asm.fna", RECORDS)
    out = tmp_path / "plain"
    assert kmervae("featurize", str(fasta), "-o", str(out), "--min-length", "100").returncode == 0
    files = dataset_files(out)
    assert files.format.samples == () and "abundance" not in pq.read_schema(files.paths[0]).names
    # a version-1 file (written before abundance existed) is the same table under the old version
    part = files.paths[0]
    table = pq.read_table(part)
    meta = {**table.schema.metadata, META_SCHEMA_VERSION: b"1"}
    pq.write_table(table.replace_schema_metadata(meta), part)
    old = FeatureTable.from_parquet(out)
    assert old.abundance is None and len(old) == 3


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (GOOD[:2], "no depth for contig 'r3' of"),
        ([*GOOD, ("r9", 100, (1.0, 1.0))], "contig 'r9' (1 row(s) in all) is not in the assembly"),
        ([GOOD[0], ("r2", 3201, (0.0, 7.25)), GOOD[2]], "contig 'r2' is 3201 bp in the table and 3200 bp in"),
        ([GOOD[0], ("r2", 3200, (float("nan"), 1.0)), GOOD[2]], "contig 'r2' has depth nan in sample 's1.bam'"),
        ([GOOD[0], GOOD[1], ("r3", 2700, (1.0, -1.0))], "contig 'r3' has depth -1.0 in sample 's2.bam'"),
    ],
)
def test_bad_depth_tables_are_one_line_and_write_nothing(tmp_path, rows, message):
    fasta = write_fasta(tmp_path / "asm.fna", RECORDS)
    table = metabat_table(tmp_path / "depth.tsv", rows)
    out = tmp_path / "features"
    result = kmervae("featurize", str(fasta), "--abundance", str(table), "-o", str(out), "--min-length", "100")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("kmervae featurize: error: ") and f"{table}: " in line and message in line
    assert not out.exists() and not list(tmp_path.glob(".features*"))


def test_duplicate_sample_names_are_refused(tmp_path):
    fasta = write_fasta(tmp_path / "asm.fna", RECORDS)
    table = metabat_table(tmp_path / "depth.tsv", GOOD, samples=("s1.bam", "s1.bam"))
    result = kmervae("featurize", str(fasta), "--abundance", str(table), "-o", str(tmp_path / "f"))
    assert result.returncode == 2 and "sample 's1.bam' appears twice" in result.stderr
    assert not (tmp_path / "f").exists()


def test_a_foreign_file_with_a_bad_depth_is_refused_by_contig(tmp_path):
    import pyarrow as pa

    from kmervae.base.errors import InputError
    from kmervae.base.feature_contract import abundance_column

    fasta = write_fasta(tmp_path / "asm.fna", RECORDS)
    table = metabat_table(tmp_path / "depth.tsv", GOOD)
    out = tmp_path / "features"
    assert (
        kmervae("featurize", str(fasta), "--abundance", str(table), "-o", str(out), "--min-length", "100").returncode
        == 0
    )
    part = dataset_files(out).paths[0]
    stored = pq.read_table(part)
    depths = np.array([[1.0, 1.0], [1.0, np.inf], [1.0, 1.0]], dtype=np.float32)
    column = stored.schema.get_field_index("abundance")
    pq.write_table(
        stored.set_column(column, stored.schema.field(column), pa.chunked_array([abundance_column(depths)])), part
    )
    with pytest.raises(InputError, match=r"1 row\(s\) with .* a depth that is NaN, inf or negative, e.g. r2"):
        dataset_files(out)


def test_strobealign_aemb_files_are_a_depth_table(tmp_path):
    """strobealign --aemb writes one headerless 'contig<TAB>depth' file per sample: a folder of
    them is one table (samples by file name, rows matched by contig), a single file one sample."""
    fasta = write_fasta(tmp_path / "asm.fna", RECORDS)
    folder = tmp_path / "aemb"
    folder.mkdir()
    (folder / "s1.tsv").write_text("r1\t1.5\nr2\t0\nr3\t10\n")
    (folder / "s2.tsv").write_text("r3\t2\nr1\t3\nr2\t7.25\n")  # another order: matched by name
    (folder / "notes.md").write_text("not a depth file\n")
    out = tmp_path / "features"
    result = kmervae("featurize", str(fasta), "--abundance", str(folder), "-o", str(out), "--min-length", "100")
    assert result.returncode == 0, result.stderr
    features = FeatureTable.from_parquet(out)
    assert features.samples == ("s1", "s2")
    np.testing.assert_array_equal(features.abundance, [[1.5, 3.0], [0.0, 7.25], [10.0, 2.0]])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["abundance"]["format"] == "aemb"
    single = tmp_path / "single"
    result = kmervae(
        "featurize", str(fasta), "--abundance", str(folder / "s2.tsv"), "-o", str(single), "--min-length", "100"
    )
    assert result.returncode == 0, result.stderr
    assert FeatureTable.from_parquet(single).samples == ("s2",)
    np.testing.assert_array_equal(FeatureTable.from_parquet(single).abundance[:, 0], [3.0, 7.25, 2.0])


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"s1.tsv": "r1\t1\nr2\t1\nr3\t1\n", "s2.tsv": "r1\t1\nr2\t1\nr9\t1\n"},
            "s2.tsv: contig 'r9' is not in s1.tsv",
        ),
        ({"s1.tsv": "r1\t1\nr2\t1\nr3\t1\n", "s2.tsv": "r1\t1\nr2\t1\n"}, "s2.tsv: 2 contigs, not the 3 of s1.tsv"),
        ({"s1.tsv": "r1\t1\nr2\tx\nr3\t1\n"}, "s1.tsv: line 2: contig 'r2' has a value that is not a number"),
        ({"s1.tsv": "r1\t1\nr2\t1\nr1\t1\n"}, "s1.tsv: contig 'r1' appears twice (line 3)"),
        ({}, "no depth files in this folder"),
        (
            {"s1.tsv": "r1_1\t1\nr1_2\t1\nr2_1\t1\nr2_2\t1\nr3_1\t1\nr3_2\t1\n"},
            "the table was made for SemiBin2's split contigs",
        ),
    ],
)
def test_bad_aemb_folders_are_one_line_and_write_nothing(tmp_path, files, message):
    fasta = write_fasta(tmp_path / "asm.fna", RECORDS)
    folder = tmp_path / "aemb"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    out = tmp_path / "features"
    result = kmervae("featurize", str(fasta), "--abundance", str(folder), "-o", str(out), "--min-length", "100")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not out.exists() and not list(tmp_path.glob(".features*"))


def test_the_fast_reader_and_the_line_reader_agree(tmp_path):
    """Tables go through Arrow's CSV reader; one it cannot take as it is (here a comment line)
    is read line by line: the same table either way."""
    from kmervae.abundance.depth_table import read_depth_table

    plain = metabat_table(tmp_path / "plain.tsv", GOOD)
    commented = tmp_path / "commented.tsv"
    lines = plain.read_text().splitlines()
    commented.write_text("\n".join([lines[0], "# made by hand", *lines[1:]]) + "\n")
    fast, slow = read_depth_table(plain), read_depth_table(commented)
    assert fast.contigs == slow.contigs == ("r1", "r2", "r3") and fast.samples == slow.samples
    np.testing.assert_array_equal(fast.depths, slow.depths)
    np.testing.assert_array_equal(fast.lengths, slow.lengths)


def test_the_fast_reader_reads_a_table_block_by_block_as_the_line_reader_reads_it(tmp_path, monkeypatch):
    """A table larger than the fast reader's block is read in pieces whose float32 depths fill
    one array in order (grown when the first block's rows per byte foretold too few rows): the
    same contigs, depths and lengths as the line reader's, value for value."""
    from kmervae.abundance import depth_table

    rng = np.random.default_rng(3)
    depths = rng.lognormal(0.0, 2.0, size=(3000, 5))
    plain = tmp_path / "plain.tsv"
    contig_names = [f"k{i}" + ("_long" * 20 if i < 300 else "") for i in range(3000)]  # the first block, fewer rows
    rows = [
        f"{name}\t{1000 + i}\t{d.sum():.6f}\t" + "\t".join(f"{v:.6f}\t{v / 3:.4f}" for v in d)
        for i, (name, d) in enumerate(zip(contig_names, depths, strict=True))
    ]
    header = "contigName\tcontigLen\ttotalAvgDepth\t" + "\t".join(f"s{j}.bam\ts{j}.bam-var" for j in range(5))
    plain.write_text("\n".join([header, *rows]) + "\n")
    commented = tmp_path / "commented.tsv"
    commented.write_text("\n".join([header, "# by hand", *rows]) + "\n")
    monkeypatch.setattr(depth_table, "BLOCK_BYTES", 1 << 14)  # about 60 blocks
    fast, slow = depth_table.read_depth_table(plain), depth_table.read_depth_table(commented)
    names = depth_table._header(plain)
    fmt = depth_table._format_of(names, plain)
    columns, _ = depth_table._sample_columns(fmt, names, plain)
    assert depth_table._read_fast(plain, fmt, len(names), columns) is not None  # not the line reader
    assert fast.contigs == slow.contigs == tuple(contig_names) and fast.samples == slow.samples
    assert fast.depths.dtype == np.float32
    np.testing.assert_array_equal(fast.depths, slow.depths)
    np.testing.assert_array_equal(fast.depths, depths.round(6).astype(np.float32))
    np.testing.assert_array_equal(fast.lengths, np.arange(1000, 4000))


def test_a_table_written_in_pieces_is_the_table_written_whole(tmp_path, monkeypatch):
    """`write_table` turns rows into text a piece at a time on several threads: the pieces join
    in order into the same bytes as one piece, and read back to the same depths."""
    from kmervae.abundance import depth_table

    rng = np.random.default_rng(5)
    means = rng.lognormal(0.0, 2.0, size=(1001, 3)).astype(np.float32)
    contigs, lengths, samples = [f"k{i}" for i in range(1001)], np.arange(1001) + 500, ["a", "b", "c"]
    for fmt in ("metabat", "vamb"):
        monkeypatch.setattr(depth_table, "WRITE_ROWS", 10**6)
        depth_table.write_table(tmp_path / f"whole.{fmt}", contigs, lengths, samples, means, means / 2, fmt)
        monkeypatch.setattr(depth_table, "WRITE_ROWS", 7)  # 143 pieces, more than two per thread
        depth_table.write_table(tmp_path / f"pieces.{fmt}", contigs, lengths, samples, means, means / 2, fmt)
        assert (tmp_path / f"pieces.{fmt}").read_bytes() == (tmp_path / f"whole.{fmt}").read_bytes()
        table = depth_table.read_depth_table(tmp_path / f"pieces.{fmt}")
        assert table.contigs == tuple(contigs)
        np.testing.assert_array_equal(table.depths, means)
