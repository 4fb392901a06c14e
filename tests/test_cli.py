"""The `kmervae` command as a user runs it: help, summaries, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kmervae.features.feature_writer import CODECS
from tests.conftest import REPO, kmervae, write_bytes, write_fasta


def test_help_explains_commands_and_defaults():
    top = kmervae("--help")
    assert top.returncode == 0 and "featurize" in top.stdout
    sub = kmervae("featurize", "--help")
    assert sub.returncode == 0
    for text in (
        "--fragment-length",
        "--min-length",
        "(default: 1000)",
        "--label-from-filename",
        "--labels",
        "--workers",
        "--compression {" + ",".join(CODECS) + "}",
    ):
        assert text in sub.stdout


def test_featurize_prints_a_summary(tmp_path, examples_dir):
    inputs = sorted(str(p) for p in examples_dir.glob("Phage*.fna.gz"))
    out = tmp_path / "phage"
    result = kmervae("featurize", *inputs, "-o", str(out), "--fragment-length", "5000", "--label-from-filename")
    assert result.returncode == 0, result.stderr
    assert "read      1 records (0.18 Mbp)" in result.stdout
    assert "wrote     36 contigs" in result.stdout  # 179,382 bp: 35 full fragments + a 4,382 bp tail
    assert f"output    {out}" in result.stdout
    assert (out / "_kmervae_dataset.json").exists()


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (lambda d: None, ["missing.fa"], "missing.fa: no such file"),
        (
            lambda d: write_bytes(d / "bad.fa", b">a\nACGT\n>b\nAC!T\n"),
            ["bad.fa"],
            "bad.fa: line 4: record 'b' has character '!'",
        ),
        (
            lambda d: (d / "t.fa.gz").write_bytes(b"\x1f\x8b\x08\x00garbage"),
            ["t.fa.gz"],
            "corrupt or truncated gz data",
        ),
        (
            lambda d: write_fasta(d / "a.fa", [("a", "ACGT" * 300)]),
            ["a.fa", "--fragment-length", "3"],
            "--fragment-length must be >= 7",
        ),
        (
            lambda d: write_fasta(d / "a.fa", [("a", "ACGT" * 300)]),
            ["a.fa", "--labels", "none.tsv"],
            "none.tsv: no such file",
        ),
    ],
)
def test_user_errors_are_one_line_exit_2_and_leave_nothing(tmp_path, setup, args, message):
    setup(tmp_path)
    result = kmervae("featurize", *args, "-o", "out", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kmervae featurize: error: ") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_train_and_describe_commands(tmp_path, example_features):
    out = tmp_path / "run"
    result = kmervae(
        "train",
        str(example_features),
        "--engine",
        "local",
        "--preset",
        "tiny",
        "--epochs",
        "2",
        "--out",
        str(out),
        "--set",
        "data.max_samples=300",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "trained   2 epochs" in result.stdout and (out / "best.pt").exists() and (out / "metrics.jsonl").exists()
    # The seed's per-epoch view: a header once, a row per epoch, each group's error and the gate's.
    rows = result.stderr[result.stderr.index("epoch ") :].splitlines()[:3]
    assert all(name in rows[0] for name in ("mse_7_pres", "mse_7_abs", "present", "gate_acc", "mse_gc", "kl", "lr"))
    assert rows[1].startswith("1/2 *") and rows[2].startswith("2/2") and len(rows[1]) == len(rows[0])
    assert "* the best epoch" in (out / "epochs.txt").read_text()
    described = kmervae("describe", "--preset", "outline", "-o", str(tmp_path / "outline.svg"))
    assert described.returncode == 0 and "94,454,819" in described.stdout and (tmp_path / "outline.svg").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "DATA", "--set", "model.latent_dim=0"], "model.latent_dim=0 is invalid"),
        (["train", "DATA", "--set", "train.optimizer=sgd"], "unknown key train.optimizer"),
        (["train", "DATA", "--preset", "huge"], "--preset 'huge' is unknown"),
        (["train", "nowhere"], "nowhere: no such feature dataset"),
        (["describe", "-o", "model.pdf"], "the diagram is written as .png or .svg"),
        (["describe", "--set", "model.abundance_widths=[8]"], "give the number of samples of the abundance column"),
        (
            ["train", "DATA", "--engine", "local", "--no-mlflow", "--set", "model.abundance_widths=[8]"],
            "model.abundance_widths=[8] needs features with abundance",
        ),
        # A request the running cluster cannot fit: test_ray_engine (on the session's cluster).
    ],
)
def test_train_and_describe_errors_are_one_line(tmp_path, example_features, args, message):
    args = [str(example_features) if a == "DATA" else a for a in args]
    result = kmervae(*args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


HEAVY = ("torch", "ray", "mlflow", "optuna", "sklearn", "pandas", "onnxruntime", "scipy.linalg", "cffi")
"""Packages featurizing and --help load none of: those whose import takes a second or more, and
scipy.linalg and cffi, which numba's set-up imports unless the CLI keeps it from (0.14 s)."""


def test_featurize_and_help_import_nothing_heavy(tmp_path, examples_dir):
    script = (
        "import sys\n"
        "from kmervae.cli import build_parser, main\n"
        "build_parser().format_help()\n"
        f"after_help = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        f"code = main(['featurize', {str(examples_dir / 'Phage_Agate_metagenomic.fna.gz')!r}, '-o', "
        f"{str(tmp_path / 'out')!r}, '--quiet'])\n"
        f"print(code, after_help, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
        "import scipy.linalg\n"  # importable again once the kernels are loaded
        "print(scipy.linalg.norm([3.0, 4.0]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-2:] == ["0 [] []", "5.0"]  # exit 0, nothing heavy imported
    assert (tmp_path / "out").is_dir()
