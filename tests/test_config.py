"""Configuration dataclasses: validation, presets, --set overrides and YAML files."""

from __future__ import annotations

import pytest

from kmervae.base.errors import ConfigError
from kmervae.core.config import (
    PRESETS,
    DataConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    SweepConfig,
    TrainConfig,
    preset,
    preset_config,
)


def test_an_unknown_preset_is_one_line_naming_the_choices():
    with pytest.raises(ConfigError, match="^--preset 'huge' is unknown; allowed: ") as refused:
        preset("huge")
    assert "\n" not in str(refused.value) and all(name in str(refused.value) for name in PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_s_settings_apply_to_any_architecture(name):
    # A preset's settings (loss, train, data) name real keys with valid values, on its own
    # architecture and under `--architecture tiny`, which keeps them and swaps the model.
    own, small = preset_config(name), preset_config(name, architecture="tiny")
    assert small.model.kmer7_widths == PRESETS["tiny"].kmer7_widths
    assert (own.loss, own.train, own.data) == (small.loss, small.train, small.data)


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (ModelConfig, {"latent_dim": 0}, r"model.latent_dim=0 is invalid: expected an integer in \[1, 8192\]"),
        (ModelConfig, {"kmer7_widths": ()}, "model.kmer7_widths=.* at least 1 positive"),
        (ModelConfig, {"kmer4_widths": (64, -1)}, "model.kmer4_widths="),
        (ModelConfig, {"leaky_slope": 1.5}, "model.leaky_slope=1.5"),
        (ModelConfig, {"input_dropout": 1.0}, "model.input_dropout"),
        (ModelConfig, {"log_eps": 0.0}, "model.log_eps"),
        (LossConfig, {"beta": -1.0}, "loss.beta=-1.0 is invalid: expected a finite number >= 0"),
        (LossConfig, {"w7": 0.0, "w4": 0.0, "w3": 0.0, "wgc": 0.0}, "at least one reconstruction weight"),
        (LossConfig, {"beta_warmup_epochs": -2}, "loss.beta_warmup_epochs"),
        (LossConfig, {"presence_threshold": -1}, "loss.presence_threshold"),
        (TrainConfig, {"epochs": 0}, "train.epochs=0"),
        (TrainConfig, {"batch_size": 1}, r"train.batch_size=1 is invalid: expected an integer in \[2, 65536\]"),
        (TrainConfig, {"lr": 0.0}, "train.lr=0.0"),
        (
            TrainConfig,
            {"min_lr": 0.1, "lr": 0.01},
            r"train.min_lr=0.1 is invalid: expected a number in \[0, train.lr=0.01\]",
        ),
        (TrainConfig, {"precision": "fp16"}, "train.precision='fp16' is invalid: expected fp32 or bf16"),
        (TrainConfig, {"device": "tpu"}, "train.device='tpu'"),
        (TrainConfig, {"lr_scaling": "cubic"}, "train.lr_scaling='cubic' is invalid: expected sqrt, linear or none"),
        (TrainConfig, {"lr_reference_batch": 0}, r"train.lr_reference_batch=0 is invalid: expected an integer >= 1"),
        (TrainConfig, {"resident": "yes"}, "train.resident='yes' is invalid: expected auto, on or off"),
        (DataConfig, {"val_fraction": 1.0}, r"data.val_fraction=1.0 is invalid: expected a number in \(0, 1\)"),
        (DataConfig, {"max_samples": 2}, "data.max_samples=2"),
        (DataConfig, {"val_split": "label"}, "data.val_split='label' is invalid: expected contig, genome or all"),
        (ModelConfig, {"length_input": "no"}, "model.length_input='no' is invalid: expected true or false"),
        (SweepConfig, {"name": "a/b"}, "sweep.name='a/b' is invalid: expected a non-empty name without '/'"),
        (SweepConfig, {"num_samples": 0}, "--samples=0 is invalid: expected an integer >= 1"),
        (SweepConfig, {"metric": "val/mse_7"}, "--metric='val/mse_7' is invalid: expected one of "),
        (SweepConfig, {"seed": -1}, "--seed=-1 is invalid: expected an integer >= 0"),
        (SweepConfig, {"experiment": ""}, "--experiment='' is invalid: expected a non-empty name"),
        (SweepConfig, {"storage": ""}, "--storage='' is invalid: expected a path"),
        (
            ModelConfig,
            {"abundance_input": "clr"},
            "model.abundance_input='clr' is invalid: expected shares or log_ratio",
        ),
        (TrainConfig, {"bin_resolution": 0}, r"train.bin_resolution=0 is invalid: expected a number in \(0, 10\]"),
        (ModelConfig, {"input_norm": "minmax"}, "model.input_norm='minmax' is invalid: expected none, zscore or clr"),
        (
            LossConfig,
            {"beta_schedule": "cosine"},
            "loss.beta_schedule='cosine' is invalid: expected linear or cyclical",
        ),
        (LossConfig, {"beta_cycle_epochs": 1}, r"loss.beta_cycle_epochs=1 is invalid: expected an integer >= 2"),
        (LossConfig, {"free_bits": -0.1}, r"loss.free_bits=-0.1 is invalid: expected a number >= 0"),
        (LossConfig, {"cross_view": "yes"}, "loss.cross_view='yes' is invalid: expected true or false"),
        (LossConfig, {"view_fraction": 1.0}, r"loss.view_fraction=1.0 is invalid: expected a number in \(0, 1\)"),
        (LossConfig, {"infonce": -1.0}, r"loss.infonce=-1.0 is invalid: expected a finite number >= 0"),
        (LossConfig, {"supcon": float("nan")}, r"loss.supcon=nan is invalid: expected a finite number >= 0"),
        (LossConfig, {"infonce_prior": 1.0}, r"loss.infonce_prior=1.0 is invalid: expected a number in \[0, 1\)"),
        (LossConfig, {"temperature": 0.0}, r"loss.temperature=0.0 is invalid: expected a number in \(0, 10\]"),
        (TrainConfig, {"bn_stats": "batch"}, "train.bn_stats='batch' is invalid: expected recompute, epoch or ema"),
        (TrainConfig, {"bn_contigs": 1}, r"train.bn_contigs=1 is invalid: expected an integer >= 2"),
        (ModelConfig, {"tnf_readout": -1.0}, r"model.tnf_readout=-1.0 is invalid: expected a number in \[0, 100\]"),
        (
            ModelConfig,
            {"tnf_readout_max_samples": -1},
            r"model.tnf_readout_max_samples=-1 is invalid: expected an integer >= 0",
        ),
    ],
)
def test_out_of_range_values_name_the_key_and_the_range(cls, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        cls(**kwargs)


def test_overrides_parse_types():
    cfg = RunConfig().with_overrides(
        [
            "model.latent_dim=64",
            "model.kmer7_widths=[256, 128]",
            "model.kmer4_widths=32,16",
            "model.gate_k7=false",
            "train.lr=3e-4",
            "loss.beta=1",
            "data.max_samples=null",
            "model.input_norm=none",  # a value, not null
            "train.lr_scaling=none",
        ]
    )
    assert cfg.model.latent_dim == 64 and cfg.model.kmer7_widths == (256, 128) and cfg.model.kmer4_widths == (32, 16)
    assert cfg.model.gate_k7 is False and cfg.train.lr == 3e-4 and cfg.loss.beta == 1.0 and cfg.data.max_samples is None
    assert cfg.model.input_norm == "none" and cfg.train.lr_scaling == "none"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.latent=64", "unknown key model.latent; allowed: kmer7_widths, "),
        ("optim.lr=1", "unknown configuration section 'optim'; allowed: model, loss, train, data"),
        ("latent_dim=64", "expected section.key=value"),
        ("model.latent_dim", "expected section.key=value"),
        ("model.latent_dim=big", "model.latent_dim='big' is invalid: expected an integer"),
        ("model.gate_k7=maybe", "model.gate_k7='maybe' is invalid: expected true or false"),
        ("train.epochs=2.5", "train.epochs=2.5 is invalid: expected an integer"),
        ("model.latent_dim=0", "model.latent_dim=0 is invalid"),
    ],
)
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig().with_overrides([override])


def test_yaml_round_trip_and_errors(tmp_path):
    cfg = RunConfig(model=preset("tiny")).with_overrides(["loss.beta_warmup_epochs=3"])
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert RunConfig.from_yaml(path) == cfg
    path.write_text("model:\n  widths: [1]\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key model.widths"):
        RunConfig.from_yaml(path)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="run.yaml: not valid YAML"):
        RunConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="no such configuration file"):
        RunConfig.from_yaml(tmp_path / "none.yaml")


def test_beta_warmup_is_linear():
    cfg = LossConfig(beta=2.0, beta_warmup_epochs=4)
    assert [cfg.beta_at(e) for e in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert LossConfig(beta=0.5).beta_at(0) == 0.5


def test_learning_rate_follows_the_batch_size():
    assert TrainConfig(lr=1e-3, batch_size=256).effective_lr == pytest.approx(1e-3)
    assert TrainConfig(lr=1e-3, batch_size=1024).effective_lr == pytest.approx(2e-3)  # sqrt(4)
    assert TrainConfig(lr=1e-3, batch_size=1024, lr_scaling="linear").effective_lr == pytest.approx(4e-3)
    assert TrainConfig(lr=1e-3, batch_size=8192, lr_scaling="none").effective_lr == pytest.approx(1e-3)
    assert TrainConfig(lr=1e-3, batch_size=512, lr_reference_batch=512).effective_lr == pytest.approx(1e-3)


def test_runs_say_whether_they_trained_on_labels():
    from kmervae.tracking.run import USES_LABELS_TAG, run_tags

    def uses_labels(config: RunConfig) -> str:
        return run_tags("local", "x", config)[USES_LABELS_TAG]

    assert uses_labels(RunConfig()) == "false"
    assert uses_labels(RunConfig().with_overrides(["loss.infonce=1"])) == "false"
    assert uses_labels(RunConfig().with_overrides(["loss.supcon=0.1"])) == "true"


def test_final_keeps_the_seeds_loss_scale():
    """`final` is the seed's architecture and loss exactly: the group MSEs times 2,090 (= 8,361 / 4)."""
    final = preset_config("final")
    assert final.model == PRESETS["final"] and final.loss.scale == 2090 and final.loss.beta == 1
    assert preset_config("tiny").loss.scale == LossConfig().scale  # presets without settings keep the defaults
    assert preset_config("final").with_overrides(["loss.scale=1"]).loss.scale == 1  # --set wins
    shrunk = preset_config("final", architecture="tiny")  # smoke sweeps: the settings on tiny widths
    assert shrunk.model == PRESETS["tiny"] and shrunk.loss.scale == 2090
    small = preset_config("recommended", architecture="tiny")  # the size changes, nothing else
    assert small.model.kmer7_widths == PRESETS["tiny"].kmer7_widths and small.model.latent_dim == 8
    assert small.model.input_norm == "zscore" and small.loss == preset_config("recommended").loss
    with pytest.raises(ConfigError, match="--preset 'best' is unknown"):
        preset_config("best", architecture="tiny")


def test_settings_are_read_from_text_only_where_a_person_typed_them():
    """A setting is parsed from `section.key=value` text once, where the person's flags arrive
    (the `kmervae` command, a sweep script's flags); inside the package it travels as a value."""
    import ast

    from tests.conftest import REPO

    parsers = {"with_overrides", "parse_overrides", "parse_value"}
    entry_points = {"kmervae/cli.py", "kmervae/distributed/sweep_cli.py", "kmervae/core/config.py"}
    callers = set()
    for path in (REPO / "kmervae").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name in parsers:
                    callers.add(str(path.relative_to(REPO)))
    assert callers <= entry_points and "kmervae/cli.py" in callers
