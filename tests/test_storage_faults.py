"""Checkpoint storage that is read-only, too small, or fills up during a run.

The faults are real: each case runs `kmervae train` as root of a fresh user and mount
namespace (`unshare`), where the script can mount a tmpfs of a chosen size, read-only or
not, and fill it while training runs. Nothing on the host is touched.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch

from kmervae.base.errors import OutputError
from kmervae.core.checkpoint import save_checkpoint
from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.engine import make_optimizer
from kmervae.core.model import BranchedVAE
from tests.conftest import random_batch, ray_untouched


def run_in_namespace(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def namespaces():
    if shutil.which("unshare") is None or run_in_namespace("mount -t tmpfs tmpfs /mnt").returncode != 0:
        pytest.skip("needs unshare with user and mount namespaces (util-linux; kernel.unprivileged_userns_clone)")


def sections(stdout: str) -> dict[str, str]:
    """Split the script's output on '@@ name' marker lines."""
    out: dict[str, str] = {}
    name = None
    for line in stdout.splitlines():
        if line.startswith("@@ "):
            name = line[3:]
            out[name] = ""
        elif name:
            out[name] += line + "\n"
    return out


def train_command(data, out, epochs: int) -> str:
    return (
        f"{sys.executable} -m kmervae.cli train {data} --engine local --preset tiny --no-mlflow "
        f"--set train.epochs={epochs} --set train.batch_size=64 --set data.max_samples=600 --out {out}"
    )


def test_read_only_or_too_small_storage_fails_at_start(namespaces, tmp_path, example_features):
    script = f"""
    mkdir -p {tmp_path}/ro {tmp_path}/small
    mount -t tmpfs -o ro tmpfs {tmp_path}/ro
    mount -t tmpfs -o size=4m tmpfs {tmp_path}/small
    echo "@@ ro"; {train_command(example_features, f"{tmp_path}/ro/run", 3)} 2>&1; echo "rc=$?"; ls -A {tmp_path}/ro
    echo "@@ small"; {train_command(example_features, f"{tmp_path}/small/run", 3)} 2>&1; echo "rc=$?"
    ls -A {tmp_path}/small
    """
    result = run_in_namespace(script)
    out = sections(result.stdout)
    assert set(out) == {"ro", "small"}, result.stdout + result.stderr
    for name, message in [
        ("ro", f"kmervae train: error: {tmp_path}/ro/run: not writable (Read-only file system in {tmp_path}/ro)"),
        ("small", f"kmervae train: error: {tmp_path}/small/run: 4 MiB free, checkpoints of this run need about"),
    ]:
        lines = out[name].strip().splitlines()
        assert lines[0].startswith(message), out[name]
        assert lines[1:] == ["rc=2"], out[name]  # one line, exit 2, nothing left behind (ls prints nothing)
    # The estimate covers what the run really writes: best, latest and the next checkpoint.
    need = int(re.search(r"need about ([\d,]+) MiB", out["small"])[1].replace(",", ""))
    config = RunConfig(model=PRESETS["tiny"])
    model = BranchedVAE(config.model)
    optimizer = make_optimizer(model, config.train, torch.device("cpu"))
    model(*random_batch(4)).recon.pow(2).mean().backward()
    optimizer.step()  # Adam's moments exist from the first step on, as in every saved checkpoint
    real = save_checkpoint(tmp_path / "real.pt", model, config, 0, {}, optimizer)
    assert 3 * real.stat().st_size <= need * 2**20 < 4 * real.stat().st_size


def test_a_disk_that_fills_during_training_stops_it_with_the_path(namespaces, tmp_path, example_features):
    disk = tmp_path / "disk"
    read_epoch = (
        f"from kmervae.core.checkpoint import load_checkpoint; print(load_checkpoint('{disk}/run/last.pt').epoch)"
    )
    script = f"""
    mkdir -p {disk} && mount -t tmpfs -o size=200m tmpfs {disk}
    {train_command(example_features, f"{disk}/run", 500)} > {tmp_path}/train.log 2>&1 &
    pid=$!
    for i in $(seq 600); do [ -e {disk}/run/last.pt ] && break; sleep 0.2; done
    cat /dev/zero > {disk}/fill 2>/dev/null   # fills the disk: the next checkpoint cannot be written
    wait $pid; rc=$?; echo "@@ rc"; echo $rc
    echo "@@ log"; cat {tmp_path}/train.log
    rm {disk}/fill
    echo "@@ files"; ls -A {disk}/run
    echo "@@ last"; {sys.executable} -c "{read_epoch}"
    """
    result = run_in_namespace(script)
    out = sections(result.stdout)
    assert out.get("rc", "").strip() == "2", result.stdout + result.stderr
    errors = [line for line in out["log"].splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in out["log"], out["log"]
    assert f"{disk}/run/" in errors[0] and "cannot write the checkpoint (No space left on device)" in errors[0]
    assert ".tmp-" not in out["files"]  # the half-written file was removed
    assert int(out["last"]) >= 0  # the checkpoint written before the disk filled still loads


def space(trial):
    trial.suggest_float("train.lr", 1e-4, 1e-3, log=True)


def test_ray_training_and_sweeps_check_storage_before_ray_starts(tmp_path, example_features):
    from kmervae.core.config import SweepConfig
    from kmervae.distributed.ray_engine import fit_ray
    from kmervae.distributed.sweep import run_sweep

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with (
        ray_untouched(),
        pytest.raises(OutputError, match=f"{blocker}/ray: cannot create this folder: {blocker} is a file"),
    ):
        fit_ray(example_features, RunConfig(model=PRESETS["tiny"]), storage=blocker / "ray", experiment=None)
    with ray_untouched(), pytest.raises(OutputError, match=f"{blocker}/sweeps: cannot create this folder"):
        run_sweep(
            example_features,
            RunConfig(model=PRESETS["tiny"]),
            space,
            SweepConfig(storage=str(blocker / "sweeps")),
            use_mlflow=False,
        )


def test_kmervae_train_on_ray_refuses_storage_it_cannot_log_to_in_one_line(tmp_path, example_features, capsys):
    """The command line opens train.log in the run's outputs first: a folder that cannot be
    made is one line (exit 2), before Ray starts and with nothing written."""

    from kmervae.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with ray_untouched():
        code = main(["train", str(example_features), "--engine", "ray", "--preset", "tiny", "--no-mlflow",
                     "--storage", str(blocker / "ray"), "--name", "r"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"kmervae train: error: {blocker}/ray/r/outputs: cannot create this folder: {blocker} is a file; "
        "choose another --storage/--out"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
