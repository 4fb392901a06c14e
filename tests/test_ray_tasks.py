"""`kmervae featurize --engine ray` and `kmervae abundance --engine ray` on a real local Ray
cluster: the local engine's files, and refusals that are one line with nothing written."""

from __future__ import annotations

import json

import pytest

from kmervae.base.feature_contract import MANIFEST_NAME
from tests.conftest import EXAMPLES, write_fasta
from tests.test_abundance import SAMPLE1, write_bam

ray = pytest.importorskip("ray")
cluster = pytest.mark.cluster  # starts a Ray cluster or a server


def run(capsys, *args: str) -> tuple[int, str, str]:
    """`kmervae ARGS` in this process (on the session's cluster): exit code, stdout, stderr."""
    from kmervae.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@cluster
def test_featurize_on_ray_writes_the_local_engine_s_files(local_ray, tmp_path, capsys):
    """Labels, depths and fragments through both engines: every part file the same bytes, the
    same manifest but for its time stamp and the workers."""
    inputs = [str(p) for p in sorted(EXAMPLES.glob("*.fna.gz"))]
    common = [
        "--fragment-length", "5000", "--rows-per-file", "200", "--row-group-size", "100", "--label-from-filename",
        "--abundance", str(EXAMPLES / "depth.tsv"), "--quiet",
    ]  # fmt: skip
    code, _, err = run(capsys, "featurize", *inputs, "-o", str(tmp_path / "local"), *common)
    assert code == 0, err
    code, out, err = run(capsys, "featurize", *inputs, "-o", str(tmp_path / "ray"), *common, "--engine", "ray")
    assert code == 0, err
    assert "2 worker(s)" in out and f"output    {tmp_path / 'ray'}" in out
    local = sorted(p.name for p in (tmp_path / "local").glob("*.parquet"))
    assert len(local) > 4 and local == sorted(p.name for p in (tmp_path / "ray").glob("*.parquet"))
    for name in local:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    a, b = (json.loads((tmp_path / d / MANIFEST_NAME).read_text()) for d in ("local", "ray"))
    a.pop("created"), b.pop("created")
    assert a == b


@cluster
def test_parts_widened_on_ray_are_the_local_engine_s(local_ray, tmp_path, capsys):
    """One contig with a 7-mer seen 1,994 times makes the dataset uint16: the Ray engine's tasks
    rewrite the other parts as the local engine's threads do."""
    import numpy as np

    from kmervae.base.feature_table import dataset_files

    rng = np.random.default_rng(3)
    plain = ["".join(rng.choice(list("ACGT"), 3000)) for _ in range(5)]
    fasta = write_fasta(tmp_path / "in.fa", [*((f"p{i}", s) for i, s in enumerate(plain)), ("rep", "A" * 2000)])
    common = ["--min-length", "100", "--rows-per-file", "2", "--row-group-size", "1", "--quiet"]
    for engine in ("local", "ray"):
        code, _, err = run(capsys, "featurize", str(fasta), "-o", str(tmp_path / engine), *common, "--engine", engine)
        assert code == 0, err
    local = dataset_files(tmp_path / "local")
    assert local.format.count_dtypes[7] == np.dtype("uint16") and len(local.paths) == 3
    for path in local.paths:
        assert path.read_bytes() == (tmp_path / "ray" / path.name).read_bytes(), path.name


@cluster
def test_abundance_on_ray_writes_the_local_engine_s_table(local_ray, tmp_path, capsys):
    bams = []
    for i in range(5):  # more files than the cluster's 2 CPUs: tasks queue and come back in order
        reads = SAMPLE1 if i % 2 else [("A", 75 + 10 * i, "250M", 0, 0, 60), ("C", 0, "200M", 1, 0, 60)]
        bams.append(str(write_bam(tmp_path / f"s{i}.bam", reads)))
    for fmt in ("metabat", "vamb"):
        code, _, err = run(capsys, "abundance", *bams, "-o", str(tmp_path / f"local.{fmt}"), "--format", fmt)
        assert code == 0, err
        code, out, err = run(
            capsys, "abundance", *bams, "-o", str(tmp_path / f"ray.{fmt}"), "--format", fmt, "--engine", "ray"
        )
        assert code == 0, err
        assert "as Ray tasks, 2 at a time" in err and "[5/5] s4.bam" in err and "samples   5" in out
        assert (tmp_path / f"local.{fmt}").read_bytes() == (tmp_path / f"ray.{fmt}").read_bytes()


@cluster
def test_ray_engine_refusals_are_one_line_and_write_nothing(local_ray, tmp_path, capsys):
    """More tasks than the cluster has CPUs, and inputs refused inside a task (a contig with no
    window of 7 unambiguous bases under --strict, a BAM from another assembly): one line, exit 2,
    no output and no staging folder."""
    fasta = write_fasta(tmp_path / "asm.fna", [("good", "ACGTTGCA" * 200), ("gaps", "ACGTNN" * 300)])
    good = str(write_bam(tmp_path / "s1.bam", SAMPLE1))
    other = str(write_bam(tmp_path / "o.bam", [], contigs=[("A", 400), ("B", 101), ("C", 200)]))
    features, table = tmp_path / "features", tmp_path / "depth.tsv"
    cases = [
        (["featurize", str(fasta), "-o", str(features), "--engine", "ray", "--workers", "9"],
         "cannot run 9 featurize tasks at once: the cluster has 2 CPU(s) for them"),
        (["featurize", str(fasta), "-o", str(features), "--engine", "ray", "--strict", "--min-length", "100"],
         "no window of 7 unambiguous bases"),
        (["abundance", good, "-o", str(table), "--engine", "ray", "--workers", "3"],
         "cannot run 3 abundance tasks at once: the cluster has 2 CPU(s) for them"),
        (["abundance", good, other, "-o", str(table), "--engine", "ray"],
         "o.bam: its reads are mapped to other contigs than"),
        (["abundance", good, str(tmp_path / "missing.bam"), "-o", str(table), "--engine", "ray"],
         "missing.bam: no such BAM file"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = run(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err, err
        assert message in lines[-1] and lines[-1].startswith(f"kmervae {args[0]}: error: "), lines[-1]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["asm.fna", "o.bam", "s1.bam"]
