"""A sweep's space and settings are checked before Ray starts. The sweeps themselves run on real
clusters in test_ray_job (the main job: stopped and resumed) and test_services (S3, an MLflow outage)."""

from __future__ import annotations

import pytest

from kmervae.core.config import PRESETS, RunConfig, SweepConfig
from kmervae.core.errors import ConfigError
from kmervae.distributed.sweep import check_space, trial_config


def broken_space(trial):
    trial.suggest_int("model.latent_dim", 0, 4)  # latent 0 is not a valid model


def typo_space(trial):
    trial.suggest_float("train.learning_rate", 1e-4, 1e-2)


def test_an_unsampleable_space_fails_before_ray_starts():
    with pytest.raises(ConfigError, match="model.latent_dim=0 is invalid"):
        check_space(broken_space, RunConfig(model=PRESETS["tiny"]), seed=0, samples=64)
    with pytest.raises(ConfigError, match="unknown key train.learning_rate"):
        check_space(typo_space, RunConfig(), seed=0)
    with pytest.raises(ConfigError, match="cannot be pickled: define it at module level"):
        check_space(lambda trial: trial.suggest_float("train.lr", 1e-4, 1e-2), RunConfig(), seed=0)


def test_sweep_settings_are_validated():
    with pytest.raises(ConfigError, match="--metric='val/mse' is invalid"):
        SweepConfig(metric="val/mse")
    with pytest.raises(ConfigError, match="--samples=0 is invalid"):
        SweepConfig(num_samples=0)


def test_a_trial_trains_the_epochs_it_draws_up_to_the_sweep_s_maximum():
    """--epochs is every trial's budget (ASHA's max_t): a space may draw fewer, never more."""
    base = RunConfig().with_overrides(["train.epochs=20"])
    assert trial_config(base, {"train.epochs": 10, "loss.beta": 0.01}).train.epochs == 10
    capped = trial_config(base, {"train.epochs": 40, "loss.beta": 0.01})
    assert capped.train.epochs == 20 and capped.loss.beta == 0.01
    assert base.train.epochs == 20
