"""End to end: FASTA files -> feature dataset, checked count by count against the reference."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kmervae.base.errors import ConfigError, InputError, InputNotFoundError, OutputError
from kmervae.base.feature_contract import KMER_SIZES, MANIFEST_NAME, SCHEMA_VERSION
from kmervae.base.feature_table import FeatureTable, dataset_files
from kmervae.features import fasta_blocks
from kmervae.features.feature_writer import COUNT_CHUNK
from kmervae.features.featurize import FeaturizeSettings, featurize
from kmervae.features.labels import Labels
from tests.conftest import write_fasta
from tests.reference import reference_counts, reference_gc


def genome_records(path: Path) -> dict[str, str]:
    """Record id -> sequence, read with nothing but gzip (independent of the code under test)."""
    records: dict[str, list[str]] = {}
    with gzip.open(path, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                current = records.setdefault(line[1:].split()[0], [])
            else:
                current.append(line.strip())
    return {rid: "".join(parts) for rid, parts in records.items()}


def assert_rows_match_reference(table: FeatureTable, sequences: dict[str, str], rows) -> None:
    for row in rows:
        cid = table.contig_ids[row]
        rid, _, coords = cid.rpartition(":")
        start, end = (int(x) for x in coords.split("-"))
        seq = sequences[rid][start - 1 : end]
        assert table.length[row] == len(seq)
        for k in KMER_SIZES:
            np.testing.assert_array_equal(table.counts(k)[row], reference_counts(seq, k), err_msg=f"{cid} k={k}")
        assert table.gc[row] == pytest.approx(reference_gc(seq), rel=1e-6)


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def examples_dataset(tmp_path_factory, examples_dir):
    out = tmp_path_factory.mktemp("features") / "examples"
    inputs = sorted(examples_dir.glob("*.fna.gz"))
    summary = featurize(
        inputs, out, FeaturizeSettings(fragment_length=5000, min_length=1000), Labels(from_filename=True)
    )
    return inputs, out, summary


def test_examples_are_featurized_exactly(examples_dataset):
    inputs, out, summary = examples_dataset
    table = FeatureTable.from_parquet(out)
    sequences = {}
    expected_contigs = 0
    for path in inputs:
        records = genome_records(path)
        sequences.update(records)
        for seq in records.values():
            full, tail = divmod(len(seq), 5000)
            expected_contigs += full + (tail >= 1000)
    assert len(table) == summary.contigs == expected_contigs
    assert len(set(table.contig_ids)) == len(table)
    assert summary.records == len(sequences)
    assert summary.record_bases == sum(map(len, sequences.values()))
    # Every contig's label is its file's stem; every contig of the phage and a sample of the rest are exact.
    stems = {rid: path.name.split(".")[0] for path in inputs for rid in genome_records(path)}
    assert [stems[c.rpartition(":")[0]] for c in table.contig_ids] == list(table.labels)
    rng = np.random.default_rng(0)
    phage = [i for i, c in enumerate(table.contig_ids) if c.startswith("Phage")]
    assert_rows_match_reference(table, sequences, phage + rng.choice(len(table), 40, replace=False).tolist())
    # Last fragments of records are where off-by-one errors live.
    tails = [
        i
        for i, c in enumerate(table.contig_ids)
        if (i + 1 == len(table)) or not table.contig_ids[i + 1].startswith(c.rpartition(":")[0] + ":")
    ]
    assert_rows_match_reference(table, sequences, tails)


def test_dataset_metadata_and_manifest(examples_dataset):
    _, out, summary = examples_dataset
    files = dataset_files(out)
    assert files.rows == summary.contigs
    assert files.manifest["schema_version"] == SCHEMA_VERSION
    assert files.manifest["settings"]["fragment_length"] == 5000
    assert files.manifest["skipped"]["too_short"] == summary.skipped.too_short
    meta = pq.read_metadata(files.paths[0])
    assert meta.row_group(0).num_rows == 1024
    assert b"kmervae.featurizer_version" in meta.schema.to_arrow_schema().metadata
    # 5 kb contigs rarely see a 7-mer more than 255 times: counts stay one byte wide.
    assert files.format.count_dtypes[7] == np.dtype("uint8")
    assert summary.output_bytes / summary.contigs < 4096


def test_real_genomes_sample_is_exact(tmp_path, examples_dir):
    inputs = sorted(examples_dir.glob("*.fna.gz"))
    out = tmp_path / "all"
    featurize(
        inputs, out, FeaturizeSettings(fragment_length=5000, min_length=1000, workers=2), Labels(from_filename=True)
    )
    table = FeatureTable.from_parquet(out)
    sequences = {}
    for path in inputs:
        sequences.update(genome_records(path))
    assert len(table) == sum(len(s) // 5000 + (len(s) % 5000 >= 1000) for s in sequences.values())
    rows = np.random.default_rng(7).choice(len(table), 60, replace=False)
    assert_rows_match_reference(table, sequences, rows.tolist())


def test_output_does_not_depend_on_workers(tmp_path, examples_dir):
    inputs = sorted(examples_dir.glob("*.fna.gz"))[:2]
    tables = []
    for workers in (1, 2, 4):  # 4: more workers than this machine's 2 cores
        out = tmp_path / f"w{workers}"
        featurize(
            inputs, out, FeaturizeSettings(fragment_length=3000, rows_per_file=150, row_group_size=50, workers=workers)
        )
        tables.append(pq.read_table(out))
        assert len(dataset_files(out).paths) > 2
    assert tables[0].equals(tables[1]) and tables[0].equals(tables[2])


def test_output_does_not_depend_on_the_input_compression(tmp_path, examples_dir):
    with gzip.open(examples_dir / "Phage_Agate_metagenomic.fna.gz", "rt") as handle:
        bases = "".join(handle.read().split("\n")[1:])
    records = [("phage_a", bases[:60_000]), ("phage_b", bases[60_000:100_000].lower())]
    tables = []
    for suffix in ("", ".gz", ".bz2", ".xz", ".zst"):
        path = write_fasta(tmp_path / f"in{suffix or '.plain'}.fa{suffix}", records, width=70)
        featurize(
            [path],
            tmp_path / f"out{suffix}",
            FeaturizeSettings(fragment_length=5000, rows_per_file=8, row_group_size=4),
        )
        tables.append(pq.read_table(tmp_path / f"out{suffix}"))
    assert len(tables[0]) == 20 and all(table.equals(tables[0]) for table in tables[1:])


@pytest.mark.parametrize("compression", ["lz4", "none"])
def test_every_compression_stores_the_same_table(tmp_path, examples_dir, compression):
    inputs = sorted(examples_dir.glob("*.fna.gz"))[:2]
    tables = {}
    for codec in ("zstd", compression):
        out = tmp_path / codec
        settings = FeaturizeSettings(fragment_length=5000, rows_per_file=300, row_group_size=100, compression=codec)
        featurize(inputs, out, settings, Labels(from_filename=True))
        assert json.loads((out / MANIFEST_NAME).read_text())["settings"]["compression"] == codec
        paths = dataset_files(out).paths
        group = pq.ParquetFile(paths[0]).metadata.row_group(0)
        (kmer7,) = [group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == "kmer7"]
        assert kmer7.compression == {"zstd": "ZSTD", "lz4": "LZ4", "none": "UNCOMPRESSED"}[codec]
        tables[codec] = pa.concat_tables(pq.read_table(p) for p in paths)
    assert tables[compression].equals(tables["zstd"])


def test_wide_counts_widen_the_whole_dataset(tmp_path):
    rng = np.random.default_rng(3)
    plain = "".join(rng.choice(list("ACGT"), 3000))
    repeat = "A" * 2000 + plain[:500]  # AAAAAAA 1,994 times: needs uint16
    path = write_fasta(tmp_path / "in.fa", [("p1", plain), ("p2", plain[::-1]), ("rep", repeat)])
    out = tmp_path / "out"
    featurize([path], out, FeaturizeSettings(min_length=100, rows_per_file=2, row_group_size=1))
    files = dataset_files(out)
    assert len(files.paths) == 2 and files.format.count_dtypes[7] == np.dtype("uint16")
    table = FeatureTable.from_parquet(out)
    assert table.kmer7[2, 0] == 1994
    for row, seq in enumerate([plain, plain[::-1], repeat]):
        for k in KMER_SIZES:
            np.testing.assert_array_equal(table.counts(k)[row], reference_counts(seq, k))


def test_a_part_widens_when_a_later_chunk_needs_it(tmp_path):
    rng = np.random.default_rng(4)
    seqs = ["".join(rng.choice(list("ACGT"), 120)) for _ in range(COUNT_CHUNK + 10)]
    seqs.append("A" * 400 + seqs[0])  # in the second chunk of the part: AAAAAAA 394 times needs uint16
    path = write_fasta(tmp_path / "in.fa", [(f"c{i}", seq) for i, seq in enumerate(seqs)])
    featurize([path], tmp_path / "out", FeaturizeSettings(min_length=100, rows_per_file=1000, row_group_size=100))
    files = dataset_files(tmp_path / "out")
    assert len(files.paths) == 1 and files.format.count_dtypes[7] == np.dtype("uint16")
    table = FeatureTable.from_parquet(tmp_path / "out")
    assert table.kmer7[-1, 0] == 394
    for row in (0, COUNT_CHUNK - 1, COUNT_CHUNK, len(seqs) - 1):  # rows copied before the widening too
        for k in KMER_SIZES:
            np.testing.assert_array_equal(table.counts(k)[row], reference_counts(seqs[row], k))


def test_skipped_contigs_are_counted_and_strict_refuses_them(tmp_path):
    good = "ACGTTGCA" * 200
    records = [("good", good), ("short", "ACGT" * 10), ("allN", "N" * 2000), ("gappy", "ACGTAC" + "N" * 1500 + "ACGTA")]
    path = write_fasta(tmp_path / "in.fa", records)
    summary = featurize([path], tmp_path / "out", FeaturizeSettings(min_length=1000))
    assert summary.contigs == 1
    assert (summary.skipped.too_short, summary.skipped.too_short_bases) == (1, 40)
    assert (summary.skipped.no_acgt_window, summary.skipped.no_acgt_window_bases) == (2, 3511)
    assert "2 with no window of 7 unambiguous bases" in "\n".join(summary.lines())
    strict = FeaturizeSettings(min_length=1000, strict=True)
    with pytest.raises(InputError, match="contig 'short' is shorter than --min-length"):
        featurize([path], tmp_path / "strict1", strict)
    # several problems in one block of records: the first record's, as when read one by one
    shorts = [(f"s{i}", "ACGT" * 10) for i in range(5)]
    for order, first in [
        ([records[0], *shorts, ("good", "A")], "contig 's0' is shorter"),
        ([records[0], records[0], *shorts], "duplicate record id 'good'"),
    ]:
        with pytest.raises(InputError, match=first):
            featurize([write_fasta(tmp_path / "several.fa", order)], tmp_path / "strict3", strict)
    path2 = write_fasta(tmp_path / "in2.fa", [records[0], records[2]])
    with pytest.raises(InputError, match="contig 'allN' has no window of 7 unambiguous bases"):
        featurize([path2], tmp_path / "strict2", strict)
    assert not (tmp_path / "strict1").exists() and not (tmp_path / "strict2").exists()
    assert no_leftovers(tmp_path)


def test_a_bad_file_leaves_no_output(tmp_path):
    good = write_fasta(tmp_path / "good.fa", [("a", "ACGT" * 500)])
    bad = write_fasta(tmp_path / "bad.fa", [("b", "ACGT" * 500), ("c", "ACGJ" * 500)])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"bad.fa: line \d+: record 'c' has character 'J'"):
        featurize([good, bad], out, FeaturizeSettings(min_length=10, rows_per_file=1, row_group_size=1))
    assert not out.exists() and no_leftovers(tmp_path)


def test_duplicate_ids_are_refused_within_and_across_files(tmp_path, monkeypatch):
    monkeypatch.setattr(fasta_blocks, "BLOCK_BYTES", 64)  # a block per record: reading threads wait on their queues
    a = write_fasta(tmp_path / "a.fa", [("x", "ACGT" * 300), ("y", "ACGT" * 300)])
    b = write_fasta(tmp_path / "b.fa", [("x desc", "ACGT" * 300)])
    more = [write_fasta(tmp_path / f"m{i}.fa", [(f"m{i}_{j}", "ACGT" * 30) for j in range(9)]) for i in range(3)]
    with pytest.raises(InputError, match=rf"b.fa: line 1: duplicate record id 'x' \(also in {a}\)"):
        try:
            # 8 workers: files are read two at a time, later ones by their own threads
            featurize([a, b, *more], tmp_path / "out", FeaturizeSettings(workers=8))
        except InputError:
            # the run's reading and writing threads are stopped before the error reaches the caller
            assert not [t.name for t in threading.enumerate() if t.name.startswith(("read-", "featurize"))]
            raise
    c = write_fasta(tmp_path / "c.fa", [("x", "ACGT" * 300), ("y", "AC"), ("x", "ACGT")])
    with pytest.raises(InputError, match=r"line 24: duplicate record id 'x' \(also earlier in this file\)"):
        featurize([c], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    path = write_fasta(tmp_path / "a.fa", [("x", "ACGT" * 300)])
    out = tmp_path / "out"
    featurize([path], out)
    first = (out / MANIFEST_NAME).read_text()
    with pytest.raises(OutputError, match="pass --overwrite"):
        featurize([path], out)
    path2 = write_fasta(tmp_path / "b.fa", [("y", "ACGT" * 400), ("z", "ACGT" * 400)])
    summary = featurize([path2], out, FeaturizeSettings(overwrite=True))
    assert summary.contigs == 2 and (out / MANIFEST_NAME).read_text() != first
    assert list(FeatureTable.from_parquet(out).contig_ids) == ["y", "z"]
    assert no_leftovers(tmp_path)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(OutputError, match="is not a kmervae feature dataset"):
        featurize([path], other, FeaturizeSettings(overwrite=True))
    assert (other / "notes.txt").read_text() == "precious"


def test_labels_table_reports_unlabeled_and_unused(tmp_path):
    path = write_fasta(tmp_path / "a.fa", [("x", "ACGT" * 300), ("y", "ACGT" * 300)])
    table = tmp_path / "labels.tsv"
    table.write_text("contig_id\tlabel\nx\tgenomeX\nq\tgenomeQ\n")
    summary = featurize([path], tmp_path / "out", labels=Labels.from_tsv(table))
    assert (summary.unlabeled_contigs, summary.labels_unused) == (1, 1)
    assert list(FeatureTable.from_parquet(tmp_path / "out").labels) == ["genomeX", None]


def test_nothing_to_write_is_an_error(tmp_path):
    path = write_fasta(tmp_path / "a.fa", [("x", "ACGT")])
    with pytest.raises(InputError, match="no contig left to write: 1 shorter than --min-length"):
        featurize([path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fragment_length": 5}, "--fragment-length must be >= 7"),
        ({"min_length": -1}, "--min-length must be >= 0"),
        ({"fragment_length": 1000, "min_length": 2000}, r"--min-length \(2000\) is larger than --fragment-length"),
        ({"rows_per_file": 0}, "--rows-per-file must be >= 1"),
        ({"compression": "gzip"}, "--compression must be one of zstd, lz4, none"),
        ({"rows_per_file": 10, "row_group_size": 20}, "--row-group-size must be between 1 and --rows-per-file"),
        ({"workers": 0}, "--workers must be >= 1"),
    ],
)
def test_bad_settings_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FeaturizeSettings(**kwargs)


def test_progress_bar_shows_bases_per_second(tmp_path, capsys, examples_dir):
    inputs = sorted(examples_dir.glob("*.fna.gz"))[:2]
    featurize(inputs, tmp_path / "out", FeaturizeSettings(fragment_length=5000), progress=True)
    err = capsys.readouterr().err
    assert "featurize: 100%" in err and "Mbp/s" in err


def test_a_killed_featurizer_leaves_nothing_that_looks_complete(tmp_path, examples_dir):
    import os
    import signal
    import subprocess
    import sys
    import time

    # A 20-Mbp input written in many records, so the run is still writing when it is killed.
    rng = np.random.default_rng(5)
    big = write_fasta(tmp_path / "big.fa", [(f"r{i}", "".join(rng.choice(list("ACGT"), 200_000))) for i in range(100)])
    out = tmp_path / "features"
    cmd = [
        sys.executable,
        "-m",
        "kmervae.cli",
        "featurize",
        str(big),
        "-o",
        str(out),
        "--fragment-length",
        "5000",
        "--rows-per-file",
        "200",
        "--row-group-size",
        "100",
        "--quiet",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob(".features.partial-*/part-*.parquet")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".features.partial-*/part-*.parquet")), (
        "killed before it wrote a part: the test did not exercise a partial write"
    )
    assert not out.exists()  # nothing under the output name: no reader can mistake it for a dataset
    with pytest.raises(InputNotFoundError):
        dataset_files(tmp_path / "features")
    # Running again produces the whole dataset and cleans up the killed run's staging folder.
    rerun = subprocess.run(cmd[:-3] + ["--workers", "1"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "cleaned   1 partial output(s) left by an interrupted earlier run" in rerun.stdout
    assert not list(tmp_path.glob(".features.partial-*"))
    table = FeatureTable.from_parquet(out)
    assert len(table) == 100 * 40 and int(table.length.sum()) == 100 * 200_000
