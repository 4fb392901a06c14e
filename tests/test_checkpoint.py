"""Checkpoints: exact round trip, safe loading, clear errors for foreign or incompatible files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kmervae.base.errors import InputError, InputNotFoundError
from kmervae.core.checkpoint import load_checkpoint, save_checkpoint
from kmervae.core.config import PRESETS, RunConfig
from kmervae.core.engine import make_optimizer, make_scheduler
from kmervae.core.model import BranchedVAE
from tests.conftest import random_batch


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    config = RunConfig(model=PRESETS["tiny"]).with_overrides(["train.lr=0.003", "loss.beta=0.5"])
    model = BranchedVAE(config.model)
    optimizer = make_optimizer(model, config.train, torch.device("cpu"))
    scheduler = make_scheduler(optimizer, config.train)
    # One real step so BatchNorm statistics and optimiser state are non-trivial.
    out = model(*random_batch(8))
    out.recon.pow(2).mean().backward()
    optimizer.step()
    scheduler.step(1.0)
    path = save_checkpoint(tmp_path / "ckpt.pt", model, config, 3, {"val/loss": 1.5}, optimizer, scheduler)
    return path, model.eval(), config


def test_round_trip_reproduces_outputs_exactly(saved):
    path, model, config = saved
    ckpt = load_checkpoint(path)
    assert ckpt.config == config and ckpt.epoch == 3 and ckpt.metrics == {"val/loss": 1.5}
    restored = ckpt.build_model()
    batch = random_batch(5, seed=9)
    with torch.no_grad():
        a, b = model(*batch), restored(*batch)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.mu, b.mu)
    optimizer = make_optimizer(restored, config.train, torch.device("cpu"))
    optimizer.load_state_dict(ckpt.optimizer_state)
    assert optimizer.param_groups[0]["lr"] == 0.003


def test_loads_with_weights_only(saved):
    path, _, _ = saved
    payload = torch.load(path, weights_only=True)  # would raise if anything needed unpickling
    assert payload["format"] == "kmervae-checkpoint"


def test_no_partial_file_is_left(saved):
    path, _, _ = saved
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]


def test_foreign_and_incompatible_checkpoints(tmp_path, saved):
    path, _, _ = saved
    with pytest.raises(InputNotFoundError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable kmervae checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(InputError, match="not a kmervae checkpoint"):
        load_checkpoint(other)
    payload = torch.load(path, weights_only=True)
    for change, message in [
        ({"format_version": 99}, "checkpoint format 99"),
        ({"feature_schema_version": 0}, "trained on feature schema 0"),
        (
            {"config": {**payload["config"], "model": {**payload["config"]["model"], "branches": 3}}},
            "incompatible with kmervae",
        ),
    ]:
        bad = tmp_path / "bad.pt"
        torch.save({**payload, **change}, bad)
        with pytest.raises(InputError, match=message):
            load_checkpoint(bad)
    wrong = {**payload, "config": RunConfig(model=dataclasses.replace(PRESETS["tiny"], latent_dim=4)).to_dict()}
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="weights do not match its model config"):
        load_checkpoint(tmp_path / "wrong.pt").build_model()


class _Payload:
    """Unpickling this runs a shell command: what a malicious 'checkpoint' would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, example_features, capsys):
    from kmervae.cli import main

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "kmervae-checkpoint", "model": _Payload(marker)}, evil)
    with pytest.raises(
        InputError, match=r"evil.pt: not a readable kmervae checkpoint \(UnpicklingError: Weights only load failed"
    ):
        load_checkpoint(evil)
    # The same file given to every command that reads a checkpoint or model file.
    for argv in (
        ["embed", str(evil), str(example_features), "-o", str(tmp_path / "emb.parquet")],
        ["export", str(evil), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "evil.pt" in err and "Traceback" not in err
    assert not marker.exists(), "the crafted pickle ran its code"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]
