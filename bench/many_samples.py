"""Hundreds of samples (issue 40): the abundance branch's cost per sample count, and the whole
path at 100 samples x a million contigs, each step timed under /usr/bin/time.

    .venv/bin/python bench/many_samples.py branch --samples 4 100 300 1000 --work W
    .venv/bin/python bench/many_samples.py path --data W/s100 --work W/path

`branch`: the bundled examples cut into 5 kb contigs (1,558) with a synthetic depth table of S
samples (each record's depth per sample log-normal; the branch's cost does not depend on the
values), featurized, then `kmervae train --engine local --preset metagenome --epochs 2`: the
model's parameters, the last epoch's training samples/s and the peak RSS, per S.

`path`: the data of `bench/million.py contigs --samples 100` and `bams` (DIR holds c1m.fna,
c1m.labels.tsv and bams/S*.bam): `kmervae abundance` on every BAM, `featurize --abundance`,
a model trained on 20,000 of the contigs for one epoch (it only has to exist: training at a
million belongs on GPUs), `embed` and `bin` of all of them.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KMERVAE = str(Path(sys.executable).parent / "kmervae")


def timed(command: list[str], log: Path) -> tuple[float, float, str]:
    """Run `command` (output to `log`): wall seconds, peak RSS GiB, its stdout and stderr."""
    result = subprocess.run(["/usr/bin/time", "-f", "%e %M", *command], capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode:
        raise SystemExit(f"{command[1]} failed (exit {result.returncode}); see {log}")
    wall, rss = result.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss) / 2**20, result.stdout + result.stderr


def branch(args: argparse.Namespace) -> None:
    examples = sorted((REPO / "examples").glob("*.fna.gz"))
    records = [line.split("\t")[0] for line in (REPO / "examples" / "depth.tsv").read_text().splitlines()[1:]]
    rng = np.random.default_rng(0)
    print("| samples | parameters | abundance branch's parameters | samples/s (epoch 2) | peak RSS |")
    print("|---|---|---|---|---|")
    for samples in args.samples:
        work = args.work / f"s{samples}"
        work.mkdir(parents=True, exist_ok=True)
        table = work / "depth.tsv"
        depths = rng.lognormal(1.0, 1.0, size=(len(records), samples))
        with open(table, "w") as out:
            out.write("\t".join(["contigname", *(f"s{j}" for j in range(samples))]) + "\n")
            out.writelines(
                "\t".join([r, *(f"{v:.3f}" for v in row)]) + "\n" for r, row in zip(records, depths, strict=True)
            )
        features = work / "features"
        subprocess.run(
            [KMERVAE, "featurize", *map(str, examples), "-o", str(features), "--fragment-length", "5000",
             "--abundance", str(table), "--overwrite", "--quiet"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        _, rss, text = timed(
            [KMERVAE, "train", str(features), "--engine", "local", "--preset", "metagenome", "--epochs", "2",
             "--no-mlflow", "--out", str(work / "model")],
            work / "train.log",
        )  # fmt: skip
        rate = re.findall(r"^2/2 .* (\d+)$", text, flags=re.M)[-1]
        total, branch_params = parameters(work / "model" / "best.pt")
        print(f"| {samples} | {total:,} | {branch_params:,} | {rate} | {rss:.2f} GiB |", flush=True)


def parameters(checkpoint: Path) -> tuple[int, int]:
    """All parameters of a checkpoint's model, and those of its abundance branch (encoder and decoder)."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model_state"]
    weights = {k: v.numel() for k, v in state.items() if k.endswith((".weight", ".bias")) and "transform" not in k}
    return sum(weights.values()), sum(n for k, n in weights.items() if k.split(".")[0].endswith("_ab"))


def path(args: argparse.Namespace) -> None:
    data, work = args.data, args.work
    work.mkdir(parents=True, exist_ok=True)
    bams = sorted(map(str, (data / "bams").glob("*.bam")), key=lambda p: int(Path(p).stem.lstrip("S")))
    steps = [
        (f"abundance ({len(bams)} BAM files)",
         [KMERVAE, "abundance", *bams, "-o", str(work / "depth.tsv"), "--format", "vamb", "--overwrite"]),
        ("featurize (labels, depths)",
         [KMERVAE, "featurize", str(data / "c1m.fna"), "-o", str(work / "features"), "--labels",
          str(data / "c1m.labels.tsv"), "--abundance", str(work / "depth.tsv"), "--min-length", "1500",
          "--overwrite", "--quiet"]),
        ("train (20,000 contigs, 1 epoch)",
         [KMERVAE, "train", str(work / "features"), "--engine", "local", "--preset", "metagenome", "--epochs", "1",
          "--set", "data.max_samples=20000", "--no-mlflow", "--out", str(work / "model")]),
        ("embed (all)",
         [KMERVAE, "embed", str(work / "model" / "best.pt"), str(work / "features"), "-o", str(work / "emb.parquet"),
          "--overwrite"]),
        ("bin (all)", [KMERVAE, "bin", str(work / "emb.parquet"), "-o", str(work / "bins"), "--overwrite"]),
    ]  # fmt: skip
    print("| step | wall | peak RSS |")
    print("|---|---|---|")
    for i, (what, command) in enumerate(steps):
        if args.skip and i < args.skip:
            continue
        wall, rss, _ = timed(command, work / f"step{i}.log")
        print(f"| {what} | {wall:.1f} s | {rss:.2f} GiB |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("branch", help="the abundance branch's parameters, speed and memory per sample count")
    p.add_argument("--samples", type=int, nargs="+", default=[4, 100, 300, 1000])
    p.add_argument("--work", type=Path, required=True)
    p.set_defaults(run=branch)
    p = sub.add_parser("path", help="abundance, featurize, train, embed, bin at 100 samples x a million contigs")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--skip", type=int, default=0, help="skip the first N steps (their outputs exist)")
    p.set_defaults(run=path)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
