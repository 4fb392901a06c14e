"""Ray Train on a GPU host that has no Ray: carry the wheels there, install them, measure (issue 17).

The lent GPU hosts run Python 3.12 with torch, numpy, pyarrow, pandas, scikit-learn and more
(the list: bench/ray_gpu_host_packages.txt, from the device README) but no Ray, MLflow or
Optuna, and reach no package index. A device call carries at most 64 MiB and the Ray 2.60.0
cp312 wheel is 79 MB (121 MB with MLflow, Optuna and what the host lacks of their needs), so
the wheels go in several calls: each but the last copies its share out of the tree (files
outside it stay while the machine is warm), the last joins the Ray wheel,
checks its hash, installs everything into a folder and runs the measurements.

Here (any machine with pip and the package index):

    python bench/ray_gpu.py prepare     # -> .whl1/ ... .whlN/ (N = 3 for Ray + MLflow + Optuna: 121 MB)

On the device, N `run` calls made straight after each other (the machine stays warm 30 s):

    1..N-1. carry [".whlK"]:  mkdir -p /tmp/kmervae-whl && cp .whlK/* /tmp/kmervae-whl/
    N. carry [".whlN", ".gpu_data"], timeout 540:
       python3 bench/ray_gpu.py install --parts /tmp/kmervae-whl .whlN --target /tmp/site &&
       PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 bench/ray_gpu.py check --features .gpu_data/c5k --out $OUT

`check` measures, each step with a time limit, writing `report.md` and `report.json` to --out:
1. the local engine and the Ray engine (one GPU worker, `train.resident=auto`, bf16) on the
   same features and seed: per-epoch val/loss side by side, samples/s of each; then the Ray
   run resumed for one more epoch under the same name;
2. Ray Data streaming (`train.resident=off`, batch 8,192) over synthetic contigs (the real
   features repeated under new ids, --synthetic rows): samples/s and the data-wait share;
3. a sweep with one GPU per trial and one with half a GPU per trial (two trials at once on
   one GPU): trials finished, MLflow runs, trials per hour.

`check --cpu` runs the same steps on CPU workers at small sizes: how this script is tested on
a machine without a GPU (`python bench/ray_gpu.py check --cpu --features .gpu_data/c5k --out DIR`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST_PACKAGES = Path(__file__).with_name("ray_gpu_host_packages.txt")
REQUIREMENTS = ["ray[default,train,tune,data]==2.60.0", "mlflow==3.17.2", "optuna==5.0.0"]
CALL_BUDGET = 56 << 20
"""Bytes of wheels per device call (64 MiB less the repository tree and the features)."""
RAY = "ray-"
RAY_PIECE = 40 << 20
"""The Ray wheel (79 MB) is carried in pieces of at most this size."""


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def host_packages() -> set[str]:
    return {normalise(line.strip()) for line in HOST_PACKAGES.read_text().splitlines() if line.strip()}


def prepare(args: argparse.Namespace) -> None:
    """Download the wheels the GPU host lacks, split the Ray wheel, fill .whl1 and .whl2."""
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
    target = [
        "--python-version", args.python_version, "--implementation", "cp", "--only-binary=:all:",
        *(a for p in platforms for a in ("--platform", p)),
    ]  # fmt: skip
    report = REPO / ".whl-report.json"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report),
         "--target", str(REPO / ".whl-dry"), "-c", str(REPO / "constraints.txt"), *target, *REQUIREMENTS],
        check=True,
    )  # fmt: skip
    have = host_packages()
    needed = [
        f"{item['metadata']['name']}=={item['metadata']['version']}"
        for item in json.loads(report.read_text())["install"]
        if normalise(item["metadata"]["name"]) not in have
    ]
    report.unlink()
    download = REPO / ".whl-all"
    shutil.rmtree(download, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(download), *target, *needed], check=True
    )
    for old in REPO.glob(".whl[0-9]*"):
        shutil.rmtree(old)
    wheels = sorted(download.glob("*.whl"), key=lambda p: -p.stat().st_size)
    ray = next(p for p in wheels if p.name.startswith(RAY))
    data = ray.read_bytes()
    # Items to pack: the Ray wheel in pieces of at most RAY_PIECE bytes, then every other wheel.
    items = [
        (f"{ray.name}.part{i + 1}", data[lo : lo + RAY_PIECE]) for i, lo in enumerate(range(0, len(data), RAY_PIECE))
    ]
    items += [(w.name, w.read_bytes()) for w in wheels if w != ray]
    parts: list[list[tuple[str, bytes]]] = []
    for name, blob in sorted(items, key=lambda item: -len(item[1])):  # first fit, largest first
        fit = next((part for part in parts if sum(len(b) for _, b in part) + len(blob) <= CALL_BUDGET), None)
        if fit is None:
            parts.append(fit := [])
        fit.append((name, blob))
    parts.sort(
        key=lambda part: -sum(len(b) for _, b in part)
    )  # the last call, which carries the features too, smallest
    parts[-1].append(("SHA256SUMS", f"{hashlib.sha256(data).hexdigest()}  {ray.name}\n".encode()))
    for i, part in enumerate(parts, start=1):
        folder = REPO / f".whl{i}"
        folder.mkdir()
        for name, blob in part:
            (folder / name).write_bytes(blob)
        print(f"{folder.name}: {len(part)} files, {sum(len(b) for _, b in part) / 2**20:.1f} MiB")
    shutil.rmtree(download)
    shutil.rmtree(REPO / ".whl-dry", ignore_errors=True)
    print(
        f"{len(parts)} device calls: the first {len(parts) - 1} copy .whl1..{len(parts) - 1} to /tmp/kmervae-whl, "
        f"the last installs with --parts /tmp/kmervae-whl .whl{len(parts)} (see this file's docstring)"
    )


def install(args: argparse.Namespace) -> None:
    """Join the Ray wheel from the parts, check its hash, install every wheel into --target."""
    folders = [Path(p) for p in args.parts]
    files = [f for folder in folders for f in folder.iterdir()]
    sums = next(f for f in files if f.name == "SHA256SUMS").read_text().split()
    digest, name = sums[0], sums[1]
    pieces = sorted((f for f in files if f.name.startswith(name + ".part")), key=lambda f: f.name)
    staging = Path(args.target + "-wheels")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    joined = staging / name
    joined.write_bytes(b"".join(p.read_bytes() for p in pieces))
    if hashlib.sha256(joined.read_bytes()).hexdigest() != digest:
        sys.exit(f"{name}: joined from {len(pieces)} part(s), but its SHA-256 is not {digest}; carry the parts again")
    for f in files:
        if f.suffix == ".whl":
            shutil.copy2(f, staging / f.name)
    wheels = sorted(str(p) for p in staging.glob("*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
         "--upgrade", "--target", args.target, *wheels],
        check=True,
    )  # fmt: skip
    print(f"installed {len(wheels)} wheel(s) into {args.target} (Ray wheel joined from {len(pieces)} parts, hash ok)")


def run(cmd: list[str], log: Path, timeout: int) -> tuple[int, float]:
    """Run a step with its output in `log`; (exit status, seconds)."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        try:
            code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - started


def history(checkpoint: Path) -> list[dict[str, float]]:
    sys.path.insert(0, str(REPO))
    from kmervae.core.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint).history


def synthetic(features: Path, rows: int, out: Path) -> Path:
    """The real features repeated under new contig ids until `rows` contigs: Ray Data's load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out.exists():
        return out
    table = pq.read_table(sorted(features.glob("*.parquet")))
    out.mkdir(parents=True)
    written, copy = 0, 0
    while written < rows:
        take = table.slice(0, min(len(table), rows - written))
        ids = pa.array([f"{cid}#{copy}" for cid in take.column("contig_id").to_pylist()])
        pq.write_table(take.set_column(take.schema.get_field_index("contig_id"), "contig_id", ids),
                       out / f"part-{copy:05d}.parquet", row_group_size=8192)  # fmt: skip
        written += len(take)
        copy += 1
    return out


def check(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "kmervae.cli"]
    device = ["--cpu"] if args.cpu else []
    preset = "tiny" if args.cpu else args.preset
    precision = "fp32" if args.cpu else "bf16"
    common = ["--preset", preset, "--epochs", str(args.epochs), "--no-mlflow", "--set", f"train.precision={precision}"]
    results: dict[str, object] = {"device": "cpu" if args.cpu else "gpu", "preset": preset}

    # 1. local and Ray engines on the same data and seed; then a resume.
    code_local, t_local = run(
        [*cli, "train", args.features, "--engine", "local", *common, "--out", str(work / "local")],
        out / "train-local.log", args.step_timeout,
    )  # fmt: skip
    storage = work / "ray"
    code_ray, t_ray = run(
        [*cli, "train", args.features, "--engine", "ray", "--workers", "1", *device, *common, "--name", "gpu1",
         "--storage", str(storage), "--set", "train.resident=auto"],
        out / "train-ray.log", args.step_timeout,
    )  # fmt: skip
    step1: dict[str, object] = {"local_exit": code_local, "ray_exit": code_ray, "local_s": t_local, "ray_s": t_ray}
    if code_local == 0 and code_ray == 0:
        local = history(work / "local" / "last.pt")
        ray = history(storage / "gpu1" / "outputs" / "last.pt")
        step1["epochs"] = [
            {"epoch": a["epoch"], "local_val_loss": a["val/loss"], "ray_val_loss": b["val/loss"],
             "local_samples_per_s": a["samples_per_s"], "ray_samples_per_s": b["samples_per_s"]}
            for a, b in zip(local, ray, strict=False)
        ]  # fmt: skip
        resumed, t_resume = run(
            [*cli, "train", args.features, "--engine", "ray", "--workers", "1", *device, *common[:2], "--epochs",
             str(args.epochs + 1), *common[4:], "--name", "gpu1", "--storage", str(storage)],
            out / "train-ray-resume.log", args.step_timeout,
        )  # fmt: skip
        step1["resume_exit"] = resumed
        if resumed == 0:
            step1["resumed_epochs"] = len(history(storage / "gpu1" / "outputs" / "last.pt"))
    results["engines"] = step1

    # 2. Ray Data streaming to one worker.
    data = synthetic(Path(args.features), args.synthetic, work / "synthetic")
    code, seconds = run(
        [*cli, "train", str(data), "--engine", "ray", "--workers", "1", *device, "--preset", preset, "--epochs", "1",
         "--no-mlflow", "--set", "train.resident=off", "--set", f"train.batch_size={args.batch_size}",
         "--set", f"train.precision={precision}", "--data-mode", "stream", "--name", "stream",
         "--storage", str(storage)],
        out / "stream.log", args.step_timeout,
    )  # fmt: skip
    step2: dict[str, object] = {"exit": code, "seconds": seconds, "rows": args.synthetic}
    if code == 0:
        last = history(storage / "stream" / "outputs" / "last.pt")[-1]
        step2 |= {
            "samples_per_s": last["samples_per_s"],
            "data_wait_share": last.get("data_wait_s", float("nan")) / max(last.get("train_s", float("nan")), 1e-9),
        }
    results["streaming"] = step2

    # 3. Sweeps: a whole GPU per trial, then half a GPU (two trials at once).
    sweeps = {}
    for gpus in ["0"] if args.cpu else ["1", "0.5"]:
        name = f"gpus-{gpus}"
        code, seconds = run(
            [sys.executable, str(REPO / "sweeps" / "latent_sweep.py"), "--data", args.features, "--preset", preset,
             "--samples", str(args.trials), "--epochs", "2", "--gpus-per-trial", gpus, "--name", name,
             "--storage", str(work / "sweeps"), "--mlflow-dir", str(work), "--register-as", ""],
            out / f"sweep-{name}.log", args.step_timeout,
        )  # fmt: skip
        sweeps[name] = {"exit": code, "seconds": seconds, "trials_per_hour": args.trials * 3600 / seconds}
    results["sweeps"] = sweeps
    try:
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{work}/mlflow.db")
        experiment = client.get_experiment_by_name("kmervae-sweeps")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        results["mlflow_trial_runs"] = sum(1 for r in runs if "mlflow.parentRunId" in r.data.tags)
    except Exception as err:  # a report line, not a crash: the numbers above still count
        results["mlflow_trial_runs"] = f"unreadable: {err}"
    (out / "report.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    """The report as the tables bench/RESULTS.md takes."""
    engines, stream = results["engines"], results["streaming"]
    lines = [f"device {results['device']}, preset `{results['preset']}`", ""]
    lines += ["| epoch | local val/loss | Ray val/loss | local samples/s | Ray samples/s |", "|---|---|---|---|---|"]
    for e in engines.get("epochs", []):
        lines.append(
            f"| {int(e['epoch']) + 1} | {e['local_val_loss']:.4g} | {e['ray_val_loss']:.4g} | "
            f"{e['local_samples_per_s']:,.0f} | {e['ray_samples_per_s']:,.0f} |"
        )
    lines += [
        "",
        f"exits: local {engines['local_exit']}, Ray {engines['ray_exit']}, resume {engines.get('resume_exit')} "
        f"({engines.get('resumed_epochs', '?')} epochs after resuming)",
        f"streaming {stream['rows']:,} contigs: exit {stream['exit']}, "
        f"{stream.get('samples_per_s', float('nan')):,.0f} samples/s, "
        f"data wait {stream.get('data_wait_share', float('nan')):.0%}",
    ]
    for name, sweep in results["sweeps"].items():
        lines.append(
            f"sweep {name}: exit {sweep['exit']}, {sweep['seconds']:.0f} s, {sweep['trials_per_hour']:.0f} trials/h"
        )
    lines.append(f"MLflow trial runs: {results['mlflow_trial_runs']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("prepare", help="download and split the wheels (here)")
    p.add_argument("--python-version", default="3.12", help="the GPU host's Python")
    p.set_defaults(run=prepare)
    p = sub.add_parser("install", help="join, verify and install the wheels (on the device)")
    p.add_argument("--parts", nargs="+", required=True, help="folders holding the carried wheels and parts")
    p.add_argument("--target", default="/tmp/site")
    p.set_defaults(run=install)
    p = sub.add_parser("check", help="the measurements (on the device; --cpu here)")
    p.add_argument("--features", required=True, help="a feature dataset (the ten genomes as 5 kb contigs)")
    p.add_argument("--out", required=True, help="report folder ($OUT on the device)")
    p.add_argument("--work", default="/tmp/kmervae-ray-gpu", help="scratch folder for runs")
    p.add_argument("--cpu", action="store_true", help="CPU workers, small sizes: test this script without a GPU")
    p.add_argument("--preset", default="recommended")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--synthetic", type=int, default=1_000_000, help="contigs streamed in step 2")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--step-timeout", type=int, default=150, help="seconds each step may take")
    p.set_defaults(run=check)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
