"""What `ray job submit --working-dir .` would upload: the code, and none of the data,
results, MLflow stores, environments or secrets, listed with Ray's own packaging code."""

from __future__ import annotations

import shutil
import subprocess
import zipfile

import pytest

from kmervae.binning.marker_search import MARKER_SETS
from tests.conftest import REPO

packaging = pytest.importorskip("ray._private.runtime_env.packaging")

DECOYS = [
    "runs/ray/train-1/checkpoint_0/checkpoint.pt",
    "mlruns/1/meta.yaml",
    "mlflow.db",
    "mlartifacts/1/a.png",
    "features/part-00000.parquet",
    "data/genome.fna.gz",
    "contigs.fasta",
    ".venv/bin/python",
    "model.onnx",
    "best.pt",
    ".env",
    "runs/outputs/mlflow-outbox.jsonl",
    ".gpu_data/features/part-00000.parquet",
]


def uploaded(root, include_gitignore: bool) -> set[str]:
    out = root.parent / f"upload-{include_gitignore}.zip"
    packaging._zip_files(str(root), [], str(out), include_gitignore=include_gitignore)
    with zipfile.ZipFile(out) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


@pytest.mark.parametrize("include_gitignore", [True, False], ids=["default", "RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1"])
def test_only_the_code_is_uploaded(tmp_path, include_gitignore):
    root = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked + [".rayignore"]:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for decoy in DECOYS:
        (root / decoy).parent.mkdir(parents=True, exist_ok=True)
        (root / decoy).write_bytes(b"x")
    files = uploaded(root, include_gitignore)
    assert {
        "kmervae/cli.py",
        "sweeps/latent_sweep.py",
        "kmervae/distributed/sweep_cli.py",
        "pyproject.toml",
        "constraints.txt",
    } <= files
    assert not files & set(DECOYS), sorted(files & set(DECOYS))
    assert not [f for f in files if f.startswith("examples/") and f.endswith(".fna.gz")]  # example genomes are data too
    # The shipped marker sets (4.7 MB of HMMs) are package data that `kmervae markers` and
    # `bin` need inside a job, so they travel; everything else is code, and code is small.
    marker_sets = {str(path.relative_to(REPO)) for path in MARKER_SETS.values()}
    assert marker_sets <= files
    assert sum((root / f).stat().st_size for f in files - marker_sets) < 2 * 2**20
