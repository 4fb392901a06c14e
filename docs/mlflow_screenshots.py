"""Screenshots of the MLflow UI on a real, finished smoke sweep: what a new user will see.

    python docs/mlflow_screenshots.py [--out docs/images] [--store DIR]

Runs the Quickstart's smoke sweep into a temporary store (or uses `--store`, a folder with
`mlflow.db` and `mlruns/` of a finished sweep), starts the MLflow UI on a free loopback port
in its own process group, and takes screenshots with headless Chromium (Debian's `chromium`
package: `apt-get install chromium`) of the experiment's runs table, the sweep's parent run
(its description) and its plots. The UI is stopped by its process group. The pictures go
in the README's sweep section.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=20000",  # the UI is a single-page app: let its scripts load the runs first
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smoke_sweep(store: Path) -> None:
    """The Quickstart's sweep (labelled example genomes, `recommended` settings), into `store`."""
    subprocess.run(
        [sys.executable, str(REPO / "sweeps" / "latent_sweep.py"), "--smoke-test", "--preset", "recommended",
         "--storage", str(store / "sweeps"), "--mlflow-dir", str(store), "--name", "smoke"],
        check=True, cwd=store,
    )  # fmt: skip


def start_ui(store: Path, port: int) -> subprocess.Popen:
    ui = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
         "--default-artifact-root", str(store / "mlruns"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return ui
        except OSError:
            time.sleep(0.5)
    stop(ui)
    raise SystemExit(f"the MLflow UI did not answer on port {port} within 90 s")


def stop(process: subprocess.Popen) -> None:
    """Stop the UI and its workers: its own process group only."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def screenshot(url: str, path: Path, profile: Path, height: int = 950) -> None:
    subprocess.run(
        [
            "chromium", *CHROMIUM_FLAGS, f"--window-size=1500,{height}", f"--user-data-dir={profile}",
            f"--screenshot={path}", url,
        ],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    print(f"wrote     {path} ({url})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--store", type=Path, help="a finished sweep's folder (mlflow.db, mlruns/)")
    args = parser.parse_args()
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store.resolve() if args.store else Path(tmp) / "store"
        if args.store is None:
            store.mkdir()
            smoke_sweep(store)
        client = MlflowClient(f"sqlite:///{store}/mlflow.db")
        experiment = client.get_experiment_by_name("kmervae-sweeps")
        parent = client.search_runs(
            [experiment.experiment_id], "tags.`kmervae.role` = 'sweep'", order_by=["attributes.start_time DESC"]
        )[0]
        port = free_port()
        ui = start_ui(store, port)
        try:
            base = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}"
            run = f"{base}/runs/{parent.info.run_id}"
            args.out.mkdir(parents=True, exist_ok=True)
            profile = Path(tmp) / "chromium"
            screenshot(f"{base}/runs", args.out / "mlflow-runs.png", profile)
            screenshot(run, args.out / "mlflow-sweep-overview.png", profile, height=1500)  # the description too
            screenshot(f"{run}/artifacts/plots/objective_vs_params.png", args.out / "mlflow-sweep-plots.png", profile)
        finally:
            stop(ui)


if __name__ == "__main__":
    main()
