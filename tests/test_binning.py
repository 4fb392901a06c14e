"""Binning: `kmervae bin` on real genomes, bin quality by hand, bad inputs, and val/nc_bins."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from kmervae.apply.binning import bin_contigs
from kmervae.apply.embed import read_embeddings, write_embeddings
from kmervae.apply.evaluate import baselines
from kmervae.base.errors import ConfigError, InputError, OutputError
from kmervae.base.feature_table import FeatureTable
from kmervae.binning import bins
from tests.conftest import read_genome_record, tnf_embedded_assembly, write_fasta

FAR_APART = ("Staphylococcus_aureus_N315", "Helicobacter_pylori_G27")
"""Two bundled genomes of different phyla (GC 33% and 39%): z-scored TNF of their 20 kb
fragments makes two pure, complete bins with the default clusterer."""
FRAGMENT = 20_000
CHIMERA = 100_000
"""Bases each genome gives the chimera record (five fragments from each)."""


@pytest.fixture(scope="module")
def two_genomes(tmp_path_factory, examples_dir):
    """The two genomes and a chimera of both (unlabelled) as one assembly, cut into 20 kb contigs,
    featurized, and embedded as z-scored TNF (a real composition embedding, in embed's schema)."""
    records = [read_genome_record(examples_dir / f"{name}.fna.gz") for name in FAR_APART]
    chimera = ("chimera", records[0][1][:CHIMERA] + records[1][1][:CHIMERA])
    labels = {rid: name for (rid, _), name in zip(records, FAR_APART, strict=True)}
    return tnf_embedded_assembly(tmp_path_factory.mktemp("binning"), [*records, chimera], labels, FRAGMENT)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def read_fasta(path: Path) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:]
            assert name not in out, f"{name} written twice in {path.name}"
            out[name] = []
        else:
            out[name].append(line)
    return {name: "".join(lines) for name, lines in out.items()}


def test_two_genomes_far_apart_give_two_pure_bins(two_genomes, tmp_path):
    result = bin_contigs(two_genomes["embeddings"], tmp_path / "bins", fasta=[two_genomes["fasta"]])
    assert result.bins == 2 and result.quality is not None
    q = result.quality
    assert q.near_complete == 2 and q.genomes == 2
    assert sorted(b.genome for b in q.bins.values()) == sorted(FAR_APART)
    assert all(b.purity == 1.0 and b.recall >= 0.99 for b in q.bins.values())
    # The tables agree with the quality: bin_summary holds each bin's contigs and bases.
    rows = read_tsv(tmp_path / "bins" / "bins.tsv")
    summary = {r["bin"]: r for r in read_tsv(tmp_path / "bins" / "bin_summary.tsv")}
    assert set(summary) == {"bin_001", "bin_002"}
    for name, row in summary.items():
        assert int(row["contigs"]) == sum(r["bin"] == name for r in rows)
        assert row["genome"] == q.bins[name].genome
    # GC of each bin, weighted by bases: S. aureus 0.328, H. pylori 0.389.
    gc = {row["genome"]: float(row["gc"]) for row in summary.values()}
    assert 0.32 < gc[FAR_APART[0]] < 0.335 and 0.38 < gc[FAR_APART[1]] < 0.395


def test_bins_tsv_and_fasta_hold_every_binned_base_once(two_genomes, tmp_path):
    result = bin_contigs(two_genomes["embeddings"], tmp_path / "bins", fasta=[two_genomes["fasta"]])
    source = {name.split()[0]: seq for name, seq in read_fasta(two_genomes["fasta"]).items()}
    assignment = {r["contig_id"]: r["bin"] for r in read_tsv(tmp_path / "bins" / "bins.tsv")}
    ids = read_embeddings(two_genomes["embeddings"]).ids
    assert sorted(assignment) == sorted(ids)  # every embedded contig has one line
    written = {path.stem: read_fasta(path) for path in sorted((tmp_path / "bins" / "fasta").glob("*.fna"))}
    assert sorted(written) == ["bin_001", "bin_002"] and result.fasta_files == 2
    # Every binned contig's bases are in its own bin's file exactly once: inside its whole record
    # (all of the record's fragments went to that bin) or as the fragment itself.
    for cid, name in assignment.items():
        record, span = cid.rsplit(":", 1)
        start, end = (int(v) for v in span.split("-"))
        files = [b for b, entries in written.items() if cid in entries or record in entries]
        if name == "unbinned":
            assert files == []
            continue
        assert files == [name], (cid, files)
        entries = written[name]
        if record in entries:
            assert cid not in entries and entries[record] == source[record]
        else:
            assert entries[cid] == source[record][start - 1 : end]
    # The chimera's fragments went to two bins: reported, each fragment written to its own.
    split = read_tsv(tmp_path / "bins" / "split_records.tsv")
    assert result.split_records == 1 and {r["record"] for r in split} == {"chimera"}
    assert sorted(int(r["bases"]) for r in split) == [CHIMERA, CHIMERA]
    assert all("chimera" not in entries for entries in written.values())


def test_quality_counts_bases_by_hand():
    # Genome A: 100 + 300 + 600 = 1,000 bases; genome B: 500 + 500; one unlabelled contig.
    labels = ["A", "A", "A", "B", "B", None]
    lengths = [100, 300, 600, 500, 500, 10_000]
    codes = [0, 0, 1, 1, bins.UNBINNED, 1]
    q = bins.bin_quality(codes, labels, lengths)
    assert q.genomes == ["A", "B"] and list(q.main) == [0, 0]
    # Bin 0: 400 bases of A, pure, recall 0.4. Bin 1: 600 A + 500 B (the unlabelled contig takes no part).
    np.testing.assert_allclose(q.purity, [1.0, 600 / 1100])
    np.testing.assert_allclose(q.recall, [0.4, 0.6])
    assert q.count(0.4, 1.0) == 1 and q.count(0.5, 0.5) == 1 and q.near_complete == 0
    q = bins.bin_quality([0, 0, 0, 1, 1, 1], labels, lengths)
    assert q.near_complete == 2 and q.grid()["recall>=0.99,purity>=0.95"] == 2


def test_small_clusters_stay_unbinned_and_bins_are_numbered_by_size():
    raw = np.array([5, 5, 7, 7, 7, 9, -1])
    lengths = np.array([100, 100, 50, 50, 50, 1000, 5000])
    np.testing.assert_array_equal(bins.renumber(raw, lengths, 160), [1, 1, -1, -1, -1, 0, -1])
    np.testing.assert_array_equal(bins.renumber(raw, lengths, 0), [1, 1, 2, 2, 2, 0, -1])


def test_bad_input_at_scale_is_one_line(tmp_path, capsys):
    """Above the exact-neighbour limit (the approximate graph's size): an assembly FASTA that
    lacks some embedded contigs and a truncated embedding file are still one line, exit 2,
    nothing written, before any clustering."""
    from kmervae.cli import main

    n = bins.EXACT_NEIGHBOURS_MAX + 10_000
    ids = np.array([f"c{i}" for i in range(n)], dtype=object)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    embeddings = write_embeddings(tmp_path / "emb.parquet", ids, None, np.full(n, 40), np.full(n, 0.5), vectors)
    with open(tmp_path / "assembly.fna", "w") as handle:  # every contig but the last 7
        handle.writelines(f">{cid}\n{'ACGT' * 10}\n" for cid in ids[:-7])

    def refused(*args: str) -> str:
        assert main(["bin", *args, "-o", str(tmp_path / "bins")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and not (tmp_path / "bins").exists()
        return err

    err = refused(str(embeddings), "--fasta", str(tmp_path / "assembly.fna"))
    assert f"--fasta: 7 of the {n:,} embedded contigs are not in {tmp_path / 'assembly.fna'}" in err
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(embeddings.read_bytes()[: embeddings.stat().st_size // 2])
    assert "not a readable parquet file" in refused(str(truncated))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["assembly.fna", "emb.parquet", "truncated.parquet"]


def test_bad_inputs_are_one_clear_error_and_leave_nothing(two_genomes, tmp_path):
    embeddings = two_genomes["embeddings"]
    out = tmp_path / "bins"
    other = write_fasta(tmp_path / "other.fna", [("unrelated", "ACGT" * 1000)])
    n = len(read_embeddings(embeddings).ids)  # 20 kb fragments of the two genomes and the chimera
    with pytest.raises(InputError, match=rf"--fasta: {n} of the {n} embedded contigs are not in .*other.fna"):
        bin_contigs(embeddings, out, fasta=[other])
    short = write_fasta(tmp_path / "short.fna", [("chimera", "ACGT" * 1000)])
    with pytest.raises(InputError, match=r"contig 'chimera:1-20000': bases 1-20000 lie beyond record 'chimera'"):
        bin_contigs(embeddings, out, fasta=[short])
    with pytest.raises(InputError, match=rf"has no row for 2 of the {n} .* the embeddings come from another dataset"):
        table = FeatureTable.from_parquet(two_genomes["features"])
        ids = np.asarray(table.contig_ids, dtype=object)
        ids[:2] = ["elsewhere:1-20000", "elsewhere:20001-40000"]
        moved = write_embeddings(tmp_path / "moved.parquet", ids, None, table.length, table.gc, np.eye(len(ids), 4))
        bin_contigs(moved, out, labels_from_features=two_genomes["features"])
    with pytest.raises(ConfigError, match="--min-bin-size must be >= 0"):
        bin_contigs(embeddings, out, min_bin_size=-1)
    with pytest.raises(ConfigError, match="--resolution must be > 0, got 0"):
        bin_contigs(embeddings, out, resolution=0)
    other_labels = tmp_path / "other.tsv"
    other_labels.write_text("unrelated\tgenome\n")
    with pytest.raises(InputError, match=r"other.tsv: labels none of the embedded contigs .* for this assembly\?"):
        bin_contigs(embeddings, out, labels_tsv=other_labels)
    old = tmp_path / "old.parquet"  # written before embed copied lengths
    pq.write_table(pq.read_table(embeddings).drop_columns(["length", "gc"]), old)
    with pytest.raises(InputError, match=r"has no 'length' column .* run 'kmervae embed' again, or give --fasta"):
        bin_contigs(old, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "moved.parquet", "old.parquet", "other.fna", "other.tsv", "short.fna"
    ]  # fmt: skip
    out.mkdir()
    with pytest.raises(OutputError, match="exists; choose another -o"):
        bin_contigs(embeddings, out)


def test_cli_bins_reports_quality_and_refuses_bad_input_in_one_line(two_genomes, tmp_path, capsys):
    from kmervae.cli import main

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "kmervae.cli", "bin", *map(str, args)], capture_output=True, text=True, timeout=300
        )

    done = run(two_genomes["embeddings"], "-o", tmp_path / "bins", "--labels", two_genomes["labels"], "--quiet")
    assert done.returncode == 0, done.stderr
    assert "quality   2 near-complete bin(s)" in done.stdout and "purity>=0.95" in done.stdout
    summary = json.loads((tmp_path / "bins" / "summary.json").read_text())
    assert summary["bins"] == 2 and summary["quality"]["near_complete"] == 2 and summary["method"] == "leiden"
    # Refusals in this process (the console script's path is the same `main`): one line, status 2.
    assert main(["bin", str(two_genomes["embeddings"]), "-o", str(tmp_path / "bins")]) == 2
    assert capsys.readouterr().err.strip() == f"kmervae bin: error: {tmp_path / 'bins'}: exists; pass --overwrite"
    assert main(["bin", str(tmp_path / "nope.parquet"), "-o", str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kmervae bin: error: ") and "no such embedding file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b2").exists()


def test_hdbscan_is_the_other_method(two_genomes):
    data = read_embeddings(two_genomes["embeddings"])
    codes = bins.cluster(data.vectors, data.lengths, "hdbscan")
    q = bins.bin_quality(codes, data.labels, data.lengths)
    assert q.purity.min() >= 0.95 and len(q.main) >= 2  # pure, if more fragmented than leiden


def test_val_nc_bins_counts_near_complete_bins_of_the_validation_contigs(two_genomes):
    data = read_embeddings(two_genomes["embeddings"])
    assert bins.near_complete_bins(data.vectors, data.labels, data.lengths) == 2.0
    scrambled = np.random.default_rng(0).normal(size=data.vectors.shape)  # no composition signal
    assert bins.near_complete_bins(scrambled, data.labels, data.lengths) == 0.0
    assert np.isnan(bins.near_complete_bins(data.vectors, [None] * len(data.ids), data.lengths))


def test_bins_are_logged_to_an_mlflow_run(two_genomes, tmp_path, monkeypatch, capsys):
    from kmervae.cli import main
    from kmervae.tracking.tracker import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    tracker = Tracker("tests", "bins")
    assert main(["bin", str(two_genomes["embeddings"]), "-o", "bins", "--quiet", "--mlflow-run", tracker.run_id]) == 0
    assert f"mlflow    logged to run {tracker.run_id}" in capsys.readouterr().out
    metrics = tracker.client.get_run(tracker.run_id).data.metrics
    assert metrics["bins/near_complete"] == 2 and metrics["bins/count"] == 2
    logged = {Path(a.path).name for a in tracker.client.list_artifacts(tracker.run_id, "bins")}
    assert {"bins.tsv", "bin_summary.tsv", "summary.json"} <= logged
    assert main(["bin", str(two_genomes["embeddings"]), "-o", "b2", "--quiet", "--mlflow-run", "0" * 32]) == 2
    assert "no such run" in capsys.readouterr().err


@pytest.fixture(scope="module")
def example_tnf(example_features):
    """The readout of z-scored TNF of the bundled examples' 1,558 contigs of 5 kb (real contigs)."""
    ids = np.asarray(FeatureTable.from_parquet(example_features).contig_ids, dtype=object)
    return bins.readout(baselines(example_features, ids, 8)["tnf_zscore"])


def test_the_approximate_graph_finds_the_exact_neighbours(example_tnf):
    x = example_tnf
    exact, _ = bins.exact_neighbours(x, bins.KNN_NEIGHBOURS)
    found, sims = bins.approximate_neighbours(x, bins.KNN_NEIGHBOURS)
    assert found.shape == exact.shape == (len(x), bins.KNN_NEIGHBOURS)
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist(), strict=True))
    assert hits / exact.size >= 0.95
    assert not (found == np.arange(len(x))[:, None]).any()  # no contig is its own neighbour
    # The similarities are the cosines of the pairs found (the Leiden graph's edge weights).
    assert np.allclose(sims, np.einsum("ij,ikj->ik", x, x[found]), atol=1e-5)
    again, _ = bins.approximate_neighbours(x, bins.KNN_NEIGHBOURS)
    assert np.array_equal(found, again)  # the same graph each time: bins are reproducible


def test_the_graph_is_exact_up_to_the_threshold_and_approximate_above(example_tnf):
    x = example_tnf
    exact = bins.exact_neighbours(x, bins.KNN_NEIGHBOURS)[0]
    approximate = bins.approximate_neighbours(x, bins.KNN_NEIGHBOURS)[0]
    assert not np.array_equal(exact, approximate)  # the two methods are told apart on this set
    assert np.array_equal(bins.nearest_neighbours(x, bins.KNN_NEIGHBOURS, exact_max=len(x))[0], exact)
    assert np.array_equal(bins.nearest_neighbours(x, bins.KNN_NEIGHBOURS, exact_max=len(x) - 1)[0], approximate)


def test_bins_from_the_approximate_graph_are_the_exact_graphs_bins(two_genomes):
    ids, vectors, labels, lengths, _ = read_embeddings(two_genomes["embeddings"])
    exact = bins.cluster(vectors, lengths)
    approximate = bins.cluster(vectors, lengths, exact_max=0)
    assert bins.bin_quality(approximate, labels, lengths).near_complete == 2
    assert np.array_equal(approximate, exact)


def test_several_embeddings_of_the_same_contigs_bin_as_one_ensemble(two_genomes, tmp_path, capsys):
    """`kmervae bin A B`: each contig's readouts side by side, rows matched by contig id whatever each
    file's order; a file of other contigs is refused in one line before anything is written."""
    from kmervae.apply.embed import read_ensemble
    from kmervae.cli import main

    first = read_embeddings(two_genomes["embeddings"])
    table = FeatureTable.from_parquet(two_genomes["features"])
    kmer3 = np.log(table.kmer3 + 1.0)  # a second, different embedding of the same contigs: 3-mer profiles
    kmer3 = (kmer3 - kmer3.mean(axis=0)) / (kmer3.std(axis=0) + 1e-9)
    ids = np.asarray(table.contig_ids, dtype=object)
    back = slice(None, None, -1)  # written in the reverse order
    second = write_embeddings(tmp_path / "k3.parquet", ids[back], None, table.length[back], table.gc[back], kmer3[back])
    both = read_ensemble([two_genomes["embeddings"], second])
    assert list(both.ids) == list(first.ids) and both.vectors.shape == (len(ids), first.vectors.shape[1] + 32)
    row = {cid: i for i, cid in enumerate(ids)}
    expected = kmer3[[row[cid] for cid in first.ids]]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(both.vectors[:, first.vectors.shape[1] :], expected, atol=1e-6)
    assert np.allclose(np.linalg.norm(both.vectors, axis=1), np.sqrt(2), atol=1e-5)  # one unit readout each

    result = bin_contigs([two_genomes["embeddings"], second], tmp_path / "bins", labels_tsv=two_genomes["labels"])
    assert result.quality.near_complete == 2

    fewer = write_embeddings(tmp_path / "fewer.parquet", ids[:-3], None, table.length[:-3], table.gc[:-3], kmer3[:-3])
    out = tmp_path / "refused"
    assert main(["bin", str(two_genomes["embeddings"]), str(fewer), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"kmervae bin: error: {fewer}: holds {len(ids) - 3:,} contigs, 0 of them not in {two_genomes['embeddings']} "
        f"({len(ids):,}); embed the same feature dataset with every model"
    )
    assert not out.exists()
