"""A sweep's space and settings are checked before Ray starts. The sweeps themselves run on real
clusters in test_ray_job (the main job: stopped and resumed) and test_services (S3, an MLflow outage)."""

from __future__ import annotations

import pytest

from kmervae.base.errors import ConfigError
from kmervae.core.config import PRESETS, RunConfig, SweepConfig
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


def seeded_space(trial):
    trial.suggest_float("loss.beta", 1e-4, 1e-1, log=True)


def test_repeats_share_a_setting_and_optuna_hears_their_median_even_across_a_resume(tmp_path):
    """--seeds 3: each proposal is handed out three times with indices 0, 1, 2 (train.seed = base + index);
    Optuna hears the median once all three ended. The groups survive save and restore, where Ray's
    own Repeater loses them (ray-project/ray#11918): a repeat started before a stop ends after it."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from kmervae.distributed.seed_repeats import SeedRepeats
    from kmervae.distributed.sweep import SEED_INDEX, setting_of

    def searcher():
        inner = OptunaSearch(
            space=seeded_space, metric="val/nc_bins", mode="max", sampler=optuna.samplers.TPESampler(seed=0)
        )
        return SeedRepeats(inner, 3, SEED_INDEX)

    first = searcher()
    configs = [first.suggest(f"t{i}") for i in range(4)]  # three repeats of one setting, then a new one
    assert [c[SEED_INDEX] for c in configs] == [0, 1, 2, 0]
    assert len({setting_of(c) for c in configs[:3]}) == 1 and setting_of(configs[3]) != setting_of(configs[0])
    base = RunConfig().with_overrides(["train.seed=5"])
    assert [trial_config(base, c).train.seed for c in configs] == [5, 6, 7, 5]
    first.on_trial_complete("t0", {"val/nc_bins": 9.0})
    first.on_trial_complete("t2", {"val/nc_bins": 5.0})
    assert not [t for t in first.inner._ot_study.trials if t.state.is_finished()]  # t1 still trains

    first.save(str(tmp_path / "state.pkl"))  # the sweep is stopped here and resumed
    resumed = searcher()
    resumed.restore(str(tmp_path / "state.pkl"))
    resumed.on_trial_complete("t1", {"val/nc_bins": 7.0})
    resumed.on_trial_complete("unknown", {"val/nc_bins": 1.0})  # suggested after the last save: ignored
    told = [t for t in resumed.inner._ot_study.trials if t.state.is_finished()]
    assert [t.value for t in told] == [7.0]  # the median of 9, 7 and 5
    assert resumed.suggest("t4")[SEED_INDEX] == 1  # the second setting's next repeat


def test_sweep_seeds_divide_the_trials():
    with pytest.raises(ConfigError, match=r"--samples=8 is invalid: expected a multiple of --seeds=3"):
        SweepConfig(num_samples=8, seeds=3)
    assert SweepConfig(num_samples=9, seeds=3).seeds == 3
