"""GPU check of the model core: bf16 correctness, training throughput per mode, memory.

Runs on a bare GPU host with only torch, numpy and pyarrow (no Ray, MLflow or Optuna);
`--cpu` runs the same checks on the CPU with small sizes (the test suite does, so the
script is known to work before it meets a GPU). Parts:

1. ceiling: a bf16 (CPU: fp32) square matrix product, TFLOP/s;
2. correctness on real contigs (or synthetic ones): bf16 against fp32 on the same device,
   and fp32 against a float64 CPU reference; relative error ||x - ref|| / ||ref|| of the
   reconstruction, the latent mean and the loss;
3. model core: training steps on GPU-resident data for fp32 / bf16 / bf16 + torch.compile
   and batch sizes up to 8,192: samples/s, achieved TFLOP/s (6 x matmul parameters per
   sample: forward + backward), peak GPU memory;
4. engine: one epoch of the engine's own `train_epoch` over `--rows` contigs, with the
   data GPU-resident (shuffled on the device, `train.resident=on`) and streamed from host
   memory (`off`), counts as uint8 and as uint16: samples/s and the share of time spent
   waiting for data;
5. with `--features`, `fit_local` end to end for a few epochs (checkpoint reloaded).

Data: `--features DIR` (made by `kmervae featurize`) resampled to `--rows` contigs, so
sparsity is real; without it, synthetic 5 kb contigs (multinomial 7-mer counts from a few
Dirichlet "genome" compositions: sparsity like real contigs). Prints a table last.

    bash bench/gpu_check.sh [--cpu] [--features DIR] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kmervae.base.feature_contract import N_BINS  # noqa: E402
from kmervae.core.checkpoint import load_checkpoint  # noqa: E402
from kmervae.core.config import PRESETS, LossConfig, RunConfig, TrainConfig  # noqa: E402
from kmervae.core.data import CountBatch, TensorData, use_resident  # noqa: E402
from kmervae.core.engine import autocast, compile_model, make_optimizer, train_epoch  # noqa: E402
from kmervae.core.loss import vae_loss  # noqa: E402
from kmervae.core.model import BranchedVAE  # noqa: E402
from kmervae.core.run_setup import fit_local  # noqa: E402

rows_out: list[tuple[str, str]] = []


def report(name: str, value: str) -> None:
    rows_out.append((name, value))
    print(f"{name}: {value}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "n/a"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def matmul_tflops(device: torch.device, n: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 10
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def matmul_params(model: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return float((a - ref).norm() / ref.norm())


def synthetic_pool(n: int, seed: int = 0) -> CountBatch:
    """`n` synthetic 5 kb contigs from 8 Dirichlet 'genome' compositions (uint8 counts)."""
    rng = np.random.default_rng(seed)
    length = 5000
    cols = []
    for k in (7, 4, 3):
        genomes = rng.dirichlet(np.full(N_BINS[k], 0.5), size=8)
        which = rng.integers(0, 8, n)
        counts = np.stack([rng.multinomial(length - k + 1, genomes[g]) for g in which])
        cols.append(torch.from_numpy(counts.astype(np.uint8 if counts.max() < 256 else np.uint16)))
    gc = torch.from_numpy(rng.beta(20, 20, n).astype(np.float32))
    return CountBatch(torch.full((n,), length, dtype=torch.int64), gc, *cols)


def load_pool(features: Path | None, n_synthetic: int) -> tuple[CountBatch, str]:
    if features is None:
        return synthetic_pool(n_synthetic), f"{n_synthetic:,} synthetic 5 kb contigs"
    from kmervae.base.feature_table import FeatureTable

    table = FeatureTable.from_parquet(features)
    data = TensorData.from_table(table, np.arange(len(table))).batch
    return data, f"{len(table):,} real contigs from {features} (kmer7 as {table.kmer7.dtype})"


def resample(pool: CountBatch, rows: int, seed: int = 1) -> CountBatch:
    """`rows` contigs drawn from the pool (real sparsity at any size)."""
    idx = torch.from_numpy(np.random.default_rng(seed).integers(0, len(pool.length), rows))
    return pool.map(lambda t: t[idx])


def check_correctness(pool: CountBatch, device: torch.device, n: int) -> None:
    torch.manual_seed(0)
    data = resample(pool, n, seed=2)
    model = BranchedVAE(PRESETS["final"]).eval()
    ref_model = BranchedVAE(PRESETS["final"]).double().eval()
    ref_model.load_state_dict(model.state_dict())
    model = model.to(device)
    on_device = data.to(device)
    cfg = LossConfig()
    with torch.no_grad():
        ref = ref_model(*data)
        fp32 = model(*on_device)
        with autocast(device, "bf16"):
            bf16 = model(*on_device)
        losses = {
            name: vae_loss(out, kmer7, cfg, 1.0).loss.item()
            for name, out, kmer7 in (
                ("fp64", ref, data.kmer7),
                ("fp32", fp32, on_device.kmer7),
                ("bf16", bf16, on_device.kmer7),
            )
        }
    report(
        "bf16 vs fp32: recon / mu / loss rel err",
        f"{rel_err(bf16.recon, fp32.recon):.1e} / {rel_err(bf16.mu, fp32.mu):.1e} / "
        f"{abs(losses['bf16'] - losses['fp32']) / abs(losses['fp32']):.1e}",
    )
    report(
        "fp32 vs fp64: recon / mu / loss rel err",
        f"{rel_err(fp32.recon, ref.recon):.1e} / {rel_err(fp32.mu, ref.mu):.1e} / "
        f"{abs(losses['fp32'] - losses['fp64']) / abs(losses['fp64']):.1e}",
    )


def core_throughput(
    data: CountBatch, device: torch.device, preset: str, modes: list[str], batch_sizes: list[int], steps: int
) -> None:
    """Training steps on resident data, no shuffling: the model's own ceiling."""
    rows = len(data.length)
    for mode in modes:
        for batch_size in batch_sizes:
            if mode.endswith("compile") and batch_size != max(batch_sizes):
                continue  # one compiled shape is enough to see whether compilation pays
            torch.manual_seed(0)
            reset_peak(device)
            model = BranchedVAE(PRESETS[preset]).to(device).train()
            train_cfg = TrainConfig(
                batch_size=batch_size, compile=mode.endswith("compile")
            )  # lr scaled by sqrt(batch / 256)
            optimizer = make_optimizer(model, train_cfg, device)
            runnable = compile_model(model, train_cfg, print)
            precision = "bf16" if mode.startswith("bf16") else "fp32"

            def step(
                i: int, batch_size=batch_size, precision=precision, runnable=runnable, optimizer=optimizer, model=model
            ) -> torch.Tensor:
                lo = (i * batch_size) % (rows - batch_size + 1)
                batch = data.map(lambda t, lo=lo: t[lo : lo + batch_size])
                with autocast(device, precision):
                    out = runnable(*batch)
                terms = vae_loss(out, batch.kmer7, LossConfig(), 1.0)
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                return terms.loss

            started = time.perf_counter()
            for i in range(3):  # warm-up (and compilation)
                step(i)
            sync(device)
            warm = time.perf_counter() - started
            started = time.perf_counter()
            for i in range(steps):
                loss = step(i)
            sync(device)
            rate = steps * batch_size / (time.perf_counter() - started)
            tflops = 6 * matmul_params(model) * rate / 1e12
            report(
                f"core {preset} {mode} batch {batch_size}",
                f"{rate:,.0f} samples/s, {tflops:.1f} TFLOP/s, peak {peak_gib(device)}, warm-up {warm:.1f} "
                f"s, loss {loss.item():.1f}",
            )
            del model, optimizer, runnable


def engine_epoch(
    data: CountBatch,
    device: torch.device,
    preset: str,
    batch_size: int,
    precision: str,
    counts: str,
    resident: bool,
    compile: bool,
) -> float:
    """One epoch of the engine's `train_epoch`, data resident on the device or streamed from host memory."""
    if counts == "uint16":
        data = CountBatch(data.length, data.gc, *(t.to(torch.uint16) for t in (data.kmer7, data.kmer4, data.kmer3)))
    host = TensorData(data)
    if not resident and device.type == "cuda":
        host = TensorData(data.map(lambda t: t.pin_memory()))  # as a DataLoader would
    reset_peak(device)
    chosen = use_resident("on" if resident else "off", device, host.batch.nbytes)
    source = host.to(device) if chosen else host
    torch.manual_seed(0)
    model = BranchedVAE(PRESETS[preset]).to(device)
    cfg = TrainConfig(batch_size=batch_size, precision=precision, compile=compile)
    optimizer = make_optimizer(model, cfg, device)
    runnable = compile_model(model, cfg, print)
    generator = torch.Generator(device=device if chosen else "cpu").manual_seed(0)
    # A short warm-up epoch slice, then the measured epoch.
    warm = TensorData(source.batch.head(3 * batch_size))
    train_epoch(
        runnable,
        warm.labeled_batches(batch_size, generator=generator, drop_last=True),
        optimizer,
        LossConfig(),
        1.0,
        device=device,
        precision=precision,
    )
    sync(device)
    metrics = train_epoch(
        runnable,
        source.labeled_batches(batch_size, generator=generator, drop_last=True),
        optimizer,
        LossConfig(),
        1.0,
        device=device,
        precision=precision,
    )
    sync(device)
    seconds = len(data.length) // batch_size * batch_size / metrics["samples_per_s"]
    tflops = 6 * matmul_params(model) * metrics["samples_per_s"] / 1e12
    where = (
        f"resident ({str(source.batch.kmer7.dtype).removeprefix('torch.')} on device)"
        if chosen
        else "streamed from host"
    )
    report(
        f"engine {preset} {precision}{'+compile' if compile else ''} batch {batch_size} {counts} {where}",
        f"{metrics['samples_per_s']:,.0f} samples/s ({len(data.length):,} rows, {seconds:.1f} s/epoch), "
        f"data wait {100 * metrics['data_wait_s'] / seconds:.0f}%, {tflops:.1f} TFLOP/s, peak {peak_gib(device)}",
    )
    del model, optimizer, runnable, source
    return metrics["samples_per_s"]


def engine_path(
    features: Path, device: torch.device, epochs: int, preset: str, compile: bool, max_samples: int | None = None
) -> None:
    """`fit_local` end to end on `features` (at most `max_samples` contigs), then the checkpoint reloaded."""
    config = RunConfig(model=PRESETS[preset]).with_values(
        {
            "train.epochs": epochs,
            "train.batch_size": 1024,
            "train.device": device.type,
            "train.precision": "bf16",
            "train.compile": compile,
            "data.max_samples": max_samples,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = fit_local(features, config, tmp, log=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - started
        ckpt = load_checkpoint(result.best_checkpoint)
        model = ckpt.build_model(device)
        report(
            f"fit_local {preset} bf16{'+compile' if compile else ''} batch 1024",
            f"{epochs} epochs in {seconds:.1f} s, val/loss {result.history[0]['val/loss']:.1f} -> "
            f"{result.history[-1]['val/loss']:.1f}",
        )
        report(
            "checkpoint reload",
            f"epoch {ckpt.epoch}, {sum(p.numel() for p in model.parameters()):,} parameters on {device}",
        )
        print(json.dumps(result.history[-1]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, help="feature dataset (default: synthetic contigs)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU with small sizes (what the test suite does)")
    parser.add_argument(
        "--rows",
        type=int,
        default=None,
        help="contigs per engine epoch (default: 1,000,000 on a GPU, 2,048 on the CPU)",
    )
    parser.add_argument("--parts", default="correctness,core,engine,fit", help="comma-separated parts to run")
    args = parser.parse_args()
    cpu = args.cpu or not torch.cuda.is_available()
    device = torch.device("cpu" if cpu else "cuda")
    if cpu and not args.cpu:
        print("note: no CUDA device; running the CPU sizes", flush=True)
    started = time.perf_counter()
    report("torch", f"{torch.__version__}, device {'cpu' if cpu else torch.cuda.get_device_name()}")
    pool, what = load_pool(args.features, 512 if cpu else 4096)
    report("data", what)
    report("matmul ceiling", f"{matmul_tflops(device, 512 if cpu else 8192):.1f} TFLOP/s ({'fp32' if cpu else 'bf16'})")
    parts = set(args.parts.split(","))
    preset = "tiny" if cpu else "final"
    if "correctness" in parts:
        check_correctness(pool, device, 64 if cpu else 1024)
    if "core" in parts:
        data = resample(pool, 1024 if cpu else 65536).to(device)
        core_throughput(
            data,
            device,
            preset,
            ["fp32", "bf16"] if cpu else ["fp32", "bf16", "bf16+compile"],
            [256] if cpu else [1024, 4096, 8192],
            steps=3 if cpu else 60,
        )
        del data
    if "engine" in parts:
        rows = args.rows or (512 if cpu else 1_000_000)  # on the CPU: two steps per epoch prove the path
        batch = 256 if cpu else 8192
        data = resample(pool, rows)
        for counts in ("uint8", "uint16"):
            engine_epoch(data, device, preset, batch, "bf16", counts, resident=True, compile=False)
        streamed = resample(pool, min(rows, 512 if cpu else 131_072))
        engine_epoch(streamed, device, preset, batch, "bf16", "uint8", resident=False, compile=False)
        del data, streamed
    if "fit" in parts and args.features is not None:
        engine_path(args.features, device, 1 if cpu else 3, preset, compile=False, max_samples=500 if cpu else None)
    report("wall time", f"{time.perf_counter() - started:.0f} s")
    width = max(len(name) for name, _ in rows_out)
    print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in rows_out))


if __name__ == "__main__":
    main()
