"""Find the best runs in MLflow: the table behind `kmervae best` and its --download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kmervae.base.errors import ConfigError, InputError
from kmervae.base.metric_keys import VAL_LOSS, Objective
from kmervae.core.run_outputs import BEST_FILE
from kmervae.tracking.run import PARENT_RUN_TAG, ROLE_TAG

MAX_RUNS = 1000


@dataclass(frozen=True)
class BestRun:
    """One finished run as `kmervae best` ranks it: its best epoch by the metric asked for."""

    run_id: str
    name: str
    metric: str
    value: float  # the run's best `metric` over its epochs
    epoch: int  # the epoch it came from (0-based: MLflow's step)
    params: dict[str, str]
    checkpoint: str  # the artifact URI of its best.pt


def best_runs(experiment: str, sweep: str | None = None, metric: str = VAL_LOSS, top: int = 5) -> list[BestRun]:
    """Runs with a checkpoint, best first by the best epoch's `metric` (`Objective` says which way is better)."""
    from mlflow.exceptions import MlflowException

    from kmervae.tracking.tracker import mlflow_client, tag_filter, tracking_uri

    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    client = mlflow_client(tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise InputError(f"no MLflow experiment '{experiment}' in {tracking_uri()} (experiments: {names})")
    query = "attributes.status != 'RUNNING'"
    if sweep is not None:
        try:
            client.get_run(sweep)
        except MlflowException:
            raise InputError(f"--sweep {sweep}: no such MLflow run in {tracking_uri()}") from None
        query += " and " + tag_filter({PARENT_RUN_TAG: sweep})
    objective = Objective(metric)
    rows = []
    for run in client.search_runs([found.experiment_id], filter_string=query, max_results=MAX_RUNS):
        if metric not in run.data.metrics or ROLE_TAG in run.data.tags:  # sweep parents summarise children
            continue
        best = objective.best_of(client.get_metric_history(run.info.run_id, metric), lambda m: m.value)
        if best is None:
            continue
        rows.append(
            BestRun(
                run_id=run.info.run_id,
                name=run.info.run_name,
                metric=metric,
                value=best.value,
                epoch=best.step,
                params=dict(run.data.params),
                checkpoint=f"{run.info.artifact_uri}/checkpoints/{BEST_FILE}",
            )
        )
    rows.sort(key=lambda r: r.value, reverse=objective.mode == "max")
    if not rows:
        raise InputError(f"no finished run in experiment '{experiment}' logged {metric}")
    return rows[:top]


def format_rows(rows: list[BestRun], metric: str) -> str:
    """A table of runs with the parameters that differ between them."""
    keys = sorted({k for r in rows for k in r.params})
    varying = [
        k for k in keys if len({r.params.get(k) for r in rows}) > 1 and not k.startswith(("trial.", "data.path"))
    ][:4]
    header = f"{'run_id':<34}{'name':<28}{metric:>12}{'epoch':>7}" + "".join(f"{k:>22}" for k in varying)
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.run_id:<34}{str(r.name)[:27]:<28}{r.value:>12.4f}{r.epoch:>7}"
            + "".join(f"{str(r.params.get(k, ''))[:20]:>22}" for k in varying)
        )
    lines.append(f"best checkpoint: {rows[0].checkpoint}")
    return "\n".join(lines)


def download_checkpoint(run_id: str, directory: str | Path) -> Path:
    """Download a run's best checkpoint into `directory`."""
    from kmervae.tracking.checkpoints import fetch_checkpoint

    return fetch_checkpoint(run_id, directory)
