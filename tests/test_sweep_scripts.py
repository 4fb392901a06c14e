"""The sweep scripts: same flags everywhere, and search spaces that always give valid configs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from kmervae.base.errors import ConfigError
from kmervae.core.config import RunConfig, preset
from kmervae.distributed import sweep_cli
from kmervae.distributed.sweep import check_objective, check_space
from kmervae.distributed.sweep_report import space_distributions
from tests.conftest import REPO

SCRIPTS = ["latent_sweep", "architecture_sweep", "loss_sweep", "quality_sweep"]
FLAGS = [
    "--data", "--samples", "--epochs", "--workers-per-trial", "--gpus-per-trial", "--max-concurrent", "--experiment",
    "--name", "--storage", "--resume", "--metric", "--seed", "--seeds", "--smoke-test", "--verbose",
]  # fmt: skip


def load(name: str):
    sys.path.insert(0, str(REPO / "sweeps"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "sweeps" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as when run: its space must pickle by reference
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "sweeps"))


@pytest.mark.parametrize("name", [*SCRIPTS, "binning_sweep", "sample_count_sweep"])
def test_every_script_has_the_same_flags(name):
    result = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for flag in FLAGS:
        assert flag in result.stdout, f"{name} lacks {flag}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_spaces_sample_valid_configs(name):
    space = load(name).space
    check_space(space, RunConfig(model=preset("final")), seed=0, samples=64)
    assert space_distributions(space)


def test_architecture_depth_decides_how_many_widths_exist():
    import optuna

    space = load("architecture_sweep").space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        settings = space(trial)
        for branch in ("kmer7", "kmer4", "kmer3", "trunk"):
            depth = trial.params[f"{branch}_depth"]
            assert len(settings[f"model.{branch}_widths"]) == depth
            assert {k for k in trial.params if k.startswith(f"{branch}_width_")} == {
                f"{branch}_width_{i}" for i in range(depth)
            }
        study.tell(trial, 0.0)


def test_gate_bce_weight_exists_only_with_the_gate():
    import optuna

    space = load("loss_sweep").space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(20):
        trial = study.ask()
        space(trial)
        assert ("loss.gate_bce_weight" in trial.params) == trial.params["model.gate_k7"]
        study.tell(trial, 0.0)


def test_a_bad_flag_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "latent_sweep.py"), "--data", str(tmp_path / "none"), "--name", "x"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith("latent_sweep: error: ")
        and "no such feature dataset" in result.stderr
    )


def test_every_flag_can_come_from_the_environment(monkeypatch):
    common = sweep_cli
    monkeypatch.setenv("KMERVAE_SAMPLES", "7")
    monkeypatch.setenv("KMERVAE_SMOKE_TEST", "true")
    monkeypatch.setenv("KMERVAE_SET", "train.lr=1e-3 loss.beta=0.5")
    monkeypatch.setenv("KMERVAE_STORAGE", "/data/sweeps")
    args = common.parse_args("test", "final", [])
    assert (args.samples, args.smoke_test, args.overrides, str(args.storage)) == (
        7,
        True,
        ["train.lr=1e-3", "loss.beta=0.5"],
        "/data/sweeps",
    )
    assert common.parse_args("test", "final", ["--samples", "3"]).samples == 3  # a flag beats its variable
    monkeypatch.setenv("KMERVAE_EPOCHS", "many")
    with pytest.raises(SystemExit):
        common.parse_args("test", "final", [])


@pytest.mark.parametrize(
    "name, comparable",
    [("latent_sweep", False), ("loss_sweep", False), ("quality_sweep", False), ("architecture_sweep", True)],
)
def test_val_loss_ranks_only_sweeps_that_share_the_loss(name, comparable):
    """val/loss differs by construction between trials with other loss settings or latent sizes."""
    varied = check_space(load(name).space, RunConfig(model=preset("final")), seed=0, samples=64)
    check_objective("val/knn_acc", varied)  # an embedding metric ranks any sweep
    if comparable:
        check_objective("val/loss", varied)
    else:
        with pytest.raises(
            ConfigError, match=r"--metric val/loss cannot rank this sweep: it varies .*rank on val/knn_acc"
        ):
            check_objective("val/loss", varied)


def test_a_sweep_asked_to_rank_on_val_loss_stops_before_it_starts(tmp_path, example_features):
    result = subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "latent_sweep.py"), "--smoke-test", "--metric", "val/loss",
         "--data", str(example_features), "--storage", str(tmp_path / "sweeps"), "--name", "x"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("latent_sweep: error: --metric val/loss cannot rank this sweep: it varies model.latent_dim")
    assert not (tmp_path / "sweeps" / "x").exists() and not (tmp_path / "mlflow.db").exists()


def test_ranking_on_link_agreement_needs_fragments_of_one_record(example_features, tmp_path):
    """The driver counts the validation split's must-links as the engines will see them; a
    sweep on data without any refuses val/link_agreement before Ray starts."""
    import numpy as np

    from kmervae.base.feature_table import dataset_files, label_vocabulary
    from kmervae.core.config import PRESETS, SweepConfig
    from kmervae.core.data import load_splits
    from kmervae.distributed.ray_data import validation_must_links
    from kmervae.distributed.sweep import run_sweep
    from kmervae.features.featurize import featurize
    from tests.conftest import write_fasta

    config = RunConfig(model=PRESETS["tiny"])
    files = dataset_files(example_features)
    _, val = load_splits(example_features, config.data)
    records = val.links[:, 0].numpy()
    expected = sum(int(n) - 1 for n in np.unique(records[records >= 0], return_counts=True)[1])
    assert validation_must_links(files, config.data, label_vocabulary(files)) == expected > 0

    rng = np.random.default_rng(0)
    write_fasta(tmp_path / "a.fa", [(f"c{i}", "".join(rng.choice(list("ACGT"), 1200))) for i in range(40)])
    featurize([tmp_path / "a.fa"], tmp_path / "whole")  # unfragmented: every contig its own record
    assert validation_must_links(dataset_files(tmp_path / "whole"), config.data, []) == 0
    sweep = SweepConfig(metric="val/link_agreement", storage=str(tmp_path / "sweeps"), num_samples=1)
    with pytest.raises(ConfigError, match="val/link_agreement needs validation contigs cut from one record"):
        run_sweep(tmp_path / "whole", config, load("latent_sweep").space, sweep, use_mlflow=False)
    assert not (tmp_path / "sweeps").exists()  # refused before anything was written


def test_auto_objective_is_the_best_the_data_allows(example_features, examples_dir, tmp_path):
    from kmervae.base.feature_table import dataset_files, label_vocabulary
    from kmervae.features.featurize import FeaturizeSettings, featurize

    objective = sweep_cli.objective
    base = RunConfig(model=preset("tiny"))
    labels = label_vocabulary(dataset_files(example_features))
    assert objective("auto", example_features, base, labels) == "val/knn_acc"
    assert objective("val/loss", example_features, base, labels) == "val/loss"  # asked for: kept
    # The binning sweep's: the true near-complete bins with labels, else those its marker genes estimate.
    assert objective("bins", example_features, base, labels) == "val/nc_bins"
    assert objective("bins", example_features, base, []) == "val/est_nc_bins"
    genomes = sorted(examples_dir.glob("*.fna.gz"))[:2]
    featurize(genomes, tmp_path / "fragments", FeaturizeSettings(fragment_length=5000))  # no labels
    assert objective("auto", tmp_path / "fragments", base, []) == "val/link_agreement"
    featurize(genomes, tmp_path / "records")  # no labels, one contig per record: no must-links
    assert objective("auto", tmp_path / "records", base, []) == "val/loss"


def test_half_a_gpu_per_trial_runs_two_trials_on_one_gpu():
    """The fractional-GPU plan of `--gpus-per-trial 0.5` on a one-GPU node (Ray's resource
    dictionary as a GPU host reports it): two trials at once, each worker half a GPU and a CPU;
    a third does not fit and is refused with the numbers."""
    from kmervae.distributed.ray_engine import plan_resources
    from kmervae.distributed.sweep import _max_concurrent

    host = {"CPU": 16.0, "GPU": 1.0}
    assert _max_concurrent(host, 1, 0.5, use_cpu=False, samples=8) == 2
    assert _max_concurrent(host, 1, 1.0, use_cpu=False, samples=8) == 1
    assert _max_concurrent(host, 1, 0.5, use_cpu=False, samples=1) == 1  # never more than the trials
    plan = plan_resources(host, 1, 0.5, use_cpu=False, trials=2, trial_cpus=0.1)
    assert (plan.workers, plan.gpus_per_worker, plan.cpus_per_worker) == (1, 0.5, 1.0)
    with pytest.raises(ConfigError, match=r"cannot fit 3 x 1 worker\(s\) x 0.5 GPU: the cluster has 1 GPU\(s\)"):
        plan_resources(host, 1, 0.5, use_cpu=False, trials=3, trial_cpus=0.1)


def test_the_quality_sweep_tries_the_abundance_branch_on_features_with_depths():
    import dataclasses

    module = load("quality_sweep")
    with_depths = RunConfig(model=dataclasses.replace(preset("final"), abundance_samples=4))
    varied = check_space(module.space_with_abundance, with_depths, seed=0, samples=64)
    assert {"model.abundance_widths", "loss.wab", "loss.abundance_views"} <= varied
    with pytest.raises(ConfigError, match="needs features with abundance"):
        check_space(module.space_with_abundance, RunConfig(model=preset("final")), seed=0, samples=64)


def test_the_binning_sweep_ranks_whole_assemblies_on_near_complete_bins():
    import dataclasses

    from kmervae.core.config import preset_config

    module = load("binning_sweep")
    base = preset_config("metagenome")
    assert base.data.val_split == "all"  # every contig trains and validates, so bins are of the whole assembly
    with_depths = dataclasses.replace(base, model=dataclasses.replace(base.model, abundance_samples=4))
    varied = check_space(module.space, with_depths, seed=0, samples=64)
    assert {"model.abundance_widths", "loss.wab", "model.log_eps", "train.epochs", "train.bin_resolution"} <= varied
    common = sweep_cli
    assert common.parse_args("binning", "metagenome", [], metric="val/nc_bins").metric == "val/nc_bins"
    # A smoke test bins every contig too (near-complete bins of a 600-contig subsample are none, estimated
    # or true); other presets' smoke tests keep their small subsample.
    smoke = common.base_config(common.parse_args("binning", "metagenome", ["--smoke-test"]), [])
    assert smoke.data.max_samples is None and smoke.train.epochs == common.SMOKE.epochs
    quality = common.base_config(common.parse_args("quality", "final", ["--smoke-test"]), [])
    assert quality.data.max_samples == common.SMOKE.max_samples
    with pytest.raises(ConfigError, match="needs features with abundance"):
        check_space(module.space, base, seed=0, samples=8)


def test_the_sample_count_sweep_varies_what_the_sample_count_changes_and_keeps_the_preset():
    import dataclasses

    from kmervae.core.config import preset_config

    module = load("sample_count_sweep")
    base = preset_config("metagenome")
    one_sample = dataclasses.replace(base, model=dataclasses.replace(base.model, abundance_samples=1))
    varied = check_space(module.space, one_sample, seed=0, samples=64)
    assert varied == {
        "loss.wab", "model.latent_dim", "train.lr_schedule", "model.tnf_readout", "model.tnf_readout_max_samples",
    }  # fmt: skip
    drawn = base.with_overrides(["model.tnf_readout=0.5", "model.tnf_readout_max_samples=0"])
    assert drawn.for_data(("s1", "s2", "s3", "s4")).model.tnf_readout == 0.5  # as drawn, with four samples too
    assert base.for_data(("s1", "s2", "s3", "s4")).model.tnf_readout == 0.0  # the preset's own rule
    args = sweep_cli.parse_args("sample_count", "metagenome", ["--seeds", "3"], metric="bins")
    sweep = sweep_cli.sweep_config("sample_count_sweep", args, "val/est_nc_bins")
    assert (sweep.seeds, sweep.num_samples) == (3, 48)  # 16 settings by default, three seeds each


def test_a_sweep_without_data_featurizes_the_genomes_its_script_names(tmp_path):
    """The package never reaches for the repository's examples: each script names them."""
    from kmervae.base.errors import ConfigError
    from kmervae.base.feature_table import dataset_files
    from kmervae.distributed.sweep_cli import default_data

    scripts = [load(name) for name in [*SCRIPTS, "binning_sweep", "sample_count_sweep"]]
    assert {script.EXAMPLES for script in scripts} == {REPO / "examples"}
    data = default_data(str(tmp_path / "sweeps"), scripts[0].EXAMPLES)
    assert dataset_files(data).rows == 1558  # the five genomes as 5 kb contigs
    with pytest.raises(ConfigError, match="no --data given; pass --data FEATURES"):
        default_data(str(tmp_path / "other"), None)
    assert not (tmp_path / "other").exists()
