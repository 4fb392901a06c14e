"""What makes PCA-32 hard to beat? Linear embeddings fitted on training genomes or on the contigs scored.

    python bench/linear_baselines.py --features FEATURES [--dim 32]

FEATURES is the ten shared genomes cut into labelled contigs (as for bench/quality_levers.py).
Protocols as there: `heldout` scores the contigs of the four genomes in
embedding_quality.HELD_OUT, `all` scores every contig. Each row is PCA of k-mer
log-frequencies (the model's own transform) fitted either on the contigs it scores
(transductive, what `kmervae evaluate`'s baseline does) or on the training genomes only
(inductive, what a trained encoder is limited to), on raw or z-scored blocks. Then, for the
baseline on `all`, which genome pairs its 1-NN errors fall between. Scores as everywhere:
`kmervae.apply.evaluate.score`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedding_quality import HELD_OUT  # noqa: E402

from kmervae.apply.evaluate import score  # noqa: E402
from kmervae.base.feature_table import FeatureTable  # noqa: E402
from kmervae.core.model import FeatureTransform  # noqa: E402


def zscore(block: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    """Each column minus its mean over `fit_rows`, divided by its standard deviation there."""
    mean, std = block[fit_rows].mean(axis=0), block[fit_rows].std(axis=0).clip(min=1e-8)
    return (block - mean) / std


def main() -> None:
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    table = FeatureTable.from_parquet(args.features)
    labels = np.array(table.labels, dtype=object)
    x = FeatureTransform()(
        torch.from_numpy(table.length),
        torch.from_numpy(table.gc),
        *(torch.from_numpy(table.counts(k).astype(np.int64)) for k in (7, 4, 3)),
    )
    k7, k4, k3 = x.kmer7.numpy(), x.kmer4.numpy(), x.kmer3.numpy()
    held = np.isin(labels, HELD_OUT)
    everything = np.ones_like(held)
    print(f"{len(labels):,} contigs, {held.sum():,} of them in the held-out genomes; PCA-{args.dim}")
    print("| protocol | embedding | fitted on | 1-NN | 5-NN | k-means ARI | silhouette |")
    print("|---|---|---|---|---|---|---|")
    for protocol, train_rows, scored in (("heldout", ~held, held), ("all", everything, everything)):
        blocks = {
            "raw log-frequencies (the baseline)": lambda rows: np.concatenate([k7, k4, k3], axis=1),
            "z-scored 4+3-mers": lambda rows: np.concatenate([zscore(k4, rows), zscore(k3, rows)], axis=1),
            "z-scored, 7-mers x 0.1": lambda rows: np.concatenate(
                [0.1 * zscore(k7, rows), zscore(k4, rows), zscore(k3, rows)], axis=1
            ),
        }
        fits = (("the contigs scored", scored), ("the training genomes", train_rows))
        for name, make in blocks.items():
            for where, rows in fits if protocol == "heldout" else fits[:1]:
                values = make(rows)
                pca = PCA(args.dim, svd_solver="randomized", random_state=0).fit(values[rows])
                s = score(pca.transform(values[scored]), labels[scored])
                cells = " | ".join(f"{s[k]:.3f}" for k in ("knn1_acc", "knn5_acc", "kmeans_ari", "silhouette"))
                print(f"| {protocol} | PCA-{args.dim}, {name} | {where} | {cells} |", flush=True)
    values = np.concatenate([k7, k4, k3], axis=1)
    embedding = PCA(args.dim, svd_solver="randomized", random_state=0).fit_transform(values)
    nearest = NearestNeighbors(n_neighbors=2, metric="cosine").fit(embedding).kneighbors(return_distance=False)[:, 0]
    wrong = labels != labels[nearest]
    pairs = Counter(tuple(sorted(p)) for p in zip(labels[wrong], labels[nearest][wrong], strict=True))
    print(f"\nall: {wrong.sum()} contigs whose nearest neighbour (cosine, PCA-{args.dim}) is another genome's:")
    for (a, b), n in pairs.most_common(6):
        print(f"  {n:4d}  {a} / {b}")


if __name__ == "__main__":
    main()
