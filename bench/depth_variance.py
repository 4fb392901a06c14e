"""Does a contig's depth variance (MetaBAT's `-var` column) tell its genome apart, beyond its mean?

    python bench/depth_variance.py /tmp/mg/meta4s1:1 /tmp/mg/strain4s1:1

For each `DIR:SAMPLES` of `bench/metagenome.py` (its truth and the depth table `run` made with
`kmervae abundance`, DIR/run/<SAMPLES>s/depth.tsv), the 5-nearest-neighbour genome accuracy
(5-fold cross-validated, scikit-learn) of each contig's z-scored log mean depths alone, and beside
the log dispersion (variance / mean) of each sample; and each genome's median dispersion. The
hypothesis behind an abundance input with the variance (issue 38, point 3; MetaBAT2 weighs depth
distances by it): if genomes differ in dispersion, the model could read it. Then, where
`bench/metagenome.py run` trained kmervae seeds there, the near-complete bins of each seed's
embedding with the TNF beside it (`bench/readout_mix.py`, w = 1), and with w times the z-scored log
dispersion beside both: what the dispersion adds to what the model and the TNF already give.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import metagenome  # noqa: E402  (the benchmark's sets and truth)


def read_metabat(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(contigs, means, variances) of a MetaBAT depth table (kmervae's depth tables keep only the
    means: this is the column they drop)."""
    with open(path) as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    header, body = rows[0], rows[1:]
    means = [i for i, name in enumerate(header) if i > 2 and not name.endswith("-var")]
    values = np.array([[float(v) for v in row] for row in (r[1:] for r in body)])
    return [r[0] for r in body], values[:, [i - 1 for i in means]], values[:, [i for i in means]]


def measure(spec: str) -> None:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    where, _, samples = spec.partition(":")
    folder = Path(where)
    contigs, genomes, _ = metagenome.read_truth(folder)
    names, all_means, all_variances = read_metabat(folder / "run" / f"{samples}s" / "depth.tsv")
    genome_of = dict(zip(contigs, genomes, strict=True))
    rows = [i for i, cid in enumerate(names) if cid in genome_of and (all_means[i] > 0).all()]
    means, variances = all_means[rows], all_variances[rows]
    y = np.array([genome_of[names[i]] for i in rows])
    dispersion = np.log(variances / means + 1e-3)
    print(f"{folder.name}, {samples} sample(s): {len(rows):,} contigs with reads in every sample")
    for name, x in (("log mean depth", np.log(means)), ("+ log dispersion", np.hstack([np.log(means), dispersion]))):
        x = (x - x.mean(axis=0)) / x.std(axis=0).clip(min=1e-12)
        accuracy = cross_val_score(KNeighborsClassifier(5), x, y, cv=5).mean()
        print(f"  {name}: 5-NN genome accuracy {accuracy:.3f}")
    for genome in sorted(set(y)):
        inside = y == genome
        print(f"  {genome}: median depth {np.median(means[inside, 0]):.2f}, "
              f"median dispersion {np.median(variances[inside, 0] / means[inside, 0]):.2f}")  # fmt: skip


def beside_embeddings(spec: str, weights=(0.0, 0.25, 0.5)) -> None:
    import readout_mix

    from kmervae.binning.bins import readout

    found = readout_mix.seed_embeddings(spec, required=False)
    if found is None:  # no seeds trained on this set: the first measure is all there is
        return
    folder, base, _, embeddings = found
    ids, lengths = embeddings[0].ids, embeddings[0].lengths
    tnf = readout_mix.parts_of(base / "features", ids)["tnf"]
    names, means, variances = read_metabat(base / "depth.tsv")
    row_of = {cid: i for i, cid in enumerate(names)}
    rows = np.array([row_of[cid] for cid in ids])
    dispersion = np.log(variances[rows] / means[rows].clip(min=1e-3) + 1e-3)
    dispersion = (dispersion - dispersion.mean(axis=0)) / dispersion.std(axis=0).clip(min=1e-12)
    for w in weights:
        counts = [
            readout_mix.near_complete(folder, ids, lengths, np.hstack([readout(e.vectors), tnf, w * dispersion]))
            for e in embeddings
        ]
        print(f"  model + TNF + {w:g} x dispersion: {' '.join(map(str, counts))}, "
              f"median {np.median(counts):g} ({min(counts)}-{max(counts)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sets", nargs="+", metavar="DIR:SAMPLES")
    for spec in parser.parse_args().sets:
        measure(spec)
        beside_embeddings(spec)


if __name__ == "__main__":
    main()
