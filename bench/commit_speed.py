"""The user's path timed on two checkouts of kmervae: did a change slow featurize, abundance, train or bin?

    git worktree add /tmp/old <commit>
    python bench/commit_speed.py /tmp/old . --set /tmp/mg/meta4s1 [--repeats 3] [--epochs 2]

SET is a simulated metagenome from `bench/metagenome.py build` (SET/assembly.fna, SET/truth.tsv,
SET/sample_N.bam, SET/markers.tsv). Each checkout runs the same commands, with its own code first
on PYTHONPATH, in turns (old, new, new, old, ...: neither always runs on a warm cache):

    kmervae abundance SET/sample_*.bam -o depth.tsv
    kmervae featurize SET/assembly.fna --abundance depth.tsv --labels SET/truth.tsv -o features
    kmervae train features --engine local --preset metagenome --epochs E --no-mlflow --out run
    kmervae embed run/best.pt features -o embeddings.parquet          (not timed)
    kmervae bin embeddings.parquet --markers SET/markers.tsv --labels SET/truth.tsv -o bins

and prints the median wall time of each step per checkout, with its range, and whether the two
checkouts' bins are the same (bins.tsv compared byte for byte: same code paths, same seed).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = ("abundance", "featurize", "train", "bin")


def commands(set_dir: Path, work: Path, epochs: int) -> list[tuple[str | None, list[str]]]:
    """(step timed, or None, kmervae arguments) of the path, in order."""
    bams = sorted(str(p) for p in set_dir.glob("sample_*.bam"))
    return [
        ("abundance", ["abundance", *bams, "-o", str(work / "depth.tsv")]),
        ("featurize", ["featurize", str(set_dir / "assembly.fna"), "--abundance", str(work / "depth.tsv"),
                       "--labels", str(set_dir / "truth.tsv"), "-o", str(work / "features"), "--quiet"]),
        ("train", ["train", str(work / "features"), "--engine", "local", "--preset", "metagenome",
                   "--epochs", str(epochs), "--no-mlflow", "--out", str(work / "run")]),
        (None, ["embed", str(work / "run" / "best.pt"), str(work / "features"), "-o", str(work / "emb.parquet")]),
        ("bin", ["bin", str(work / "emb.parquet"), "--markers", str(set_dir / "markers.tsv"),
                 "--labels", str(set_dir / "truth.tsv"), "-o", str(work / "bins"), "--quiet"]),
    ]  # fmt: skip


def run_path(checkout: Path, set_dir: Path, work: Path, epochs: int) -> dict[str, float]:
    """Seconds of each timed step with `checkout`'s code."""
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    launcher = "import sys; from kmervae.cli import main; sys.exit(main(sys.argv[1:]))"
    seconds = {}
    for step, argv in commands(set_dir, work, epochs):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", launcher, *argv], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{checkout}: kmervae {argv[0]} failed:\n{done.stderr[-2000:]}")
        if step is not None:
            seconds[step] = time.perf_counter() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="checkout of the commit before the change")
    parser.add_argument("new", type=Path, help="checkout of the change")
    parser.add_argument("--set", type=Path, required=True, help="simulated metagenome (bench/metagenome.py build)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {"old": {s: [] for s in STEPS}, "new": {s: [] for s in STEPS}}
    with tempfile.TemporaryDirectory(prefix="commit-speed-") as tmp:
        for repeat in range(args.repeats):
            order = ("old", "new") if repeat % 2 == 0 else ("new", "old")
            for which in order:
                work = Path(tmp) / f"{which}-{repeat}"
                work.mkdir()
                for step, s in run_path(getattr(args, which), args.set, work, args.epochs).items():
                    times[which][step].append(s)
                print(f"repeat {repeat + 1} {which}: " + ", ".join(f"{s} {times[which][s][-1]:.1f} s" for s in STEPS))
        same = filecmp.cmp(Path(tmp) / "old-0" / "bins" / "bins.tsv", Path(tmp) / "new-0" / "bins" / "bins.tsv", False)
    print(f"\n| step | {args.old} (median, range) | {args.new} (median, range) | new / old |")
    print("|---|---|---|---|")
    for step in STEPS:
        old, new = times["old"][step], times["new"][step]
        cells = [f"{statistics.median(t):.1f} s ({min(t):.1f}-{max(t):.1f})" for t in (old, new)]
        print(f"| {step} | {cells[0]} | {cells[1]} | {statistics.median(new) / statistics.median(old):.2f} |")
    print(f"\nbins.tsv of the first repeat: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
