"""What a sweep leaves in its MLflow parent run: the best trial, a table, plots, the registry.

At the end of a sweep the parent run gets the best trial's id, config and metrics, its
best checkpoint, `trials.csv` (every trial: status, epochs, objective, config), the plots
(objective against each swept parameter, learning curves of the top trials, Optuna's
parameter importances), and the best model is registered under an alias, so picking
the best checkpoint is `models:/kmervae-encoder@champion`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmervae.base.metric_keys import EPOCH
from kmervae.core.checkpoint import load_checkpoint
from kmervae.core.plots import spans_orders
from kmervae.tracking.run import BEST_TRIAL_TAG, NOTE_TAG, PARENT_RUN_TAG, SWEEP_TAG, TRIAL_ID_TAG, TRIALS_TAG
from kmervae.tracking.tracker import OUTBOX_FILE, tag_filter

SpaceFn = Callable[[Any], "dict[str, Any] | None"]
"""Define-by-run search space: takes an optuna.Trial, calls trial.suggest_*; returns None."""


@dataclass
class TrialRow:
    """One trial of a sweep as the driver saw it end."""

    trial_id: str
    status: str  # OK or ERROR
    error: str  # the root cause of a failed trial, else ''
    epochs: int  # epochs run (fewer than asked when ASHA stopped it)
    last: float  # the objective at its last report
    params: dict[str, Any]  # what the search space sampled
    best: float | None = None  # the objective at its best epoch (its best checkpoint), once exported

    def as_csv(self, metric: str) -> dict[str, Any]:
        """The row of trials.csv: status, epochs, objective (last and best), then the parameters."""
        head = {"trial_id": self.trial_id, "status": self.status, "error": self.error, "epochs": self.epochs}
        return {**head, metric: self.last, f"best {metric}": self.best, **self.params}


@dataclass
class SweepResult:
    """What a sweep found."""

    name: str
    path: str  # sweep state on Ray storage (a folder or a URI)
    outputs: str  # local folder with every trial's exported checkpoints and plots
    trials: list[TrialRow] = field(default_factory=list)
    best_trial: TrialRow | None = None
    best_median: float | None = None  # the objective's median over the best setting's seeds
    best_seeds: list[float] = field(default_factory=list)  # each of its seeds' best, ascending
    best_checkpoint: Path | None = None
    parent_run_id: str | None = None
    mlflow_uri: str | None = None
    registered: str | None = None  # models:/NAME@ALIAS
    space: SpaceFn | None = None  # for parameter importances


def trial_outputs(outputs: Path, trial_id: str) -> Path:
    """The local folder where a trial's best.pt, last.pt and plots are exported."""
    return Path(outputs) / "trials" / f"trial-{trial_id}" / "outputs"


def space_distributions(space, samples: int = 32, seed: int = 0) -> dict[str, Any]:
    """The distributions a define-by-run space can suggest (union over a few samples)."""
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    found: dict[str, Any] = {}
    for _ in range(samples):
        trial = study.ask()
        space(trial)
        found.update(trial.distributions)
        study.tell(trial, 0.0)
    return found


def report_to_parent(tracker, result, sweep, grid, log: Callable[[str], None]) -> str | None:
    """Log the sweep's outcome to the parent run; register the best model. Returns its models:/ URI."""
    tracker.set_tag(TRIALS_TAG, str(len(result.trials)))
    # Written to the sweep's local outputs (not a temporary folder): users find them there
    # too, and an upload delayed by a tracking outage still has its files.
    outputs = Path(result.outputs)
    outputs.mkdir(parents=True, exist_ok=True)
    table = _write_table([row.as_csv(sweep.metric) for row in result.trials], outputs / "trials.csv")
    tracker.log_artifact(table)
    histories = _trial_histories(result)
    for plot in _plots(result, sweep, histories, outputs, log):
        tracker.log_artifact(plot, "plots")
    fallback = outputs / OUTBOX_FILE
    if result.best_trial is None:
        tracker.finish("FAILED", fallback=fallback, log=log)
        log("no trial finished: nothing to register")
        return None
    best = result.best_trial
    tracker.set_tag(BEST_TRIAL_TAG, best.trial_id)
    tracker.log_params({"best": best.params})
    uri = None
    if result.best_checkpoint is not None:
        checkpoint = load_checkpoint(result.best_checkpoint)
        tracker.log_metrics(
            {k: v for k, v in checkpoint.metrics.items() if isinstance(v, float) and math.isfinite(v)},
            step=int(checkpoint.epoch),
        )
        tracker.log_artifact(result.best_checkpoint, "best_model")
        if sweep.register_as:
            uri = _register(tracker, sweep, result.best_checkpoint, outputs / "model")
            if uri is None:
                log(
                    f"warning: MLflow is unreachable: {sweep.register_as} not registered; the model is in "
                    f"{outputs / 'model'}"
                )
    children = _child_runs(tracker, sweep)
    tracker.set_tag(NOTE_TAG, sweep_description(result, sweep, children, tracker.experiment_id, uri))
    tracker.finish(fallback=fallback, log=log)
    return uri


TOP_TRIALS = 10


def sweep_description(result, sweep, children: dict[str, str], experiment_id: str | None, registered) -> str:
    """The parent run's description: the objective, the best trial (linked to its child run)
    with its settings, the top trials, and where the plots and files are."""

    def link(trial_id: str) -> str:
        run = children.get(trial_id)
        return f"[`{trial_id}`](#/experiments/{experiment_id}/runs/{run})" if run and experiment_id else f"`{trial_id}`"

    failed = sum(1 for r in result.trials if r.status != "OK")
    lines = [
        f"**Sweep `{sweep.name}`**: {len(result.trials)} trial(s), {failed} failed, ranked on `{sweep.metric}` "
        f"({'higher' if sweep.mode == 'max' else 'lower'} is better).",
        "",
    ]
    best = result.best_trial
    if best is not None and best.best is not None:
        settings = ", ".join(f"`{k}={short_value(v)}`" for k, v in best.params.items())
        lines += [f"**Best trial** {link(best.trial_id)}: `{sweep.metric}` **{best.best:.4f}** with {settings}.", ""]
        if sweep.seeds > 1:
            seeds = ", ".join(f"{v:.4g}" for v in result.best_seeds)
            count = len(result.best_seeds)
            lines += [f"Its setting's median over {count} seed(s): **{result.best_median:.4f}** ({seeds}).", ""]
        if registered:
            lines += [f"Registered as `{registered}`; its checkpoint is in this run's `best_model/`.", ""]
    ranked = sorted(
        (r for r in result.trials if r.status == "OK" and r.best is not None),
        key=lambda r: r.best,
        reverse=sweep.mode == "max",
    )[:TOP_TRIALS]
    if ranked:
        keys = sorted({k for r in ranked for k in r.params})
        lines += [
            f"Top {len(ranked)} trial(s):",
            "",
            "| trial | " + sweep.metric + " | epochs | " + " | ".join(k.split(".")[-1] for k in keys) + " |",
            "|---" * (len(keys) + 3) + "|",
        ]
        for r in ranked:
            values = " | ".join(short_value(r.params.get(k, "")) for k in keys)
            lines.append(f"| {link(r.trial_id)} | {r.best:.4f} | {r.epochs} | {values} |")
        lines.append("")
    lines.append(
        "Plots in the artifacts' `plots/`: `objective_vs_params.png` (each trial's best against each setting), "
        "`learning_curves.png` (the top trials by epoch), `param_importances.png`; every trial in `trials.csv`."
    )
    return "\n".join(lines)


def short_value(value) -> str:
    """A sampled setting in a few characters: floats to 3 significant digits (the sweep's
    description and its console lines)."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _child_runs(tracker, sweep) -> dict[str, str]:
    """Trial id -> MLflow run id of the sweep's child runs; {} when MLflow cannot be asked."""
    from kmervae.tracking.tracker import is_unreachable

    if tracker.run_id is None:
        return {}
    query = tag_filter({PARENT_RUN_TAG: tracker.run_id, SWEEP_TAG: sweep.name})
    try:
        runs = tracker.client.search_runs([tracker.experiment_id], filter_string=query, max_results=10_000)
    except Exception as err:
        if not is_unreachable(err):
            raise
        return {}
    return {r.data.tags[TRIAL_ID_TAG]: r.info.run_id for r in runs if TRIAL_ID_TAG in r.data.tags}


def _register(tracker, sweep, best_checkpoint: Path, folder: Path) -> str | None:
    """Register the best trial as an MLflow pyfunc model (its checkpoint inside) under the alias."""
    import shutil

    from kmervae.apply.export import export_mlflow

    shutil.rmtree(folder, ignore_errors=True)  # a resumed sweep exports its best model again
    model = export_mlflow(load_checkpoint(best_checkpoint), best_checkpoint, folder)
    tracker.log_folder(model, "model")
    return tracker.register("model", sweep.register_as, sweep.alias, tags={"sweep": sweep.name})


def _write_table(rows: list[dict[str, Any]], path: Path) -> Path:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _trial_histories(result) -> dict[str, list[dict[str, float]]]:
    histories = {}
    for row in result.trials:
        last = trial_outputs(Path(result.outputs), row.trial_id) / "last.pt"
        if last.exists():
            histories[row.trial_id] = load_checkpoint(last).history
    return histories


def _plots(result, sweep, histories: dict[str, list[dict[str, float]]], tmp: Path, log) -> list[Path]:
    """The sweep's plots in `tmp` (objective against each parameter, the top trials' learning
    curves, parameter importances); none where matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (the plots use its Figure, never pyplot: no process-wide backend)
    except ImportError:
        log("note: matplotlib is not installed; sweep plots not drawn")
        return []
    ok = [r for r in result.trials if r.status == "OK" and r.best is not None]
    plots = [
        _objective_plot(ok, sweep, tmp),
        _curves_plot(ok, sweep, histories, tmp),
    ]
    importance = _importances(result, sweep, ok)
    if importance:
        plots.append(_importance_plot(importance, sweep, tmp))
        (tmp / "param_importances.json").write_text(json.dumps(importance, indent=2))
        plots.append(tmp / "param_importances.json")
    return [p for p in plots if p is not None]


def _objective_plot(ok: list, sweep, tmp: Path) -> Path | None:
    """The best objective of each finished trial against each swept parameter."""
    from matplotlib.figure import Figure

    params = sorted({k for r in ok for k in r.params})
    if not (ok and params):
        return None
    fig = Figure(figsize=(4 * len(params), 3.5))
    axes = fig.subplots(1, len(params), squeeze=False)
    for ax, key in zip(axes[0], params, strict=True):
        points = [(r.params[key], r.best) for r in ok if r.params.get(key) is not None]
        if points and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points):
            ax.scatter([p[0] for p in points], [p[1] for p in points])
            if spans_orders([p[0] for p in points]):
                ax.set_xscale("log")
            if spans_orders([p[1] for p in points]):
                ax.set_yscale("log")
        else:
            labels = sorted({str(p[0]) for p in points})
            ax.scatter([labels.index(str(p[0])) for p in points], [p[1] for p in points])
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        ax.set_xlabel(key)
        ax.set_ylabel(sweep.metric)
    fig.suptitle(f"{sweep.name}: best {sweep.metric} of each finished trial against each swept parameter")
    fig.tight_layout()
    fig.savefig(tmp / "objective_vs_params.png", dpi=110)
    return tmp / "objective_vs_params.png"


def _curves_plot(ok: list, sweep, histories: dict[str, list[dict[str, float]]], tmp: Path) -> Path | None:
    """The objective over epochs of the five best trials."""
    from matplotlib.figure import Figure

    top = sorted(ok, key=lambda r: r.best, reverse=sweep.mode == "max")[:5]
    if not top:
        return None
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for row in top:
        history = histories.get(row.trial_id, [])
        if history:
            ax.plot([m[EPOCH] + 1 for m in history], [m[sweep.metric] for m in history], marker=".", label=row.trial_id)
    ax.set_xlabel("epoch")
    ax.set_ylabel(sweep.metric)
    ax.set_title(f"learning curves of the top {len(top)} trial(s)")
    if spans_orders([m[sweep.metric] for row in top for m in histories.get(row.trial_id, [])]):
        ax.set_yscale("log")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(tmp / "learning_curves.png", dpi=110)
    return tmp / "learning_curves.png"


def _importance_plot(importance: dict[str, float], sweep, tmp: Path) -> Path:
    """Optuna's fANOVA importance of each parameter for the objective."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 0.5 + 0.4 * len(importance)))
    ax = fig.subplots()
    names = list(importance)[::-1]
    ax.barh(names, [importance[n] for n in names])
    ax.set_xlabel("importance (Optuna fANOVA)")
    ax.set_title(f"parameter importance for {sweep.metric}")
    fig.tight_layout()
    fig.savefig(tmp / "param_importances.png", dpi=110)
    return tmp / "param_importances.png"


def _importances(result, sweep, ok: list[TrialRow]) -> dict[str, float]:
    """Optuna's parameter importances over the finished trials (needs two or more)."""
    if len(ok) < 2 or result.space is None:
        return {}
    import optuna

    distributions = space_distributions(result.space)
    study = optuna.create_study(direction="minimize" if sweep.mode == "min" else "maximize")
    for row in ok:
        known = {k: v for k, v in row.params.items() if k in distributions and v is not None}
        try:
            study.add_trial(
                optuna.trial.create_trial(
                    params=known, distributions={k: distributions[k] for k in known}, value=row.best
                )
            )
        except ValueError:
            continue  # a value outside the distribution (changed space on resume): leave it out
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):
        return {}  # too few distinct trials for fANOVA
