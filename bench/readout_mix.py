"""Which plain features, beside a trained model's readout, make `kmervae bin` find more genomes?

    python bench/readout_mix.py /tmp/mg/meta4s1:1 /tmp/mg/strain4s1:1 [--weights 0.5 1] [--parts tnf abundance both]

For each `DIR:SAMPLES` (a `bench/metagenome.py` set and the sample count of a run there), every
trained seed's embedding (`DIR/run/<SAMPLES>s/kmervae-<seed>/emb.parquet`) is binned by
`kmervae bin`'s clusterer as it is and beside w times a part of the untrained baseline at unit
length (`kmervae.apply.evaluate.baselines`): its z-scored TNF, its abundance profile, or both
(the whole baseline). The cosine of two contigs is then (cos model + w^2 cos part) / (1 + w^2).
Prints the near-complete bins (truth) of every seed, their median and range, per part and weight;
with `--recluster METHOD` the bins are first reclustered by the set's markers (DIR/markers.tsv).
This measured the hypothesis behind `model.tnf_readout` (bench/RESULTS.md "Issue 38, lever 5"),
on embeddings already trained, without training again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import metagenome  # noqa: E402  (the benchmark's sets and its one scorer)

from kmervae.apply.embed import read_embeddings  # noqa: E402
from kmervae.apply.evaluate import baselines  # noqa: E402
from kmervae.binning.bins import cluster, readout  # noqa: E402
from kmervae.binning.markers import read_markers  # noqa: E402
from kmervae.binning.recluster import METHODS, partition  # noqa: E402

TNF_WIDTH = 136


def parts_of(features: Path, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The baseline's parts, each at unit length, in `ids` order."""
    whole = baselines(features, ids, 8)["tnf_abundance"]
    return {"tnf": readout(whole[:, :TNF_WIDTH]), "abundance": readout(whole[:, TNF_WIDTH:]), "both": readout(whole)}


def near_complete(
    folder: Path, ids: np.ndarray, lengths: np.ndarray, x: np.ndarray, markers=None, method="none"
) -> int:
    """The truth's near-complete bins of `x` by `kmervae bin`'s clusterer, reclustered by `method`
    with the set's `markers` (`recluster.partition`, what `kmervae bin --recluster` does)."""
    codes = cluster(x, lengths) if method == "none" else partition(x, lengths, markers, method)
    return metagenome.score({cid: str(c) for cid, c in zip(ids, codes, strict=True) if c >= 0}, folder)["near_complete"]


def seed_embeddings(spec: str, required: bool = True):
    """(set folder, its run folder for the sample count, seeds, their embeddings) of a `DIR:SAMPLES`:
    every `kmervae-<seed>/emb.parquet` that `bench/metagenome.py run` left, by seed, of the same
    contigs in the same order. None where there is none and they are not `required`."""
    where, _, samples = spec.partition(":")
    folder, base = Path(where), Path(where) / "run" / f"{samples}s"
    runs = sorted(base.glob("kmervae-[0-9]*/emb.parquet"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not runs and not required:
        return None
    if not runs:
        raise SystemExit(f"{base}: no kmervae-<seed>/emb.parquet; bench/metagenome.py run {where} --samples {samples}")
    embeddings = [read_embeddings(path) for path in runs]
    if any(list(e.ids) != list(embeddings[0].ids) for e in embeddings):
        raise SystemExit(f"{base}: the seeds' embeddings hold other contigs or another order")
    return folder, base, [p.parent.name.split("-")[1] for p in runs], embeddings


def measure(spec: str, weights: list[float], parts: list[str], method: str = "none") -> None:
    folder, base, seeds, embeddings = seed_embeddings(spec)
    samples = spec.partition(":")[2]
    ids, lengths = embeddings[0].ids, embeddings[0].lengths
    plain = parts_of(base / "features", ids)
    markers = read_markers(metagenome.set_markers(folder)).presence(ids) if method != "none" else None
    models = [readout(e.vectors) for e in embeddings]
    count = lambda x: near_complete(folder, ids, lengths, x, markers, method)  # noqa: E731
    rows = [("model alone", [count(m) for m in models])]
    for part in parts:
        for w in weights:
            rows.append((f"+ {w:g} x {part}", [count(np.hstack([m, w * plain[part]])) for m in models]))
    print(f"{folder.name}, {samples} sample(s), seeds {', '.join(seeds)}, reclustering: {method}")
    print("| readout | near-complete per seed | median (range) |\n|---|---|---|")
    for name, counts in rows:
        print(f"| {name} | {' '.join(map(str, counts))} | {np.median(counts):g} ({min(counts)}-{max(counts)}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", metavar="DIR:SAMPLES")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.5, 1.0])
    parts = ["tnf", "abundance", "both"]
    parser.add_argument("--parts", nargs="+", choices=parts, default=parts)
    parser.add_argument("--recluster", default="none", choices=METHODS, help="reclustering by the set's markers")
    args = parser.parse_args()
    for spec in args.sets:
        measure(spec, args.weights, args.parts, args.recluster)


if __name__ == "__main__":
    main()
