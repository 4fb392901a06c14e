"""MLflow tracking with embedded defaults: a local SQLite store, or MLFLOW_TRACKING_URI.

Uses `MlflowClient` with explicit run ids instead of mlflow's global active run, so the
same code works in the driver, in Tune trials and in Ray Train workers. Paths are
absolute (RAY_NOTES.md: under `ray job submit --working-dir` the job runs in a temporary
folder, where a relative `sqlite:///mlflow.db` or `./mlruns` would be lost). Metrics are
logged in one batch per epoch. mlflow is imported lazily: the model core never needs it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Mapping

from kmervae.errors import ConfigError

DEFAULT_EXPERIMENT = "kmervae"
DB_NAME = "mlflow.db"
ARTIFACTS_NAME = "mlruns"


def tracking_uri(root: str | Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else an absolute SQLite file `mlflow.db` in `root` (default: cwd)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root or Path.cwd()).absolute()
    return f"sqlite:///{root / DB_NAME}"


def default_artifact_root(uri: str) -> str | None:
    """For a local SQLite store: an absolute `mlruns/` folder beside the database."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_NAME).as_uri()
    return None  # a tracking server decides (--artifacts-destination)


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if uri.startswith("sqlite:///"):
        root = Path(uri.removeprefix("sqlite:///")).parent
        return f"mlflow ui --backend-store-uri {uri} --default-artifact-root {root / ARTIFACTS_NAME}"
    return f"open {uri} in a browser"


@contextlib.contextmanager
def closes_on_error(tracker: "Tracker | None"):
    """Mark the MLflow run KILLED (interrupted) or FAILED when the block raises, then re-raise."""
    try:
        yield
    except BaseException as err:
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


def log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    """Log a dict of metrics at `step` in one MLflow call (never one call per key)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'model': {'latent_dim': 8}} -> {'model.latent_dim': '8'} (MLflow params are strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """One MLflow run: params once, metrics per epoch, artifacts at the end.

    With `resume=True`, an existing run of the experiment whose tags equal `tags` is
    continued instead of creating a duplicate (a training run resumed by name).
    """

    def __init__(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        uri: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        resume: bool = False,
    ):
        from mlflow import MlflowClient

        self.uri = uri or tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id
                if found is not None
                else self.client.create_experiment(experiment, artifact_location=default_artifact_root(self.uri))
            )
        except Exception as err:  # mlflow raises MlflowException, requests and sqlalchemy errors alike
            raise ConfigError(f"MLflow tracking store {self.uri} is not usable: {str(err).splitlines()[0][:300]}") from None
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        previous = self._find(all_tags) if resume and all_tags else None
        self.resumed = previous is not None
        if previous is not None:
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
        else:
            self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id

    def _find(self, tags: Mapping[str, str]) -> str | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (flattened) in batches of MLflow's limit."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for lo in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[lo : lo + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one epoch's metrics in one call."""
        log_metrics(self.client, self.run_id, metrics, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file to the run."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status)

    def log_folder(self, folder: str | Path, artifact_path: str) -> None:
        """Upload a folder's contents under `artifact_path`."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def register(self, artifact_path: str, name: str, alias: str | None, tags: Mapping[str, str] | None = None) -> str:
        """Register this run's `artifact_path` folder as a new version of model `name`, point `alias` at it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="kmervae encoders (MLflow pyfunc; checkpoint inside)")
        except MlflowException:
            pass  # exists already: add a version
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(name, source, run_id=self.run_id, tags=dict(tags or {}))
        if alias:
            self.client.set_registered_model_alias(name, alias, version.version)
            return f"models:/{name}@{alias}"
        return f"models:/{name}/{version.version}"
