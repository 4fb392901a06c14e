"""The sweep scripts' command line and policy: flags, --smoke-test sizes, the data default,
whole-genome validation, the automatic objective, and the summary a person reads.

Each script in sweeps/ defines its search space (a define-by-run function that calls
`trial.suggest_*`) and calls `sweep_main`. Parameters named `section.key` are settings
(see kmervae/core/config.py); parameters without a dot are helpers of the space (a depth, say)
and the space returns the settings it derives from them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmervae.base.errors import KmervaeError
from kmervae.base.metric_keys import (
    OBJECTIVES,
    VAL_EST_NC_BINS,
    VAL_KNN_ACC,
    VAL_LINK_AGREEMENT,
    VAL_LOSS,
    VAL_NC_BINS,
)
from kmervae.base.redact import redact
from kmervae.distributed.flags import add_cluster_flags, add_settings_flags, add_tracking_flags

BINS = "bins"
"""The binning sweep's objective: val/nc_bins where the data has labels, else val/est_nc_bins."""


@dataclass(frozen=True)
class SmokeSizes:
    """What `--smoke-test` shrinks a sweep to: trials, epochs, contigs and batch."""

    samples: int = 3
    epochs: int = 2
    max_samples: int = 600
    batch_size: int = 64


SMOKE = SmokeSizes()
GENOME_SPLIT_LABELS = 5
"""With at least this many labels, sweeps validate on whole genomes never trained on (data.val_split=genome)."""


def sweep_parser(description: str, preset: str, metric: str = "auto") -> tuple[argparse.ArgumentParser, list]:
    """The flags every sweep script has, and the actions environment variables may set."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    actions = [
        add("--data", type=Path, help="feature dataset (default: the bundled examples, featurized on first use)"),
        *_add_trial_flags(p),
        add("--name", default=None, help="sweep name (default: <script>-<time>); --resume needs it"),
        add(
            "--storage",
            default="runs/sweeps",
            help="trial state and checkpoints: a folder (made absolute) or an s3:// URI shared by all nodes",
        ),
        add("--resume", action="store_true", help="continue the sweep --name from --storage"),
        add(
            "--metric",
            default=metric,
            choices=["auto", BINS, *OBJECTIVES],
            help="objective: auto = val/knn_acc when the data has labels, else val/link_agreement when validation "
            "contigs are fragments of longer records (label-free; ranks trials like val/kmeans_ari), else val/loss "
            "(which ranks only trials that share their loss settings and latent size); val/nc_bins = near-complete "
            "bins of the validation contigs as 'kmervae bin' makes them (needs labels; bins every epoch); "
            "val/est_nc_bins = the same bins judged by single-copy marker genes (label-free; needs markers.tsv in "
            "the features: 'kmervae markers'); bins = val/nc_bins with labels, else val/est_nc_bins",
        ),
        add("--seed", type=int, default=0, help="seed of the sampler and of training"),
        add(
            "--seeds",
            type=int,
            default=1,
            help="training seeds per setting (seed, seed+1, ...): settings rank on the median of their trials; "
            "--samples counts trials (settings x seeds); above 1, no trial is stopped early",
        ),
        *add_settings_flags(p, preset, "fixed setting for every trial"),
        *add_tracking_flags(p, "kmervae-sweeps"),
        add(
            "--register-as",
            default="kmervae-encoder",
            help="registered model name for the best checkpoint ('' to skip)",
        ),
        *add_cluster_flags(
            p, "show what Ray, Tune and the trials print (default: in sweep.log in the sweep's outputs)"
        ),
        add(
            "--smoke-test",
            action="store_true",
            help="the tiny architecture (with --preset's loss settings), 600 contigs (all of them with a preset "
            "that bins the whole assembly, such as metagenome), 3 trials x 2 epochs on CPU: about 2 minutes on 2 cores",
        ),
    ]
    apply_env_defaults(p, actions)
    return p, actions


def _add_trial_flags(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """How many trials, how long each, and what each gets of the cluster."""
    add = p.add_argument
    return [
        add("--samples", type=int, default=None, help="trials (default 16, 3 with --smoke-test; times --seeds)"),
        add(
            "--epochs",
            type=int,
            default=None,
            help="maximum epochs per trial (ASHA stops weak trials earlier; default 50, 2 with --smoke-test)",
        ),
        add("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial"),
        add(
            "--gpus-per-trial",
            type=float,
            default=None,
            help="GPUs per trial (default: one per worker when the cluster has GPUs; 0 = CPU)",
        ),
        add("--max-concurrent", type=int, default=None, help="trials at once (default: as many as the cluster fits)"),
    ]


def parse_args(
    description: str, preset: str, argv: list[str] | None = None, metric: str = "auto"
) -> argparse.Namespace:
    """The sweep scripts' flags, parsed (`argv`: default sys.argv)."""
    return sweep_parser(description, preset, metric)[0].parse_args(argv)


ENV_PREFIX = "KMERVAE_"


def env_name(action: argparse.Action) -> str:
    """The environment variable that sets a flag's default: --workers-per-trial -> KMERVAE_WORKERS_PER_TRIAL."""
    return ENV_PREFIX + action.option_strings[-1].lstrip("-").replace("-", "_").upper()


def apply_env_defaults(parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> None:
    """Let KMERVAE_<FLAG> environment variables set the defaults of `actions` (how a KubeRay
    RayJob passes knobs)."""
    for action in actions:
        raw = os.environ.get(env_name(action))
        if raw is None:
            continue
        if action.nargs == 0:  # store_true flags
            value = raw.strip().lower() in ("1", "true", "yes", "on")
        elif action.dest == "overrides":
            value = [item for item in raw.split() if item]  # KMERVAE_SET="train.lr=3e-4 loss.beta=0.1"
        else:
            try:
                value = action.type(raw) if action.type else raw
            except (TypeError, ValueError):
                parser.error(f"{env_name(action)}={raw!r} is not a valid value for {action.option_strings[-1]}")
        parser.set_defaults(**{action.dest: value})
        action.help = (action.help or "") + f" [from ${env_name(action)}]"


def default_data(storage: str, examples: Path | None) -> Path:
    """The example genomes the sweep script names (`examples`: its repository's bundled ones) as
    5 kb labelled contigs, featurized once (locally) for `storage`."""
    from kmervae.base.errors import ConfigError
    from kmervae.base.storage import local_outputs, normalize
    from kmervae.features.featurize import FeaturizeSettings, featurize
    from kmervae.features.labels import Labels

    if examples is None:
        raise ConfigError("no --data given; pass --data FEATURES (a folder written by 'kmervae featurize')")
    out = local_outputs(normalize(storage), "examples-features")
    if not (out / "_kmervae_dataset.json").exists():
        featurize(
            sorted(examples.glob("*.fna.gz")),
            out,
            FeaturizeSettings(fragment_length=5000, overwrite=True),
            Labels(from_filename=True),
        )
    return out


def sweep_main(
    script: str,
    description: str,
    space: Callable[[Any], Any],
    preset: str = "final",
    argv: list[str] | None = None,
    abundance_space: Callable[[Any], Any] | None = None,
    metric: str = "auto",
    examples: Path | None = None,
) -> int:
    """Parse flags, run the sweep, print where everything went. Returns the exit status.
    `abundance_space`, where given, is the space for features with abundance (it adds the
    abundance branch's settings to `space`'s). `metric`: the script's default objective.
    `examples`: a folder of genomes (`*.fna.gz`, one per label) to sweep when --data is not given."""
    from kmervae.tracking.tracker import use_impatient_http

    args = parse_args(description, preset, argv, metric)
    use_impatient_http()
    try:
        return _run(script, args, space, abundance_space, examples)
    except KmervaeError as err:
        print(f"{script}: error: {redact(str(err))}", file=sys.stderr)
        return 2


def objective(metric: str, data, base, labels: list[str]) -> str:
    """The metric a sweep ranks on: `metric`; for `bins` (binning sweeps) the true near-complete
    bins with labels, else those estimated from marker genes; for `auto` the best the data allows:
    kNN accuracy with labels; without, link agreement where validation contigs are fragments of
    one record (bench/RESULTS.md: it ranks trials like val/kmeans_ari); else the loss."""
    from kmervae.base.feature_table import dataset_files
    from kmervae.distributed.ray_data import validation_must_links

    if metric == BINS:
        return VAL_NC_BINS if labels else VAL_EST_NC_BINS
    if metric != "auto":
        return metric
    if labels:
        return VAL_KNN_ACC
    return VAL_LINK_AGREEMENT if validation_must_links(dataset_files(data), base.data, labels) else VAL_LOSS


def _run(script: str, args: argparse.Namespace, space, abundance_space=None, examples: Path | None = None) -> int:
    from kmervae.base.feature_table import dataset_files, label_vocabulary
    from kmervae.distributed.console import quiet_console
    from kmervae.distributed.sweep import check_sweep

    data = args.data or default_data(args.storage, examples)
    files = dataset_files(data)
    labels = label_vocabulary(files)
    if abundance_space is not None and files.format.samples:
        space = abundance_space
        print(f"abundance: {len(files.format.samples)} sample(s); the abundance branch is swept too")
    base = base_config(args, labels)
    sweep = sweep_config(script, args, objective(args.metric, data, base, labels))
    checked = check_sweep(data, base, space, sweep, resume=args.resume, mlflow_dir=args.mlflow_dir)
    with quiet_console(checked.log_path, args.verbose):  # what Ray, Tune and the trials print goes to the log
        result = checked.run(address=args.address)
    _print_summary(result, sweep, args)
    return 0 if result.best_trial is not None else 1


def base_config(args: argparse.Namespace, labels: list[str]):
    """Every trial's settings before the space's: the preset (on `tiny` for a smoke test), the
    epochs, the seed, the smoke sizes, whole-genome validation where the data has labels
    enough and the preset did not choose its split (metagenome: every contig), then --set."""
    from kmervae.core.config import parse_overrides, preset_config
    from kmervae.core.data import held_out_labels

    smoke = args.smoke_test
    given = parse_overrides(args.overrides)  # the one reading of --set; values from here on
    base = preset_config(args.preset, architecture="tiny" if smoke else None)
    fixed: dict[str, object] = {"train.epochs": args.epochs or (SMOKE.epochs if smoke else 50), "train.seed": args.seed}
    if smoke:
        fixed["train.batch_size"] = SMOKE.batch_size
        if base.data.val_split != "all":  # a binning preset bins the whole assembly: a subsample has no whole genome
            fixed["data.max_samples"] = SMOKE.max_samples
    chosen = base.data.val_split != "contig" or "data.val_split" in given
    if len(labels) >= GENOME_SPLIT_LABELS and not chosen:
        fixed["data.val_split"] = "genome"
    base = base.with_values({**fixed, **given})
    if base.data.val_split == "genome":
        held = held_out_labels(labels, base.data)
        print(
            f"validation: {len(held)} of {len(labels)} genomes held out, never trained on ({', '.join(sorted(held))})"
        )
    return base


def sweep_config(script: str, args: argparse.Namespace, metric: str):
    """How the sweep searches (smoke sizes with --smoke-test), from the flags."""
    from kmervae.core.config import SweepConfig

    smoke = args.smoke_test
    return SweepConfig(
        name=args.name or time.strftime(f"{script}-%Y%m%d-%H%M%S"),
        storage=args.storage,
        metric=metric,
        num_samples=args.samples or (SMOKE.samples if smoke else 16) * args.seeds,
        max_concurrent=args.max_concurrent,
        workers_per_trial=args.workers_per_trial,
        gpus_per_trial=0.0 if smoke else args.gpus_per_trial,
        seed=args.seed,
        seeds=args.seeds,
        grace_period=1 if smoke else 2,
        experiment=args.experiment,
        register_as=args.register_as,
    )


def _print_summary(result, sweep, args: argparse.Namespace) -> None:
    """Where everything went: the trials, the log, the best trial and checkpoint, the registry, MLflow."""
    from kmervae.distributed.sweep import LOG_NAME
    from kmervae.tracking.tracker import tracking_uri, ui_command

    failed = sum(1 for t in result.trials if t.status != "OK")
    print(f"sweep     {result.name}: {len(result.trials)} trial(s), {failed} failed; state in {result.path}")
    if not args.verbose:
        print(f"log       {Path(result.outputs) / LOG_NAME} (everything Ray and the trials printed)")
    if result.best_trial is not None:
        best = result.best_trial
        print(f"best      trial {best.trial_id}: {sweep.metric} {best.best:.4f} with {best.params}")
        if sweep.seeds > 1:
            seeds = ", ".join(f"{v:.4g}" for v in result.best_seeds)
            count = len(result.best_seeds)
            print(f"setting   median {sweep.metric} {result.best_median:.4f} over its {count} seed(s): {seeds}")
        print(f"checkpoint {result.best_checkpoint}")
    if result.registered:
        print(f"registry  {result.registered}")
    if result.parent_run_id:
        print(
            f"mlflow    parent run {result.parent_run_id} in experiment '{sweep.experiment}'; browse: "
            f"{ui_command(result.mlflow_uri or tracking_uri(args.mlflow_dir))}"
        )
