"""`kmervae bin --split-by-sample`: clusters of a multi-sample catalogue split into one bin per sample."""

from __future__ import annotations

import csv
import json

import pytest

from kmervae.apply.binning import bin_contigs
from kmervae.cli import main
from tests.conftest import EXAMPLES, read_genome_record, tnf_embedded_assembly

GENOMES = ("Helicobacter_pylori_G27", "Staphylococcus_aureus_N315")
# What `kmervae concat` makes of three samples' assemblies: H. pylori in samples 1 and 2,
# S. aureus in samples 1 and 3.
CATALOGUE = (("S1CNODE_1", 0), ("S1CNODE_2", 1), ("S2CNODE_1", 0), ("S3CNODE_7", 1))


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    genomes = [read_genome_record(EXAMPLES / f"{name}.fna.gz")[1] for name in GENOMES]
    records = [(rid, genomes[g]) for rid, g in CATALOGUE]
    labels = {rid: GENOMES[g] for rid, g in CATALOGUE}
    return tnf_embedded_assembly(tmp_path_factory.mktemp("catalogue"), records, labels, 20_000)


def read_tsv(path):
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_each_cluster_becomes_one_bin_per_sample_judged_in_its_sample(catalogue, tmp_path):
    """Every sample holds each of its genomes whole, so a cluster's bin in a sample has the
    cluster's recall and purity there; a genome counts once however many samples recover it."""
    common = dict(labels_tsv=catalogue["labels"], fasta=[catalogue["fasta"]])
    clusters = bin_contigs(catalogue["embeddings"], tmp_path / "clusters", **common)
    out = tmp_path / "bins"
    result = bin_contigs(catalogue["embeddings"], out, split_by_sample="C", **common)
    cluster_of = {r["contig_id"]: r["bin"] for r in read_tsv(tmp_path / "clusters" / "bins.tsv")}
    rows = read_tsv(out / "bins.tsv")
    for row in rows:  # the same clusters, each contig in its own sample's part of its cluster
        assert row["cluster"] == cluster_of[row["contig_id"]] and row["contig_id"].startswith(row["sample"] + "C")
        assert row["bin"] == f"{row['sample']}_{row['cluster']}"
    samples_of = {}
    for row in rows:
        samples_of.setdefault(row["cluster"], set()).add(row["sample"])
    assert sorted(result.split.names) == sorted(f"{s}_{c}" for c, ss in samples_of.items() for s in ss)
    near_complete = {n for n, b in clusters.quality.bins.items() if b.recall >= 0.9 and b.purity >= 0.95}
    assert near_complete, "the clusterer recovers at least one genome whole"
    for name, judged in result.quality.bins.items():
        sample, cluster = name.split("_", 1)
        whole = clusters.quality.bins[cluster]
        assert (judged.genome, judged.recall, judged.purity) == (f"{sample}C{whole.genome}", whole.recall, whole.purity)
    assert result.quality.near_complete == sum(len(samples_of[c]) for c in near_complete)
    assert result.dereplicated == len({clusters.quality.bins[c].genome for c in near_complete})
    assert result.samples == {
        s: {
            "bins": sum(s in ss for ss in samples_of.values()),
            "near_complete": sum(s in samples_of[c] for c in near_complete),
        }
        for s in ("S1", "S2", "S3")
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split_by_sample"] == {
        "separator": "C",
        "samples": result.samples,
        "dereplicated_near_complete": result.dereplicated,
    }
    assert sorted(p.name for p in (out / "fasta").iterdir()) == sorted(f"{n}.fna" for n in result.split.names)
    assert any("dereplicated" in line for line in result.lines())
    assert result.metrics()["bins/dereplicated_near_complete"] == result.dereplicated  # what --mlflow-run logs


def test_a_contig_without_a_sample_is_one_line_and_writes_nothing(catalogue, tmp_path, capsys):
    out = tmp_path / "bins"
    args = ["bin", str(catalogue["embeddings"]), "-o", str(out), "--quiet", "--split-by-sample", "X"]
    assert main(args) == 2  # the ids are S1CNODE_1:1-20000, ...: no 'X' after a sample
    err = capsys.readouterr().err.strip()
    assert "--split-by-sample X: contig 'S1CNODE_1:1-20000' has no sample before a 'X'" in err
    assert "kmervae concat" in err and len(err.splitlines()) == 1 and not out.exists()
