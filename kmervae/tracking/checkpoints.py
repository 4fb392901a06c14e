"""Fetching a kmervae checkpoint out of MLflow: the one lookup `kmervae best --download` and
`kmervae export` share."""

from __future__ import annotations

from pathlib import Path

from kmervae.base.errors import InputError
from kmervae.tracking.tracker import tracking_uri

CHECKPOINT_IN_MODEL = "checkpoint.pt"
"""File name of the source checkpoint inside an exported MLflow model's artifacts."""

RUN_CHECKPOINTS = ("checkpoints/best.pt", "best_model/best.pt", f"model/artifacts/{CHECKPOINT_IN_MODEL}")
"""Where a run keeps its best checkpoint: a training run or trial, a sweep's parent, a registered model."""


def is_run_id(source: str) -> bool:
    """MLflow run ids are 32 alphanumeric characters."""
    return len(source) == 32 and source.isalnum()


def fetch_checkpoint(source: str, directory: str | Path) -> Path:
    """Download the checkpoint of `source` (a run id: its best; a runs:/ or models:/ URI) into `directory`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()  # passed explicitly: mlflow.set_tracking_uri would change this process's environment
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    candidates = [f"runs:/{source}/{path}" for path in RUN_CHECKPOINTS] if is_run_id(source) else [source]
    errors = []
    for candidate in candidates:
        try:
            local = mlflow.artifacts.download_artifacts(
                candidate, dst_path=str(directory), tracking_uri=uri, registry_uri=uri
            )
        except (MlflowException, OSError) as err:
            errors.append(str(err).splitlines()[0][:200])
            continue
        local = Path(local)
        if local.is_file():
            return local
        found = sorted(local.rglob(CHECKPOINT_IN_MODEL)) + sorted(local.rglob("best.pt"))
        if found:
            return found[0]
        errors.append(f"{candidate} holds no {CHECKPOINT_IN_MODEL} or best.pt")
    raise InputError(f"{source}: no kmervae checkpoint found in MLflow ({uri}): {'; '.join(errors)}")
