"""Shared fixtures and helpers: the bundled examples, small FASTA writers, a random model batch,
the CLI as a subprocess, and local clusters a test starts and stops itself."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# One OpenMP thread per process, set before any test imports torch; the subprocesses and Ray
# clusters the tests start inherit it. The suite runs as two pytest processes on two cores
# (`-n 2`), beside Ray workers and command-line subprocesses. By default torch starts one
# thread per core in each process, and the threads spin while they wait for each other. The
# fast tier took 308 s and 605 busy core-seconds with torch's default, and 137 s and 264 with
# one thread (bench/RESULTS.md). A value set outside wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def random_batch(batch: int = 4, seed: int = 0):
    """Model inputs (length, gc, 7-, 4-, 3-mer counts) of `batch` random contigs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(1000, 10_000, (batch,), generator=g),
        torch.rand(batch, generator=g),
        torch.randint(0, 4, (batch, 8192), generator=g).to(torch.uint8),
        torch.randint(0, 60, (batch, 136), generator=g).to(torch.int32),
        torch.randint(1, 200, (batch, 32), generator=g),
    )


def kmervae(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The command line, run as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "kmervae.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    """The genomes bundled with the repository (always present)."""
    return EXAMPLES


def read_genome_record(path: Path) -> tuple[str, str]:
    """(id, bases) of a one-record gzipped FASTA file (the bundled genomes)."""
    import gzip

    with gzip.open(path, "rt") as handle:
        header, *lines = handle.read().split("\n")
    return header[1:].split()[0], "".join(lines)


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60, newline: str = "\n") -> Path:
    """Write records as multi-line FASTA, compressed by the file's suffix (.gz, .bz2, .xz, .zst)."""
    lines = []
    for header, seq in records:
        lines.append(f">{header}")
        lines.extend(seq[i : i + width] for i in range(0, len(seq), width))
    data = (newline.join(lines) + newline).encode()
    return write_bytes(path, data)


def tnf_embedded_assembly(
    root: Path, records: list[tuple[str, str]], labels: dict[str, str], fragment_length: int
) -> dict:
    """An assembly of `records` (labelled by `labels`, record id -> genome) cut into contigs of
    `fragment_length`, featurized and embedded as z-scored TNF: a real composition embedding in
    embed's schema, for the binning and marker tests. Returns its paths, ids and genomes."""
    import numpy as np

    from kmervae.apply.embed import write_embeddings
    from kmervae.apply.evaluate import baselines
    from kmervae.base.feature_table import FeatureTable
    from kmervae.features.featurize import FeaturizeSettings, featurize
    from kmervae.features.labels import Labels

    fasta = write_fasta(root / "assembly.fna", records)
    labels_tsv = root / "labels.tsv"
    labels_tsv.write_text("".join(f"{rid}\t{genome}\n" for rid, genome in labels.items()))
    features = root / "features"
    featurize([fasta], features, FeaturizeSettings(fragment_length=fragment_length), Labels.from_tsv(labels_tsv))
    table = FeatureTable.from_parquet(features)
    ids = np.asarray(table.contig_ids, dtype=object)
    tnf = baselines(features, ids, 8)["tnf_zscore"]
    embeddings = write_embeddings(root / "tnf.parquet", ids, table.labels, table.length, table.gc, tnf)
    return {
        "root": root,
        "fasta": fasta,
        "labels": labels_tsv,
        "features": features,
        "embeddings": embeddings,
        "ids": ids,
        "genome": np.asarray(table.labels, dtype=object),
    }


def write_bytes(path: Path, data: bytes) -> Path:
    """Write raw bytes, compressed according to the file's suffix."""
    suffix = path.suffix
    if suffix == ".gz":
        data = gzip.compress(data)
    elif suffix == ".bz2":
        data = bz2.compress(data)
    elif suffix == ".xz":
        data = lzma.compress(data)
    elif suffix == ".zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def example_features(tmp_path_factory) -> Path:
    """The bundled examples featurized as 5 kb labelled contigs (1,558 contigs), made once per session."""
    from kmervae.features.featurize import FeaturizeSettings, featurize
    from kmervae.features.labels import Labels

    out = tmp_path_factory.mktemp("example-features") / "features"
    featurize(
        sorted(EXAMPLES.glob("*.fna.gz")), out, FeaturizeSettings(fragment_length=5000), Labels(from_filename=True)
    )
    return out


ABUNDANCE_SAMPLES = 3


@pytest.fixture(scope="session")
def abundance_features(tmp_path_factory):
    """The bundled examples as 5 kb labelled contigs with depths in 3 samples: each genome has its
    own depth profile (a log-normal per sample), each record a little noise around it. Written in
    files of 400 rows (4 files), as a large dataset is in many: readers must keep their order.
    The tests that judge bins by marker genes ask for `marked_abundance_features` (the same dataset
    with its markers.tsv)."""
    import numpy as np

    from kmervae.abundance.depth_table import AbundanceLookup, DepthTable
    from kmervae.features.fasta import FastaReader
    from kmervae.features.featurize import FeaturizeSettings, featurize
    from kmervae.features.labels import Labels

    rng = np.random.default_rng(7)
    paths = sorted(EXAMPLES.glob("*.fna.gz"))
    contigs, depths = [], []
    for path in paths:
        profile = rng.lognormal(1.5, 1.0, ABUNDANCE_SAMPLES)
        for record in FastaReader(path):
            contigs.append(record.id)
            depths.append(profile * rng.lognormal(0, 0.05, ABUNDANCE_SAMPLES))
    table = DepthTable(
        "synthetic",
        "vamb",
        tuple(contigs),
        tuple(f"S{i + 1}" for i in range(ABUNDANCE_SAMPLES)),
        np.array(depths, np.float32),
        None,
    )
    out = tmp_path_factory.mktemp("abundance-features") / "features"
    featurize(
        paths,
        out,
        FeaturizeSettings(fragment_length=5000, rows_per_file=400, row_group_size=200),
        Labels(from_filename=True),
        abundance=AbundanceLookup(table),
    )
    return out


@pytest.fixture(scope="session")
def marked_abundance_features(abundance_features):
    """`abundance_features` with its contigs' marker genes (markers.tsv, as `featurize --markers`
    keeps them), so that runs can report val/est_nc_bins. Apart, because finding them takes
    seconds that the tests without markers need not wait for."""
    from kmervae.binning.marker_search import markers_of_fasta
    from kmervae.binning.markers import DATASET_MARKERS, write_markers

    write_markers(
        markers_of_fasta(sorted(EXAMPLES.glob("*.fna.gz")), 5000, 1000)[0], abundance_features / DATASET_MARKERS
    )
    return abundance_features


@pytest.fixture(autouse=True)
def no_outside_servers(monkeypatch):
    """Tests use their own local stores and clusters, never a server the developer's shell points at."""
    for name in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True, scope="session")
def impatient_mlflow_http():
    """The tests call the library as kmervae's entry points do, with MLflow's quick HTTP
    give-up (`use_impatient_http`); the Ray clusters they start inherit it."""
    from kmervae.tracking.tracker import IMPATIENT_HTTP

    with pytest.MonkeyPatch.context() as patch:
        for key, value in IMPATIENT_HTTP.items():
            patch.setenv(key, value)
        yield


RAY_QUICK_RUNS = {
    # Ray Train's controller looks at its workers every 2 s by default, so each report and
    # the end of every run wait up to 2 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray keeps one idle worker process per CPU and kills the others after 1 s, so each run's
    # read tasks and actors start new processes that import torch again: keep six for a
    # minute (a 2-worker run took 21-22 s instead of 25-28 s; bench/RESULTS.md).
    "RAY_num_workers_soft_limit": "6",
    "RAY_idle_worker_killing_time_threshold_ms": "60000",
    # Ray Train watches for node preemption (spot instances) with an actor per run: a process
    # of its own, started for each of the suite's runs, on a one-node cluster that nothing preempts.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Data's parquet reader asks for 32 actors to read footers, ten files per actor: the
    # tests' datasets have one to four files, and each actor that starts is a process.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
}


@pytest.fixture(autouse=True, scope="session")
def ray_runs_start_quickly():
    """Settings for the Ray clusters the tests start, which inherit this environment (a value
    set outside wins): the suite's twenty-odd short runs and trials each pay Ray's start-up."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in RAY_QUICK_RUNS.items():
            patch.setenv(key, os.environ.get(key, value))
        yield


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server() -> dict[str, str]:
    """A moto S3 server on loopback for the session; returns the environment that points pyarrow's
    and boto3's S3 clients at it (`AWS_ENDPOINT_URL` and test credentials)."""
    pytest.importorskip("moto")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:  # serving: moto answers any request, even an unsigned one
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the moto S3 server did not start"
                time.sleep(0.3)
        yield {"AWS_ENDPOINT_URL": endpoint, **S3_CREDENTIALS}
    finally:
        server.terminate()
        server.wait(timeout=30)


SHARED_RAY: dict[str, str] = {}
"""The GCS address of the session's shared cluster (`local_ray`), once it runs."""


@pytest.fixture(scope="session")
def local_ray(s3_server):
    """The suite's one in-process Ray cluster (2 CPUs), shared by every module that trains,
    sweeps or embeds on Ray in this process: a start and a stop cost about 6 s. Its workers can
    reach the session's S3 server (a cluster's processes take their environment when it starts)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a module's own cluster (fit_ray starts one when none runs)
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        logging_level="WARNING",
        runtime_env={"env_vars": s3_server},
    )
    SHARED_RAY["address"] = ray.get_runtime_context().gcs_address
    yield
    SHARED_RAY.clear()
    ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def own_ray_clusters_end_with_their_module():
    """A cluster that a module's code started in this process (fit_ray, run_sweep without
    `local_ray`) stops at the module's end: the next module may need its own (ray.init twice fails)."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        if ray.get_runtime_context().gcs_address != SHARED_RAY.get("address"):
            ray.shutdown()


def cluster_actors(filters: list | None = None) -> list:
    """The actors of this process's Ray cluster that pass Ray's state-API `filters`, by the
    cluster's own address: never another cluster's on the machine (a user's)."""
    import ray
    from ray.util.state import list_actors

    return list_actors(address=ray.get_runtime_context().gcs_address, filters=filters, limit=10_000)


def train_workers(alive_only: bool = False) -> list:
    """The Ray Train workers of this process's cluster: running now, or every one it started."""
    return cluster_actors([("class_name", "=", "RayTrainWorker"), *([("state", "=", "ALIVE")] if alive_only else [])])


@contextlib.contextmanager
def ray_untouched():
    """Asserts that the code inside neither started Ray nor, where a cluster runs (the shared
    one), made an actor on it: what "refused before Ray starts" means on either."""
    import ray

    running = ray.is_initialized()
    before = len(cluster_actors()) if running else 0
    yield
    assert ray.is_initialized() == running, "Ray was started"
    if running:
        assert len(cluster_actors()) == before, "an actor was made on the running cluster"


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` is still running."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_process_group(pgid: int, grace_s: float = 15.0) -> None:
    """Stop a process group this test started: SIGTERM, then SIGKILL after `grace_s`, then wait until it is empty."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait_s
        while time.time() < deadline and group_alive(pgid):
            time.sleep(0.2)
    assert not group_alive(pgid), f"process group {pgid} survived SIGKILL"


def processes_mentioning(marker: str) -> list[str]:
    """Command lines of running processes that contain `marker` (a port or folder only this test uses)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if marker in text:
            found.append(text[:200])
    return found


def free_port() -> int:
    """A TCP port nothing listens on now, from 20000-32767: above Ray's worker ports
    (10002-19999) and below the kernel's ephemeral range, where every outgoing connection and
    every bind to port 0 (Ray's own services included) takes its port, so none of those can
    take it before the server it is meant for starts. The two pytest-xdist workers (`-n 2`)
    draw from halves of their own, so they cannot pick one port at once."""
    import random

    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")) % 2
    low = 20_000 + worker * 6_384
    rng = random.Random()
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", rng.randint(low, low + 6_383)))
            except OSError:  # in use: draw again
                continue
            return s.getsockname()[1]


def start_local_cluster(state: Path) -> dict[str, str]:
    """infra/local/start.sh with its own folder and free ports; returns its environment (stop with stop.sh)."""
    if not (REPO / ".venv" / "bin" / "ray").exists():
        pytest.skip("needs the project's .venv (the README's setup) for the cluster's Python")
    env = dict(
        os.environ,
        KMERVAE_LOCAL_DIR=str(state),
        RAY_PORT=str(free_port()),
        DASHBOARD_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        AGENT_PORT=str(free_port()),
        CLIENT_PORT=str(free_port()),
        NUM_CPUS="2",
        MLFLOW_WORKERS="1",  # one client (the test), and each worker imports MLflow: ~3 s of CPU
        STOP_GRACE_S="3",
    )
    started = subprocess.run(
        ["bash", str(REPO / "infra/local/start.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    if started.returncode != 0:
        subprocess.run(["bash", str(REPO / "infra/local/stop.sh")], env=env, capture_output=True, timeout=300)
    assert started.returncode == 0, started.stderr + started.stdout
    env["BANNER"] = started.stdout
    return env


def stop_local_cluster(env: dict[str, str]) -> str:
    """infra/local/stop.sh for a cluster `start_local_cluster` started; returns what it printed."""
    stopped = subprocess.run(
        ["bash", str(REPO / "infra/local/stop.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    return stopped.stdout


@pytest.fixture(scope="session")
def bystander(local_ray, tmp_path_factory):
    """Someone else's Ray cluster and MLflow server on this machine: tests that start and stop
    their own must leave these running. The Ray cluster is the session's in-process one (its own
    session folder and ports: what `ray stop --force` or a search for Ray's processes would
    kill); the MLflow server is started here. `check()` asserts both still serve."""
    import ray

    server = MlflowServer(tmp_path_factory.mktemp("bystander")).start()

    @ray.remote(num_cpus=0)
    def alive() -> bool:
        return True

    def check() -> None:
        assert ray.get(alive.remote(), timeout=120), "a test stopped someone else's Ray cluster"
        assert server.proc.poll() is None, "a test stopped someone else's MLflow server"
        with urllib.request.urlopen(f"{server.uri}/health", timeout=10) as response:
            assert response.status == 200

    yield check
    server.kill()


class MlflowServer:
    """`mlflow server` on a SQLite file and a local artifact folder, started and killed for real."""

    def __init__(self, root):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> MlflowServer:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root}/mlflow.db",
                "--artifacts-destination",
                (self.root / "artifacts").as_uri(),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # as infra/local/start.sh runs it: without the job runner's eight worker processes
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


CLUSTER_MODULES = frozenset(
    {"test_ray_embed.py", "test_ray_engine.py", "test_ray_job.py", "test_ray_tasks.py", "test_services.py"}
)
"""The modules that hold the tests marked `cluster` (checked at collection)."""
OWN_CLUSTER_MODULES = frozenset({"test_ray_job.py"})
"""Cluster modules whose runs are on a cluster of their own (infra/local/start.sh), not the
session's: under xdist they run beside the others, on the other worker."""


def pytest_collection_modifyitems(config, items):
    """Every test marked `cluster` is in one of `CLUSTER_MODULES`, which run first."""
    stray = [
        item.nodeid for item in items if item.get_closest_marker("cluster") and item.path.name not in CLUSTER_MODULES
    ]
    if stray:
        raise pytest.UsageError(f"tests marked cluster outside conftest.CLUSTER_MODULES: {stray}")
    items.sort(key=lambda item: item.path.name not in CLUSTER_MODULES)  # stable: module order kept


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (`-n 2` in pyproject.toml) the cluster modules that share the
    session's Ray cluster and S3 server go to one worker as one unit, in order, so those and
    each module's fixtures are made once; the modules with a cluster of their own
    (`OWN_CLUSTER_MODULES`) start at once on the other worker. Every other test is a unit of
    its own, taken by whichever worker is free: the fast tests fill the CPU that a Ray run
    leaves idle while its processes start (about a quarter of both cores). (xdist's
    `--dist loadgroup` renames node ids, which pytest 9's nodes no longer allow.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ClusterModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0].rsplit("/", 1)[-1]
            if module in OWN_CLUSTER_MODULES:
                return module
            return "cluster" if module in CLUSTER_MODULES else nodeid

    return ClusterModulesTogether(config, log)
