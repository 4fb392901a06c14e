"""The model core runs with only torch, numpy and pyarrow, as on a bare GPU host."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

BLOCKED = ["ray", "mlflow", "optuna", "yaml", "matplotlib", "tqdm", "dnaio", "xopen", "numba"]

SCRIPT = f"""
import sys
for name in {BLOCKED!r}:
    sys.modules[name] = None  # any import of these now fails
from kmervae.config import RunConfig, preset
from kmervae.engine import fit_local
config = RunConfig(model=preset("tiny")).with_overrides(["train.epochs=1", "train.batch_size=32", "data.max_samples=200"])
result = fit_local(sys.argv[1], config, sys.argv[2], log=print)
print("ok", len(result.history))
"""


def test_training_needs_only_torch_numpy_pyarrow(tmp_path, example_features):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(example_features), str(tmp_path / "run")],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok 1" in result.stdout and "model.png not drawn" in result.stdout
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "model.txt").exists()
