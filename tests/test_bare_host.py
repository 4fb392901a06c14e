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
from kmervae.core.config import RunConfig, preset
from kmervae.core.run_setup import fit_local
overrides = ["train.epochs=1", "train.batch_size=32", "data.max_samples=200"]
config = RunConfig(model=preset("tiny")).with_overrides(overrides)
result = fit_local(sys.argv[1], config, sys.argv[2], log=print)
print("ok", len(result.history))
"""


def test_training_needs_only_torch_numpy_pyarrow(tmp_path, example_features):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(example_features), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok 1" in result.stdout and "model.png and curves.png not drawn" in result.stdout
    written = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"best.pt", "last.pt", "model.txt", "epochs.txt", "metrics.jsonl"} <= written


def test_gpu_check_runs_on_the_cpu_and_reports_every_measure(example_features):
    """bench/gpu_check.sh --cpu: the GPU script's own checks, so it is known to work before it meets a GPU."""
    import os
    import re

    run = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--features", str(example_features)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env=dict(os.environ, PYTHON=sys.executable),
    )
    assert run.returncode == 0, run.stderr[-2000:]
    table = run.stdout[run.stdout.rindex("\n\n") :]  # the table printed last
    bf16 = re.search(r"bf16 vs fp32: recon / mu / loss rel err\s+(\S+) / (\S+) / (\S+)", table)
    fp32 = re.search(r"fp32 vs fp64: recon / mu / loss rel err\s+(\S+) / (\S+) / (\S+)", table)
    assert bf16 and fp32, table
    assert all(float(x) < 5e-2 for x in bf16.groups()) and all(float(x) < 1e-4 for x in fp32.groups())
    rates = re.findall(r"^(core|engine) .*?([\d,]+) samples/s", table, flags=re.M)
    assert len(rates) == 5 and all(int(r.replace(",", "")) > 0 for _, r in rates), (
        table
    )  # 2 core modes, 3 engine epochs
    assert "uint16" in table and "fit_local tiny bf16" in table and "checkpoint reload" in table
