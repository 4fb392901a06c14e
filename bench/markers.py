"""Marker genes against the truth: how well estimated completeness and contamination judge bins
on the metagenome benchmark's sets (issue 37), and how long finding the markers takes.

    python bench/markers.py validate DIR [DIR...] [--samples 4 2 1]
    python bench/markers.py recluster DIR [DIR...] [--samples 4 2 1]
    python bench/markers.py agreement FEATURES [--trials 12] [--epochs 10]
    python bench/markers.py time FASTA... [--fragment-length N]

`validate` finds the markers of DIR/assembly.fna once (`kmervae markers`, cached as
DIR/markers.tsv, timed) and judges every binner's bins that `bench/metagenome.py run` left in
DIR/run/<N>s/<binner>/assignment.tsv: for each bin of at least 200 kb the estimated completeness
and contamination (`kmervae.binning.markers.estimate_bins`) beside the truth's recall and 1 - purity
(`kmervae.binning.bins.bin_quality`), and per run:
- the median absolute error of completeness against recall and of contamination against
  1 - purity, over the judged bins whose main genome is a bacterium (the set's archaeon and phage,
  `--not-bacteria`, are not what the bacterial set judges);
- estimated near-complete bins (judged bins at >= 90% / <= 5%) against the true near-complete
  bins among the judged bins, and against all true near-complete bins;
- the bins not judged, with their main genome (archaea, phages, fragments should be the ones).
`agreement` runs trials of the binning sweep's space (`sweeps/binning_sweep.py`, drawn by
Optuna's seeded random sampler) with the local engine, each reporting val/nc_bins, val/est_nc_bins
and val/link_agreement every epoch (no ASHA: every trial runs its epochs), and prints the Spearman
correlation of each label-free objective with val/nc_bins over the trials. The same trials through
Ray Tune ran at tens of contigs per second on this 2-core machine (a trial's Ray Train worker
gets 0.9 CPU beside Ray Data's), so they do not fit a session here.

`recluster` bins every embedding `run` left (each kmervae seed's, and the TNF + abundance
baseline of the set's features) with `kmervae bin`'s clusterer, then applies each method of
`kmervae.binning.recluster` and prints the true and estimated near-complete bins and its seconds.
Prints markdown tables; results and commands go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "sweeps"))

from metagenome import ASSIGNMENT, KMERVAE, bin_codes, read_assignment, read_truth  # noqa: E402

NOT_BACTERIA = ("Methanobrevibacter_ruminantium_M1", "Phage_Agate_metagenomic")


def set_markers(folder: Path) -> tuple[Path, float]:
    """DIR/markers.tsv (made once, with featurize's --min-length as the benchmark uses it) and the
    seconds it took (0 when cached)."""
    out = folder / "markers.tsv"
    if out.exists():
        return out, 0.0
    started = time.perf_counter()
    subprocess.run(
        [KMERVAE, "markers", str(folder / "assembly.fna"), "-o", str(out), "--min-length", "1000", "--quiet"],
        check=True,
    )
    return out, time.perf_counter() - started


def judge(folder: Path, run: Path, markers, not_bacteria: tuple[str, ...]) -> dict:
    """Estimates against the truth for one binner's bins."""
    from kmervae.binning.bins import NEAR_COMPLETE, bin_quality
    from kmervae.binning.markers import estimate_bins

    contigs, genomes, lengths = read_truth(folder)
    codes = bin_codes(read_assignment(run / ASSIGNMENT), folder)
    truth = bin_quality(codes, genomes, lengths)
    est = estimate_bins(codes, markers.presence(contigs))
    main = np.array([truth.genomes[m] if m >= 0 else "" for m in truth.main], dtype=object)
    bacterial = est.judged & ~np.isin(main, not_bacteria)
    true_nc = (truth.recall >= NEAR_COMPLETE[0]) & (truth.purity >= NEAR_COMPLETE[1])
    return {
        "bins": int(codes.max()) + 1 if (codes >= 0).any() else 0,
        "judged": int(est.judged.sum()),
        "completeness_error": float(np.median(np.abs(est.completeness - truth.recall)[bacterial]))
        if bacterial.any() else float("nan"),
        "contamination_error": float(np.median(np.abs(est.contamination - (1 - truth.purity))[bacterial]))
        if bacterial.any() else float("nan"),
        "est_nc": est.near_complete,
        "true_nc_judged": int((true_nc & est.judged).sum()),
        "true_nc": int(true_nc.sum()),
        "not_judged": sorted(f"{main[i] or '?'} ({est.domain[i]}, {est.completeness[i]:.2f})"
                             for i in np.flatnonzero(~est.judged)),
        "disagree": sorted(
            f"{main[i]}: est {est.completeness[i]:.2f}/{est.contamination[i]:.2f}, "
            f"true {truth.recall[i]:.2f}/{1 - truth.purity[i]:.2f}"
            for i in np.flatnonzero(est.judged)
            if (est.completeness[i] >= 0.9 and est.contamination[i] <= 0.05) != bool(true_nc[i])
        ),
    }  # fmt: skip


def validate(args: argparse.Namespace) -> None:
    from kmervae.binning.markers import read_markers

    print("| set | samples | binner | bins | judged | median abs. error completeness / contamination "
          "| est. NC | true NC of judged | true NC | not judged |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    disagreements = []
    for folder in map(Path, args.dirs):
        path, seconds = set_markers(folder)
        if seconds:
            print(f"<!-- markers of {folder.name}: {seconds:.1f} s -->", flush=True)
        markers = read_markers(path)
        for samples in args.samples:
            for run in sorted((folder / "run" / f"{samples}s").glob(f"*/{ASSIGNMENT}")):
                r = judge(folder, run.parent, markers, tuple(args.not_bacteria))
                errors = f"{r['completeness_error']:.3f} / {r['contamination_error']:.3f}"
                cells = [folder.name, samples, run.parent.name, r["bins"], r["judged"], errors, r["est_nc"],
                         r["true_nc_judged"], r["true_nc"], "; ".join(r["not_judged"])]  # fmt: skip
                print("| " + " | ".join(map(str, cells)) + " |", flush=True)
                disagreements += [f"{folder.name} {samples}s {run.parent.name}: {d}" for d in r["disagree"]]
    if disagreements:
        print("\nBins where the estimate and the truth disagree on near-complete:")
        print("\n".join(f"- {d}" for d in disagreements))


def embeddings_of(folder: Path, samples: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (vectors in the truth's contig order, lengths): each kmervae seed's embedding that
    `bench/metagenome.py run` left, and the TNF + abundance baseline of the set's features."""
    from kmervae.apply.embed import read_embeddings
    from kmervae.apply.evaluate import baselines

    contigs, _, lengths = read_truth(folder)
    row = {c: i for i, c in enumerate(contigs)}
    out = {}
    run = folder / "run" / f"{samples}s"
    for path in sorted(run.glob("kmervae-*/emb.parquet")):
        data = read_embeddings(path)
        order = np.array([row[c] for c in data.ids])
        vectors = np.zeros((len(contigs), data.vectors.shape[1]), dtype=np.float32)
        vectors[order] = data.vectors
        out[path.parent.name] = (vectors, lengths)
    if (run / "features").exists():
        out["baseline"] = (baselines(run / "features", np.asarray(contigs, dtype=object), 32)["tnf_abundance"], lengths)
    return out


def recluster_bench(args: argparse.Namespace) -> None:
    """Every reclustering method on every embedding of every set: true and estimated near-complete bins."""
    from kmervae.binning.bins import bin_quality, cluster
    from kmervae.binning.markers import estimate_bins, read_markers
    from kmervae.binning.recluster import METHODS, recluster

    print("| set | samples | embedding | " + " | ".join(f"{m}: true / est. NC (s)" for m in METHODS) + " |")
    print("|---|---|---|" + "---|" * len(METHODS))
    for folder in map(Path, args.dirs):
        contigs, genomes, _ = read_truth(folder)
        markers = read_markers(set_markers(folder)[0]).presence(contigs)
        for samples in args.samples:
            for name, (x, lengths) in embeddings_of(folder, samples).items():
                codes = cluster(x, lengths)
                cells = []
                for method in METHODS:
                    started = time.perf_counter()
                    new = recluster(x, lengths, codes, markers, method)
                    seconds = time.perf_counter() - started
                    true = bin_quality(new, genomes, lengths).near_complete
                    cells.append(f"{true} / {estimate_bins(new, markers).near_complete} ({seconds:.1f})")
                print(f"| {folder.name} | {samples} | {name} | " + " | ".join(cells) + " |", flush=True)


def agreement(args: argparse.Namespace) -> None:
    """Trials of the binning sweep's space, each trained by the local engine on FEATURES (labels and
    markers.tsv), reporting val/nc_bins, val/est_nc_bins and val/link_agreement every epoch; the
    Spearman correlation of each label-free objective with val/nc_bins over the trials."""
    import optuna
    from binning_sweep import space
    from scipy.stats import spearmanr

    from kmervae.core.config import preset_config
    from kmervae.core.run_setup import fit_local
    from kmervae.distributed.sweep import trial_config

    base = preset_config(args.preset).with_overrides(
        ["train.nc_bins=true", "train.est_nc_bins=true", f"train.epochs={args.epochs}"]
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    keys = ("val/nc_bins", "val/est_nc_bins", "val/link_agreement")
    trials = []
    print("| trial | settings | epochs | " + " | ".join(f"last {k}" for k in keys) + " | seconds |")
    print("|---|---|---|---|---|---|---|")
    for number in range(args.trials):
        trial = study.ask()
        extra = space(trial)
        config = trial_config(base, {**extra, **trial.params})
        started = time.perf_counter()
        out = Path(args.out) / f"trial-{number}"
        result = fit_local(args.features, config, out, log=lambda line: None)
        history = [{k: h[k] for k in keys} for h in result.history]
        trials.append(history)
        settings = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                             for k, v in trial.params.items())  # fmt: skip
        last = " | ".join(f"{history[-1][k]:.3f}" for k in keys)
        print(f"| {number} | {settings} | {len(history)} | {last} | {time.perf_counter() - started:.0f} |", flush=True)
        if len(trials) >= 3:  # so far: a sweep cut short still says how its trials ranked
            print_agreement(trials, keys, spearmanr)


def print_agreement(trials: list[list[dict[str, float]]], keys: tuple[str, ...], spearmanr) -> None:
    """Spearman of each label-free key with val/nc_bins over the trials (last epoch; each trial's
    best epoch by the key, as a sweep picks it; every epoch)."""
    for free in keys[1:]:
        best = [max(range(len(h)), key=lambda i, h=h: h[i][free]) for h in trials]
        at = {
            "trials, last epoch": [(h[-1][free], h[-1]["val/nc_bins"]) for h in trials],
            "trials, best epoch by it": [(h[b][free], h[b]["val/nc_bins"]) for h, b in zip(trials, best, strict=True)],
            "every epoch": [(e[free], e["val/nc_bins"]) for h in trials for e in h],
        }
        for name, pairs in at.items():
            rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
            print(f"Spearman({free}, val/nc_bins) over {name} (n = {len(pairs)}): {rho:.3f}  ", flush=True)


def time_markers(args: argparse.Namespace) -> None:
    out = Path("/tmp/kmervae-markers-time.tsv")
    command = [KMERVAE, "markers", *args.fasta, "-o", str(out), "--overwrite"]
    if args.fragment_length:
        command += ["--fragment-length", str(args.fragment_length)]
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%e s %M KB", *command], capture_output=True, text=True)
    print(done.stdout + done.stderr.splitlines()[-1])
    print(f"wall {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    v = sub.add_parser("validate")
    v.add_argument("dirs", nargs="+")
    v.add_argument("--samples", type=int, nargs="+", default=[4, 2, 1])
    v.add_argument("--not-bacteria", nargs="*", default=list(NOT_BACTERIA))
    v.set_defaults(run=validate)
    r = sub.add_parser("recluster")
    r.add_argument("dirs", nargs="+")
    r.add_argument("--samples", type=int, nargs="+", default=[4, 2, 1])
    r.set_defaults(run=recluster_bench)
    a = sub.add_parser("agreement")
    a.add_argument("features", help="features with labels, abundance and markers.tsv (featurize --markers)")
    a.add_argument("--trials", type=int, default=12)
    a.add_argument("--epochs", type=int, default=10, help="every trial's maximum (the space draws 10, 20 or 40)")
    a.add_argument("--preset", default="metagenome")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default="/tmp/kmervae-agreement")
    a.set_defaults(run=agreement)
    t = sub.add_parser("time")
    t.add_argument("fasta", nargs="+")
    t.add_argument("--fragment-length", type=int)
    t.set_defaults(run=time_markers)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
