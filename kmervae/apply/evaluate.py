"""Is the embedding worth it? kNN accuracy, k-means ARI and silhouette against simple baselines.

With labels, each embedding is scored by k-nearest-neighbour accuracy (k = 1 and 5,
cosine, 5-fold stratified), the adjusted Rand index of k-means with the true number of
labels, the silhouette of the true labels (cosine) and, when contig lengths are known, the
bins `kmervae bin` would make (default clusterer, default minimum bin size) counted at two
quality levels in bases: near-complete (`nc_bins`: recall >= 0.9, purity >= 0.95) and
medium (`mq_bins`: recall >= 0.5, purity >= 0.9), with each bin's genome, purity and recall
in the JSON's `bins` (as `kmervae bin` reports them). The same scores are computed on
the same contigs for two baselines a binner would otherwise use: z-scored canonical
4-mer log-frequencies (TNF, what VAMB-style binners start from) and PCA of all k-mer
log-frequencies with the latent space's dimension. The log-frequencies come from the
model's own `FeatureTransform` (one transform everywhere). Without labels: silhouette of
k-means clusters and the number of active latent units.

At scale (a million contigs) memory stays bounded and the O(n^2) scores use a documented
sample: kNN accuracy a seeded uniform sample of at most `KNN_MAX` contigs, silhouette one of
at most `SILHOUETTE_MAX` (the JSON's `sampled` says how many each used); k-means, the bins and
the baselines use every contig, the baselines computed from the feature files a chunk of
`CHUNK_ROWS` contigs at a time, PCA fitted on at most `PCA_FIT_MAX` of them.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kmervae.apply.embed import read_embeddings
from kmervae.base.errors import ConfigError, InputError
from kmervae.base.feature_table import contig_labels
from kmervae.base.metric_keys import eval_key
from kmervae.binning import bins
from kmervae.binning.reports import QualityReport
from kmervae.core.metrics import ACTIVE_UNIT_THRESHOLD

COUNTS = ("nc_bins", "mq_bins", "active_units")
"""Scores that are counts: printed without decimals."""
SILHOUETTE_MAX = 5000
"""Silhouette is O(n^2): it uses at most this many contigs (a seeded subsample)."""
KNN_MAX = 50_000
"""kNN accuracy (5-fold, brute-force cosine: O(n^2)) uses at most this many contigs (a seeded
subsample): about 20 s on 2 cores at this size."""
PCA_FIT_MAX = 20_000
"""The PCA baseline is fitted on at most this many contigs (a seeded subsample; all below), then
applies to every contig."""
CHUNK_ROWS = 10_000
"""Contigs whose k-mer counts are decoded at once for the baselines (10,000 x 8,360
log-frequencies: 0.3 GB)."""


def score(
    x: np.ndarray, labels: np.ndarray | None, seed: int = 0, lengths: np.ndarray | None = None
) -> dict[str, float]:
    """The scores of one embedding (rows = contigs); bin counts too when `lengths` are given."""
    return score_and_bins(x, labels, seed, lengths)[0]


def score_and_bins(
    x: np.ndarray, labels: np.ndarray | None, seed: int = 0, lengths: np.ndarray | None = None
) -> tuple[dict[str, float], QualityReport | None]:
    """`score`, and with labels and `lengths` the quality of the bins `kmervae bin` would make
    (per bin: genome, purity, recall)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(seed)
    sample = rng.choice(len(x), min(len(x), SILHOUETTE_MAX), replace=False)
    knn_rows = np.sort(rng.choice(len(x), min(len(x), KNN_MAX), replace=False))
    if labels is None:
        k = max(2, min(20, int(math.sqrt(len(x) / 2))))
        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        return {
            "silhouette_kmeans": float(silhouette_score(x[sample], clusters[sample], metric="cosine")),
            "active_units": float((x.var(axis=0) > ACTIVE_UNIT_THRESHOLD).sum()),
        }, None
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    folds = min(5, int(np.bincount(codes[knn_rows]).min()))
    if folds < 2 or len(names) < 2:
        raise InputError("evaluation needs at least 2 labels with 2 contigs each")
    out = {}
    for k in (1, 5):
        knn = KNeighborsClassifier(n_neighbors=k, metric="cosine")
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        out[f"knn{k}_acc"] = float(cross_val_score(knn, x[knn_rows], codes[knn_rows], cv=cv).mean())
    clusters = KMeans(n_clusters=len(names), n_init=10, random_state=seed).fit_predict(x)
    out["kmeans_ari"] = float(adjusted_rand_score(codes, clusters))
    out["silhouette"] = float(silhouette_score(x[sample], codes[sample], metric="cosine"))
    report = None
    if lengths is not None:
        from kmervae.apply.binning import bin_names

        quality = bins.bin_quality(bins.cluster(x, lengths, seed=seed), labels, lengths)
        out["nc_bins"] = float(quality.near_complete)
        report = QualityReport.of(quality, bin_names(len(quality.main)), len(labels))
        out["mq_bins"] = float(quality.count(*bins.MEDIUM))
    return out, report


def zscore(x: np.ndarray) -> np.ndarray:
    """Each column minus its mean over the rows, over its standard deviation (a constant column: 0)."""
    return (x - x.mean(axis=0)) / x.std(axis=0).clip(min=1e-8)


ABUNDANCE_FLOOR = 1e-3
"""Added to depth shares and floors total depths before the log (VAMB clips depths at 0.001)."""


def abundance_profile(depth: np.ndarray) -> np.ndarray:
    """What VAMB reads of a contig's depths (vamb/encode.py make_dataloader): each sample scaled by
    its mean depth, the contig's share of depth in each sample (equal shares where no read came)
    and its total depth; here as log shares and log total, each z-scored over the contigs."""
    depth = np.asarray(depth, dtype=np.float64)
    scaled = depth / depth.mean(axis=0).clip(min=1e-12)
    total = scaled.sum(axis=1, keepdims=True)
    shares = np.where(total > 0, scaled / total.clip(min=1e-12), 1.0 / depth.shape[1])
    return zscore(np.hstack([np.log(shares + ABUNDANCE_FLOOR), np.log(total.clip(min=ABUNDANCE_FLOOR))]))


def baselines(features: str | Path, contig_ids: np.ndarray, dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """TNF (z-scored 4-mer log-frequencies) and PCA-`dim` of all k-mer log-frequencies, in
    `contig_ids` order; for features with abundance also TNF beside the abundance profile
    (`abundance_profile`), the simple baseline a binner with read depths has. Counts are decoded
    `CHUNK_ROWS` contigs at a time, so memory stays bounded at a million contigs."""
    from sklearn.decomposition import PCA

    from kmervae.base.feature_table import dataset_files, read_keys

    files = dataset_files(features)
    index = {cid: i for i, cid in enumerate(read_keys(files)[0])}
    missing = [cid for cid in contig_ids if cid not in index]
    if missing:
        raise InputError(f"{features}: has no features for {len(missing)} embedded contig(s), e.g. '{missing[0]}'")
    rows = np.array([index[cid] for cid in contig_ids], dtype=np.int64)
    rng = np.random.default_rng(seed)
    fit_rows = rows if len(rows) <= PCA_FIT_MAX else rng.choice(rows, PCA_FIT_MAX, replace=False)
    fitted = np.vstack([all_kmers(x) for _, x in _log_frequencies(files, np.sort(fit_rows), CHUNK_ROWS)])
    pca = PCA(n_components=min(dim, *fitted.shape), svd_solver="randomized", random_state=seed).fit(fitted)
    del fitted
    tnf = np.empty((len(rows), 136), np.float32)
    projected = np.empty((len(rows), pca.n_components_), np.float32)
    depths = None
    order = np.argsort(rows, kind="stable")  # read the files once, in the dataset's order
    done = 0
    for table, x in _log_frequencies(files, rows[order], CHUNK_ROWS):
        where = order[done : done + len(table)]
        tnf[where] = x.kmer4.numpy()
        projected[where] = pca.transform(all_kmers(x))
        if table.abundance is not None:
            depths = np.empty((len(rows), table.abundance.shape[1]), np.float32) if depths is None else depths
            depths[where] = table.abundance
        done += len(table)
    tnf = zscore(tnf)
    out = {"tnf_zscore": tnf, f"pca{dim}_kmers": projected}
    if depths is not None:
        out["tnf_abundance"] = np.hstack([tnf, abundance_profile(depths)])
    return out


def _log_frequencies(files, rows: np.ndarray, chunk: int):
    """(FeatureTable, the model's log-frequencies) of `rows` (sorted dataset positions), about
    `chunk` rows at a time: the transform every embedding sees (one transform everywhere)."""
    import torch

    from kmervae.base.feature_table import read_rows
    from kmervae.core.model import FeatureTransform

    transform = FeatureTransform()
    for table in read_rows(files, rows, chunk):
        with torch.no_grad():
            x = transform(
                torch.from_numpy(table.length.copy()),  # arrow's buffers are read-only
                torch.from_numpy(table.gc.copy()),
                *(torch.from_numpy(table.counts(k).astype(np.int32)) for k in (7, 4, 3)),
            )
        yield table, x


def all_kmers(x) -> np.ndarray:
    """The 7-, 4- and 3-mer log-frequencies side by side (what the PCA baseline reduces)."""
    return np.hstack([x.kmer7.numpy(), x.kmer4.numpy(), x.kmer3.numpy()])


@dataclass
class Evaluation:
    """What `kmervae evaluate` measured: every embedding's scores (the model's, `vae`, and the
    baselines') and, with labels and lengths, the quality of the bins each would make."""

    contigs: int
    latent_dim: int
    labels: int | None  # distinct labels; None for an unlabelled set
    sampled: dict[str, int]  # contigs the O(n^2) scores used: {"knn": n, "silhouette": n}
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # embedding -> score -> value
    bins: dict[str, QualityReport] | None = None  # embedding -> its bins' quality

    def add(self, name: str, scores: dict[str, float], report: QualityReport | None) -> None:
        self.scores[name] = scores
        if self.bins is not None and report is not None:
            self.bins[name] = report

    def metrics(self) -> dict[str, float]:
        """The scores as MLflow metrics (`eval_key`)."""
        return {eval_key(name, key): value for name, values in self.scores.items() for key, value in values.items()}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"contigs": self.contigs, "latent_dim": self.latent_dim, "labels": self.labels}
        out |= {"scores": self.scores, "sampled": self.sampled}
        if self.bins is not None:
            out["bins"] = {name: report.to_json() for name, report in self.bins.items()}
        return out


def evaluate(
    embeddings: str | Path,
    features: str | Path | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda line: None,
) -> Evaluation:
    """Scores of the embedding and, when features are given, of the baselines on the same
    contigs; `log` hears each stage as it ends (k-means and kNN take minutes on 100k contigs)."""
    started = time.perf_counter()

    def done(what: str) -> None:
        log(f"{what} ({time.perf_counter() - started:.1f} s)")

    ids, x, labels, lengths, _ = read_embeddings(embeddings)
    if features is not None:
        labels, feature_lengths = contig_labels(features, ids)
        if lengths is None:  # embeddings written before embed copied the lengths
            lengths = feature_lengths
    if labels is not None:
        known = np.array([v is not None for v in labels])
        ids, x, labels = ids[known], x[known], labels[known]
        lengths = lengths[known] if lengths is not None else None
    done(f"read {len(ids):,} embedded contig(s)" + (f" with {len(set(labels))} label(s)" if labels is not None else ""))
    result = Evaluation(
        contigs=int(len(ids)),
        latent_dim=int(x.shape[1]),
        labels=int(len(set(labels))) if labels is not None else None,
        # The O(n^2) scores' contigs: a seeded uniform sample where the set is larger.
        sampled={"knn": min(len(ids), KNN_MAX), "silhouette": min(len(ids), SILHOUETTE_MAX)},
        bins={} if lengths is not None and labels is not None else None,
    )
    result.add("vae", *score_and_bins(x, labels, seed, lengths))
    done("scored the embedding")
    if labels is None:
        return result
    if features is not None:
        for name, values in baselines(features, ids, x.shape[1], seed).items():
            result.add(name, *score_and_bins(values, labels, seed, lengths))
            done(f"scored the baseline {name}")
    return result


def format_table(result: Evaluation) -> str:
    """The scores as an aligned text table, one row per embedding."""
    rows = result.scores
    keys = list(next(iter(rows.values())))
    lines = [f"{result.contigs:,} contigs, {result.labels or 'no'} labels, latent dim {result.latent_dim}"]
    sampled = result.sampled
    if any(n < result.contigs for n in sampled.values()):
        lines.append(
            "kNN accuracy on a sample of {knn:,} contigs, silhouette on {silhouette:,}; the rest on all".format(
                **sampled
            )
        )
    lines.append(f"{'embedding':<16}" + "".join(f"{k:>14}" for k in keys))
    for name, values in rows.items():
        cells = [values.get(k, float("nan")) for k in keys]
        text = (f"{v:>14.0f}" if k in COUNTS else f"{v:>14.4f}" for k, v in zip(keys, cells, strict=True))
        lines.append(f"{name:<16}" + "".join(text))
    return "\n".join(lines)


def log_to_mlflow(result: Evaluation, run_id: str, json_path: Path) -> None:
    """Add the scores as metrics (eval/<embedding>/<score>) and the JSON to an MLflow run."""
    log_to_run(run_id, result.metrics(), [json_path], "evaluation")


def log_to_run(run_id: str, metrics: dict[str, float], files: list[Path], artifact_path: str) -> None:
    """Metrics (step 0) and files of a command's result added to an existing MLflow run; one line
    for an unknown run or an unreachable server (the files stay where they are)."""

    from kmervae.tracking.tracker import (
        execute,
        is_unreachable,
        metrics_op,
        mlflow_client,
        tracking_uri,
    )

    uri = tracking_uri()
    client = mlflow_client(uri)
    try:
        client.get_run(run_id)
        execute(client, metrics_op(run_id, metrics, step=0))
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path)
    except Exception as err:  # MlflowException for an unknown id, requests errors for a dead server
        if is_unreachable(err):
            where = ", ".join(str(p) for p in files)
            raise ConfigError(f"--mlflow-run: MLflow at {uri} is unreachable; the results are in {where}") from None
        raise InputError(f"--mlflow-run {run_id}: no such run in {uri}") from None


def write_json(result: Evaluation, path: Path) -> Path:
    path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return path
