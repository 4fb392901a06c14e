"""MLflow tracking with embedded defaults: a local SQLite store, or MLFLOW_TRACKING_URI.

Uses `MlflowClient` with explicit run ids instead of mlflow's global active run, so the
same code works in the driver, in Tune trials and in Ray Train workers. Paths are
absolute (docs/ray_patterns.md: under `ray job submit --working-dir` the job runs in a temporary
folder, where a relative `sqlite:///mlflow.db` or `./mlruns` would be lost). Metrics are
logged in one batch per epoch. mlflow is imported lazily: the model core never needs it.

A tracking server that cannot be reached when a run starts is an error naming its URI.
Once a run has started, every call goes through an `Outbox`: a call that fails because
the server is unreachable is kept and retried, training goes on, and whatever is still
unsent when the run ends is written to a JSON-lines file that `kmervae mlflow-sync`
replays. Hours of GPU time are never lost to a tracking outage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmervae.base.errors import ConfigError, InputError
from kmervae.base.metric_keys import EPOCH, VAL_LOSS
from kmervae.base.quiet import logger_level
from kmervae.base.redact import redact, redact_params

DEFAULT_EXPERIMENT = "kmervae"
DB_NAME = "mlflow.db"
OUTBOX_FILE = "mlflow-outbox.jsonl"
"""Where a run's MLflow calls that could not be sent are saved (in its output folder)."""
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
    return f"open {redact(uri)} in a browser"


def mlflow_client(uri: str):
    """An MlflowClient of `uri`. A SQLite store is opened here, once per process (MLflow caches
    it), with MLflow's INFO lines about creating or migrating its tables held back: nothing
    for a user to act on."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if uri.startswith("sqlite:"):
        with logger_level("mlflow.store.db.utils", logging.WARNING):
            client.search_experiments(max_results=1)
    return client


@contextlib.contextmanager
def closes_on_error(tracker: Tracker | None):
    """Mark the MLflow run KILLED (interrupted) or FAILED when the block raises, then re-raise."""
    try:
        yield
    except BaseException as err:
        if tracker is not None:
            tracker.finish(
                "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED",
                log=lambda line: print(line, file=sys.stderr),
            )
        raise


def metrics_op(run_id: str, metrics: Mapping[str, float], step: int) -> dict:
    """An outbox call logging a dict of metrics at `step` in one batch (never one call per key)."""
    now = int(time.time() * 1000)
    return {"op": "log_batch", "run_id": run_id, "metrics": [[k, float(v), now, int(step)] for k, v in metrics.items()]}


# MLflow's HTTP client retries 7 times with exponential backoff (minutes per call). While a
# run trains, a call to a server that is down must cost seconds: the outbox retries later.
IMPATIENT_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def use_impatient_http() -> None:
    """Make this process's MLflow HTTP calls give up after one quick retry (`IMPATIENT_HTTP`),
    where the person or the job has not set these variables (their value wins).

    MLflow 3.17 reads its retry policy only from the environment (its client and store take
    none), so this is process set-up, done once by each of kmervae's entry points: the
    command line, a sweep script, a Tune trial and the Ray Train controller's epoch logger.
    A library caller gets MLflow's own policy unless it calls this too."""
    for key, value in IMPATIENT_HTTP.items():
        os.environ.setdefault(key, value)


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable store raises beneath MLflow's own exception: requests' connection,
    timeout and retries-exhausted errors (a 502/503/504 answered until the retries ran out),
    the OS's, and SQLAlchemy's OperationalError (a locked or unreachable database)."""
    import requests

    types: tuple[type[BaseException], ...] = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.RetryError,
        ConnectionError,
        TimeoutError,
    )
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # an HTTP-only MLflow client
        return types
    return (*types, OperationalError)


def is_unreachable(err: BaseException) -> bool:
    """Whether an MLflow call failed because the store could not be reached (worth retrying).

    Decided by type: MLflow wraps the client's error in an MlflowException, raised while
    handling it (so it is the exception's __context__ or __cause__)."""
    transient, seen = _transient_errors(), set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, transient):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def resolve_run(client, spec: Mapping[str, Any]) -> str:
    """The run that `spec` (experiment, name, tags) names: found by its tags, else created.

    Calls of a run that could not be created while the store was down carry this spec
    instead of a run id, so the run is made (or a run of a trial found again) on replay.
    """
    experiment_id = experiment_id_of(client, spec["experiment"])
    found = find_run(client, experiment_id, spec["tags"])
    return found or client.create_run(experiment_id, run_name=spec.get("name"), tags=dict(spec["tags"])).info.run_id


PARENT_RUN_TAG = "mlflow.parentRunId"
"""MLflow's own tag of a child run (a sweep's trial): its parent's run id."""
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = {EXPERIMENT_KIND_TAG: "custom_model_development"}
"""The tag MLflow 3's UI reads to open an experiment on its runs table (untagged, it guesses,
and with no traces it lands on the GenAI overview)."""


def experiment_id_of(client, name: str) -> str:
    """The id of experiment `name`, created (artifacts beside a local store, marked as model
    training) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if not any(key in found.tags for key in EXPERIMENT_KIND):  # made by an older kmervae
            for key, value in EXPERIMENT_KIND.items():
                client.set_experiment_tag(found.experiment_id, key, value)
        return found.experiment_id
    root = default_artifact_root(client.tracking_uri)
    return client.create_experiment(name, artifact_location=root, tags=EXPERIMENT_KIND)


def tag_filter(tags: Mapping[str, str]) -> str:
    """An MLflow search filter for runs whose tags equal `tags`: keys in backticks, values
    quoted with a quote character they do not contain (MLflow's grammar has no escapes)."""
    return " and ".join(f"tags.`{key}` = {quoted(value)}" for key, value in tags.items())


def quoted(value: str) -> str:
    """`value` as a string literal of an MLflow search filter."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ConfigError(f"{value!r} holds both quote characters, which MLflow cannot search for; rename it")


def find_run(client, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of a run of the experiment whose tags equal `tags`, or None."""
    query = tag_filter(tags)
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def execute(client, op: Mapping[str, Any]) -> int:
    """Perform one outbox call (a JSON-able dict) with an MlflowClient; returns the epochs backfilled."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = op.get("run_id") or resolve_run(client, op["run"])
    kind = op["op"]
    if kind == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, ts, step) for k, v, ts, step in op.get("metrics", [])],
            params=[Param(k, v) for k, v in op.get("params", [])],
            tags=[RunTag(k, v) for k, v in op.get("tags", [])],
        )
    elif kind == "log_artifact":
        client.log_artifact(run_id, op["path"], op.get("artifact_path"))
    elif kind == "log_artifacts":
        client.log_artifacts(run_id, op["path"], op.get("artifact_path"))
    elif kind == "set_terminated":
        client.set_terminated(run_id, op["status"])
    elif kind == "sync_history":
        # Idempotent: logs only the epochs the run does not have yet (the worker's own
        # logging may have missed some while the server was down, or been killed).
        logged = {m.step for m in client.get_metric_history(run_id, op["key"])}
        missing = [m for m in op["history"] if int(m[EPOCH]) not in logged]
        for m in missing:
            execute(client, metrics_op(run_id, m, int(m[EPOCH])))
        return len(missing)
    else:
        raise ValueError(f"unknown outbox call {kind!r}")
    return 0


class Outbox:
    """MLflow calls of a started run, sent in order; kept and retried while the store is unreachable.

    A call is sent at once when nothing is waiting. After a failure, calls queue up and a
    retry happens at most every `retry_every_s` (so a dead server costs one quick attempt
    per interval, not one per epoch). `close()` makes a last attempt and writes what is
    left to `fallback` (JSON lines, replayed by `kmervae mlflow-sync`). Errors that are not
    about reachability (a rejected value) drop that call and are reported, never raised.
    """

    def __init__(self, client, uri: str, fallback: str | Path | None = None, retry_every_s: float = 30.0):
        self.client, self.uri = client, uri
        self.fallback = Path(fallback) if fallback else None
        self.retry_every_s = retry_every_s
        self.pending: list[dict] = []
        self.last_failure: float | None = None
        self.outage_started: float | None = None
        self.outage_seconds = 0.0
        self.sent_late = 0
        self.backfilled = 0
        self.dropped: list[str] = []

    def send(self, op: dict) -> bool:
        """Queue `op` and send what is waiting (unless a retry is not due yet); True when all went."""
        self.pending.append(op)
        if self.last_failure is not None and time.monotonic() - self.last_failure < self.retry_every_s:
            return False
        return self.flush()

    def flush(self) -> bool:
        while self.pending:
            op = self.pending[0]
            try:
                self.backfilled += execute(self.client, op)
            except Exception as err:  # mlflow, requests and sqlalchemy errors alike
                if is_unreachable(err):
                    self.last_failure = time.monotonic()
                    self.outage_started = self.outage_started or time.time()
                    return False
                self.dropped.append(f"{op['op']}: {str(err).splitlines()[0][:200]}")
            late = self.outage_started is not None
            self.pending.pop(0)
            self.sent_late += late
        if self.outage_started is not None:
            self.outage_seconds += time.time() - self.outage_started
            self.outage_started = None
        self.last_failure = None
        return True

    def close(self) -> list[str]:
        """Last attempt; returns report lines: 'warning: ...' for a gap, 'note: ...' for epochs
        backfilled from the checkpoint (routine when ASHA stops a trial); [] when all went on time."""
        self.flush()
        notes: list[str] = []
        if self.pending:
            values = sum(len(op.get("metrics", [])) for op in self.pending)
            where = "they are lost (no fallback file)"
            if self.fallback is not None:
                self.fallback.parent.mkdir(parents=True, exist_ok=True)
                with open(self.fallback, "a") as file:
                    for op in self.pending:
                        file.write(json.dumps(op) + "\n")
                where = f"saved to {self.fallback}; send them later with: kmervae mlflow-sync {self.fallback}"
            notes.append(
                f"warning: MLflow at {redact(self.uri)} is unreachable: {len(self.pending)} call(s) "
                f"({values} metric values) not logged; {where}"
            )
            self.pending = []
        elif self.sent_late:
            notes.append(
                f"warning: MLflow at {redact(self.uri)} was unreachable for {self.outage_seconds:.0f} s; "
                f"{self.sent_late} call(s) were buffered and sent late, none lost"
            )
        if self.dropped:
            notes.append(f"warning: MLflow refused {len(self.dropped)} call(s): {'; '.join(self.dropped[:3])}")
        if self.backfilled:
            notes.append(
                f"note: logged {self.backfilled} epoch(s) to MLflow from the checkpoint's history (the "
                "training worker had not sent them)"
            )
        return notes


def sync_file(path: str | Path, uri: str | None = None) -> tuple[int, int]:
    """Send the calls saved in an outbox fallback file; returns (sent, left). Calls that still
    cannot be sent stay in the file."""

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such MLflow outbox file")
    try:
        ops = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as err:
        raise InputError(f"{path}: not an MLflow outbox file ({err})") from None
    uri = uri or tracking_uri()
    outbox = Outbox(mlflow_client(uri), uri)
    outbox.pending = list(ops)
    outbox.flush()
    left = outbox.pending
    if left:
        path.write_text("".join(json.dumps(op) + "\n" for op in left))
    else:
        path.unlink()
    return len(ops) - len(left), len(left)


def store_error(uri: str, err: BaseException) -> ConfigError:
    """The one-line error for a tracking store that cannot be used."""
    what = "unreachable" if is_unreachable(err) else "not usable"
    return ConfigError(
        f"MLflow tracking store {redact(uri)} is {what} ({redact(str(err).splitlines()[0][:200])}); "
        "start it, fix MLFLOW_TRACKING_URI, or run without MLflow (--no-mlflow)"
    )


def check_reachable(uri: str) -> None:
    """Fail in seconds, naming the store, when it cannot be used (before any training starts)."""

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        client = mlflow_client(uri)  # a SQLite store is opened (and so checked) there
        if not uri.startswith("sqlite:"):
            client.search_experiments(max_results=1)
    except Exception as err:
        raise store_error(uri, err) from None


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
    continued instead of creating a duplicate (a training run resumed by name). The store
    must be reachable here (else a ConfigError naming it) unless `defer`: then a run that
    cannot be created yet is created by the first call that gets through. Afterwards calls
    go through an `Outbox` whose unsent calls `close()` writes to `fallback`.
    """

    def __init__(
        self,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        uri: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        resume: bool = False,
        fallback: str | Path | None = None,
        defer: bool = False,
    ):

        self.uri = uri or tracking_uri()
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = mlflow_client(self.uri)
        all_tags = {k: redact(str(v)) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        self.run_spec = {"experiment": experiment, "name": run_name, "tags": all_tags}
        self.run_id: str | None = None
        self.resumed = False
        previous = None
        try:
            self.experiment_id = experiment_id_of(self.client, experiment)
            previous = find_run(self.client, self.experiment_id, all_tags) if resume and all_tags else None
            if previous is not None:
                self.run_id = previous
                self.client.update_run(previous, status="RUNNING")
            else:
                self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags).info.run_id
        except Exception as err:  # mlflow raises MlflowException, requests and sqlalchemy errors alike
            if not (defer and is_unreachable(err)):
                raise store_error(self.uri, err) from None
            # The run is found or made when the store answers again (or on `kmervae mlflow-sync`).
        self.resumed = self.run_id is not None and previous is not None
        self.outbox = Outbox(self.client, self.uri, fallback)

    def _ref(self) -> dict:
        """How an outbox call names this run: its id, or (created while the store was down) its spec."""
        return {"run_id": self.run_id} if self.run_id else {"run_id": None, "run": self.run_spec}

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (flattened, credentials masked) in batches of MLflow's limit."""
        items = [[k, str(v)[:6000]] for k, v in redact_params(flatten(params)).items()]
        for lo in range(0, len(items), 100):
            self.outbox.send({"op": "log_batch", **self._ref(), "params": items[lo : lo + 100]})

    def set_tag(self, key: str, value: str) -> None:
        self.outbox.send({"op": "log_batch", **self._ref(), "tags": [[key, redact(str(value))[:5000]]]})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one epoch's metrics in one call."""
        self.outbox.send({**metrics_op(self.run_id, metrics, step), **self._ref()})

    def sync_history(self, history: list[Mapping[str, float]], key: str = VAL_LOSS) -> None:
        """Make sure every epoch of `history` is logged once (backfills what a worker missed)."""
        self.outbox.send({"op": "sync_history", **self._ref(), "key": key, "history": [dict(m) for m in history]})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file to the run."""
        self.outbox.send(
            {"op": "log_artifact", **self._ref(), "path": str(Path(path).absolute()), "artifact_path": artifact_path}
        )

    def log_folder(self, folder: str | Path, artifact_path: str) -> None:
        """Upload a folder's contents under `artifact_path`."""
        self.outbox.send(
            {"op": "log_artifacts", **self._ref(), "path": str(Path(folder).absolute()), "artifact_path": artifact_path}
        )

    def finish(self, status: str = "FINISHED", fallback: str | Path | None = None, log=None) -> list[str]:
        """Mark the run FINISHED, FAILED or KILLED. Calls still unsent go to `fallback`; the
        outbox's report lines (a gap, epochs backfilled) are returned and passed to `log`."""
        self.outbox.send({"op": "set_terminated", **self._ref(), "status": status})
        if fallback is not None:
            self.outbox.fallback = Path(fallback)
        report = self.outbox.close()
        for line in report if log is not None else ():
            log(line)
        return report

    def register(
        self, artifact_path: str, name: str, alias: str | None, tags: Mapping[str, str] | None = None
    ) -> str | None:
        """Register this run's `artifact_path` folder as a new version of model `name`, point `alias` at it.

        Returns the model URI, or None when the store is unreachable (the artifacts are not
        uploaded yet; register later from the run)."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

        if not self.outbox.flush() or self.run_id is None:
            return None
        try:
            try:
                self.client.create_registered_model(
                    name, description="kmervae encoders (MLflow pyfunc; checkpoint inside)"
                )
            except MlflowException as err:
                if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                # the model exists already: add a version
            source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
            version = self.client.create_model_version(name, source, run_id=self.run_id, tags=dict(tags or {}))
            if alias:
                self.client.set_registered_model_alias(name, alias, version.version)
                return f"models:/{name}@{alias}"
            return f"models:/{name}/{version.version}"
        except Exception as err:
            if is_unreachable(err):
                return None
            raise
