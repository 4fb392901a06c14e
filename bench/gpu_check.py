"""GPU check of the model core: correctness of bf16, training throughput, the CUDA engine path.

Runs on a bare GPU host with only torch, numpy and pyarrow (no Ray, MLflow, Optuna):

1. ceilings: a bf16 8192^3 matrix product (TFLOP/s);
2. correctness on real contigs: GPU fp32 and bf16 against a float64 CPU reference
   (relative error ||out - ref|| / ||ref|| of the reconstruction and the latent mean);
3. throughput of training steps, GPU-resident data (real contigs resampled to N rows, so
   the sparsity is real), for fp32 / bf16 / bf16 + torch.compile and several batch sizes:
   samples/s, achieved TFLOP/s (6 x matmul parameters per sample), peak memory;
4. the engine end to end: `fit_local` on the features for a few epochs on CUDA (fused
   Adam, autocast, compile with fallback, checkpoints written and reloaded).

    python bench/gpu_check.py --features DIR [--rows 262144] [--smoke]

Prints a table last. `--smoke` shrinks everything so the script can be tried on a CPU.
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

from kmervae.checkpoint import load_checkpoint  # noqa: E402
from kmervae.config import PRESETS, LossConfig, RunConfig, TrainConfig  # noqa: E402
from kmervae.data import CountBatch, TensorData  # noqa: E402
from kmervae.engine import autocast, compile_model, fit_local, make_optimizer  # noqa: E402
from kmervae.feature_table import FeatureTable  # noqa: E402
from kmervae.loss import vae_loss  # noqa: E402
from kmervae.model import BranchedVAE  # noqa: E402

rows_out: list[tuple[str, str]] = []


def report(name: str, value: str) -> None:
    rows_out.append((name, value))
    print(f"{name}: {value}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, n: int) -> float:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
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
    return float((a.double().cpu() - ref.double().cpu()).norm() / ref.double().cpu().norm())


def check_correctness(table: FeatureTable, device: torch.device, n: int) -> None:
    torch.manual_seed(0)
    model = BranchedVAE(PRESETS["final"]).eval()
    rows = np.arange(min(n, len(table)))
    data = TensorData.from_table(table, rows).batch
    ref_model = BranchedVAE(PRESETS["final"]).double().eval()
    ref_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = ref_model(*data)
        gpu = model.to(device)(*data.to(device))
        with autocast(device, "bf16"):
            half = model(*data.to(device))
    report("fp32 vs fp64 recon rel err", f"{rel_err(gpu.recon, ref.recon):.2e}")
    report("fp32 vs fp64 mu rel err", f"{rel_err(gpu.mu, ref.mu):.2e}")
    report("bf16 vs fp64 recon rel err", f"{rel_err(half.recon, ref.recon):.2e}")
    report("bf16 vs fp64 mu rel err", f"{rel_err(half.mu, ref.mu):.2e}")
    cfg = LossConfig()
    l_ref = vae_loss(ref, data.kmer7, cfg, 1.0).loss.item()
    l_half = vae_loss(half, data.kmer7.to(device), cfg, 1.0).loss.item()
    report("bf16 loss rel err", f"{abs(l_half - l_ref) / abs(l_ref):.2e}")


def throughput(table: FeatureTable, device: torch.device, rows: int, batch_sizes: list[int], modes: list[str], preset: str) -> None:
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(table), rows)  # resample real contigs: real sparsity
    data = TensorData.from_table(table, idx).batch.to(device)  # GPU-resident, counts as uint8
    for mode in modes:
        for batch_size in batch_sizes:
            torch.manual_seed(0)
            model = BranchedVAE(PRESETS[preset]).to(device)
            train_cfg = TrainConfig(lr=1e-3 * (batch_size / 256) ** 0.5, compile=mode.endswith("compile"))
            optimizer = make_optimizer(model, train_cfg, device)
            runnable = compile_model(model, train_cfg, print)
            precision = "bf16" if mode.startswith("bf16") else "fp32"
            model.train()

            def step(lo: int) -> torch.Tensor:
                batch = CountBatch(*(t[lo : lo + batch_size] for t in data))
                with autocast(device, precision):
                    out = runnable(*batch)
                terms = vae_loss(out, batch.kmer7, LossConfig(), 1.0)
                optimizer.zero_grad(set_to_none=True)
                terms.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                return terms.loss

            started = time.perf_counter()
            for lo in range(0, 3 * batch_size, batch_size):  # warm-up (and compilation)
                step(lo)
            sync(device)
            warm = time.perf_counter() - started
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            n_steps = max(3, rows // batch_size)
            started = time.perf_counter()
            for i in range(n_steps):
                loss = step((i * batch_size) % (rows - batch_size + 1))
            sync(device)
            seconds = time.perf_counter() - started
            rate = n_steps * batch_size / seconds
            tflops = 6 * matmul_params(model) * rate / 1e12
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
            report(
                f"train {preset} {mode} batch {batch_size}",
                f"{rate:,.0f} samples/s, {tflops:.1f} TFLOP/s, peak {peak:.1f} GiB, warm-up {warm:.1f} s, loss {loss.item():.2f}",
            )
            del model, optimizer, runnable


def engine_path(features: Path, device: torch.device, epochs: int, preset: str, compile: bool) -> None:
    config = RunConfig(model=PRESETS[preset]).with_overrides(
        [f"train.epochs={epochs}", "train.batch_size=256", f"train.device={device.type}", "train.precision=bf16", f"train.compile={str(compile).lower()}"]
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = fit_local(features, config, tmp, log=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - started
        ckpt = load_checkpoint(result.best_checkpoint)
        model = ckpt.build_model(device)
        report(f"fit_local {preset} bf16{'+compile' if compile else ''}", f"{epochs} epochs in {seconds:.1f} s, val/loss {result.history[0]['val/loss']:.2f} -> {result.history[-1]['val/loss']:.2f}, knn {result.history[-1].get('val/knn_acc', float('nan')):.3f}")
        report("checkpoint reload", f"epoch {ckpt.epoch}, {sum(p.numel() for p in model.parameters()):,} parameters on {device}")
        print(json.dumps(result.history[-1]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=262_144)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, runs on a CPU")
    parser.add_argument("--parts", default="correctness,throughput,engine", help="comma-separated parts to run")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report("torch", f"{torch.__version__}, device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    table = FeatureTable.from_parquet(args.features)
    report("features", f"{len(table):,} real contigs, kmer7 stored as {table.kmer7.dtype}")
    smoke = args.smoke
    report("matmul ceiling", f"{matmul_tflops(device, 512 if smoke else 8192):.0f} TFLOP/s ({'bf16' if device.type == 'cuda' else 'fp32'})")
    parts = set(args.parts.split(","))
    if "correctness" in parts:
        check_correctness(table, device, 64 if smoke else 512)
    if "throughput" in parts:
        throughput(
            table,
            device,
            rows=2048 if smoke else args.rows,
            batch_sizes=[256] if smoke else [1024, 4096, 8192],
            modes=["fp32", "bf16"] if smoke else ["fp32", "bf16", "bf16+compile"],
            preset="tiny" if smoke else "final",
        )
    if "engine" in parts:
        engine_path(args.features, device, 1 if smoke else 3, "tiny" if smoke else "final", compile=not smoke)
    width = max(len(name) for name, _ in rows_out)
    print("\n" + "\n".join(f"{name:<{width}}  {value}" for name, value in rows_out))


if __name__ == "__main__":
    main()
