"""Contig embeddings -> genome bins, and how good bins are against known genomes.

One clusterer and one quality measure serve `kmervae bin`, `kmervae evaluate`, the
validation metric `val/nc_bins` and bench/binning.py, so a bin count means the same
thing everywhere.

Clustering works on the readout (L2-normalised embeddings: cosine geometry) and leaves
bins under `min_bin_size` bases unbinned (code -1). Two methods, both maintained
libraries built for an unknown number of clusters of uneven size:
- `leiden` (default): Leiden communities (igraph's C implementation) of the k-nearest-neighbour
  graph, edges weighted by cosine similarity (neighbours exact up to 50,000 contigs, from an
  HNSW index above: `nearest_neighbours`);
- `hdbscan`: scikit-learn's HDBSCAN on the readout; contigs it calls noise stay unbinned.
bench/RESULTS.md "Binning" measures both (bins at each quality level, seconds for 10k-100k
contigs) and says why leiden is the default.

Quality is counted in bases, as AMBER and BinBencher do: each bin's main genome is the one
with most bases in it; purity = those bases / the bin's labelled bases; recall = those bases
/ all bases of that genome among the labelled contigs given (binned or not). A bin is
near-complete at recall >= 0.9 and purity >= 0.95. Contigs without a label take no part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("leiden", "hdbscan")
EXACT_NEIGHBOURS_MAX = 50_000
"""Contigs up to which the Leiden graph's neighbours are exact; above, approximate (HNSW)."""
HNSW_LINKS = 16
"""Links per node of the HNSW graph (faiss `M`)."""
HNSW_EF_CONSTRUCTION = 40
"""Candidates kept while the HNSW index is built."""
HNSW_EF_SEARCH = 32
"""Candidates kept per query. With these settings the 15-NN graph's recall is 0.994 on 100,000
and 0.992 on 1,000,000 real contigs' embeddings, in 2.7 s and 52 s on 2 cores (100 / 48: 0.999,
102 s at a million; bench/RESULTS.md "A million contigs")."""
DEFAULT_METHOD = "leiden"
KNN_NEIGHBOURS = 15
"""Neighbours per contig in the Leiden graph."""
LEIDEN_RESOLUTION = 0.4
"""Modularity resolution (leidenalg's RBConfiguration objective): higher splits a large genome of a
small assembly (two genomes far apart in GC: 3-5 bins at 1.0; igraph's Leiden splits S. aureus at
0.5 for 6 of 8 seeds, never at 0.4), lower merges genomes of the one- and two-sample metagenome
sets. 0.4 bins as many genomes as leidenalg did at 0.5 (182 against 181 near-complete bins over 24
embeddings; bench/RESULTS.md "A million contigs", the resolution grid)."""
N_ITERATIONS = 2
"""Leiden passes (igraph's and leidenalg's default). With leidenalg, iterating until stable cost 7x
the time at 30,000 contigs (16.5 s against 2.4 s) for a partition 0.1% better, with the same bins."""
HDBSCAN_MIN_CLUSTER = 10
"""Smallest HDBSCAN cluster, in contigs (bins are then also held to min_bin_size bases)."""
DEFAULT_MIN_BIN_SIZE = 200_000
"""Bases: VAMB's default minimum bin size; smaller bins are left unbinned."""
UNBINNED = -1

RECALLS = (0.5, 0.7, 0.9, 0.95, 0.99)
PURITIES = (0.9, 0.95)
NEAR_COMPLETE = (0.9, 0.95)
"""(recall, purity) of a near-complete bin."""
MEDIUM = (0.5, 0.9)
"""(recall, purity) of a medium-quality bin (MIMAG: >= 50% complete, < 10% contamination)."""


def readout(x: np.ndarray) -> np.ndarray:
    """`kmervae.core.model.readout` of numpy rows (unit length: cosine geometry), float32, by the
    same torch call, so both give the same bits; binning sits below the model and does not import
    it. Idempotent, so embeddings that are readouts already (what `kmervae embed` writes) pass
    unchanged."""
    import torch

    return torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), dim=1).numpy()


def nearest_neighbours(x: np.ndarray, k: int, exact_max: int = EXACT_NEIGHBOURS_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities (n, k) of each row's k nearest other rows of a readout:
    exact up to `exact_max` rows (O(n^2): 20 s at 100,000 contigs, most of an hour at a
    million), approximate above (`approximate_neighbours`)."""
    if len(x) <= exact_max:
        return exact_neighbours(x, k)
    return approximate_neighbours(x, k)


def approximate_neighbours(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`nearest_neighbours` from an HNSW index (faiss, inner product of unit vectors = cosine).

    faiss was chosen by measurement among hnswlib, faiss, usearch and pynndescent on real
    contigs' embeddings (bench/million.py knn, bench/RESULTS.md "A million contigs"): recall of
    the 15-NN graph >= 0.998, the same graph when run again (hnswlib's and usearch's multithreaded
    builds differ in 0.1-0.4% of neighbours: bins must be reproducible), and a maintained
    library. A row the index returns fewer than k neighbours for (rare) gets itself as filler,
    with similarity 0, which adds no edge weight."""
    import faiss

    k = min(k, len(x) - 1)
    data = np.ascontiguousarray(x, dtype=np.float32)
    index = faiss.IndexHNSWFlat(data.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(data)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, k + 1)
    sims, found = index.search(data, k + 1)
    # Each row's own entry is dropped: usually the first, else (a near-duplicate ranked above
    # it, or itself missed) the last neighbour.
    rows = np.arange(len(data))[:, None]
    own = found == rows
    keep = ~own
    keep[~own.any(axis=1), -1] = False
    found = found[keep].reshape(len(data), k)
    sims = sims[keep].reshape(len(data), k)
    missing = found < 0  # faiss marks slots it could not fill with -1
    found[missing] = np.broadcast_to(rows, found.shape)[missing]
    sims[missing] = 0.0
    return found.astype(np.int64), sims.astype(np.float32)


def exact_neighbours(x: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """`nearest_neighbours` by blockwise matrix products (torch: multithreaded BLAS, topk
    without a full sort)."""
    import torch

    k = min(k, len(x) - 1)
    data = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    index = np.empty((len(x), k), dtype=np.int64)
    sims = np.empty((len(x), k), dtype=np.float32)
    for lo in range(0, len(x), block):
        sim = data[lo : lo + block] @ data.T
        sim[torch.arange(len(sim)), torch.arange(lo, lo + len(sim))] = -math.inf  # not its own neighbour
        top = sim.topk(k, dim=1)
        index[lo : lo + block] = top.indices.numpy()
        sims[lo : lo + block] = top.values.numpy()
    return index, sims


def knn_graph(index: np.ndarray, sims: np.ndarray):
    """The undirected igraph graph of a neighbour search, edges weighted by cosine similarity
    (negative similarities count as none)."""
    import igraph

    rows = np.repeat(np.arange(len(index)), index.shape[1])
    graph = igraph.Graph(n=len(index), edges=np.stack([rows, index.reshape(-1)], axis=1), directed=False)
    graph.es["weight"] = np.clip(sims.reshape(-1), 0.0, None).astype(float)
    graph.simplify(combine_edges="max")  # i->j and j->i are one edge
    return graph


def leiden(graph, resolution: float, seed: int) -> np.ndarray:
    """Leiden communities of `graph` (modularity at `resolution`), reproducible for a seed."""
    import random

    import igraph

    # igraph draws from the random number generator it is given: a private, seeded one keeps the
    # bins reproducible and leaves the caller's `random` module untouched.
    igraph.set_random_number_generator(random.Random(seed))
    try:
        found = graph.community_leiden("modularity", weights="weight", resolution=resolution, n_iterations=N_ITERATIONS)
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(found.membership, dtype=np.int64)


def _hdbscan(x: np.ndarray, min_cluster: int) -> np.ndarray:
    from sklearn.cluster import HDBSCAN

    return HDBSCAN(min_cluster_size=min_cluster, copy=True).fit_predict(x).astype(np.int64)


def cluster(
    embeddings: np.ndarray,
    lengths: np.ndarray,
    method: str = DEFAULT_METHOD,
    min_bin_size: int = DEFAULT_MIN_BIN_SIZE,
    seed: int = 0,
    *,
    neighbours: int = KNN_NEIGHBOURS,
    resolution: float = LEIDEN_RESOLUTION,
    exact_max: int = EXACT_NEIGHBOURS_MAX,
) -> np.ndarray:
    """Bin codes 0..B-1 (largest bin first, by bases) or UNBINNED (-1) for every contig
    (`neighbours` and `resolution`: the Leiden graph's and partition's; its neighbours are exact
    up to `exact_max` contigs)."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    x = readout(embeddings)
    if len(x) < 2:
        raw = np.zeros(len(x), dtype=np.int64)
    elif method == "leiden":
        raw = leiden(knn_graph(*nearest_neighbours(x, neighbours, exact_max)), resolution, seed)
    else:
        raw = _hdbscan(x, HDBSCAN_MIN_CLUSTER)
    return renumber(raw, lengths, min_bin_size)


def renumber(raw: np.ndarray, lengths: np.ndarray, min_bin_size: int) -> np.ndarray:
    """Clusters of at least `min_bin_size` bases numbered by size (largest 0); the rest UNBINNED."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.full(len(raw), UNBINNED, dtype=np.int64)
    clustered = raw >= 0
    if not clustered.any():
        return codes
    ids, inverse = np.unique(raw[clustered], return_inverse=True)
    bases = np.bincount(inverse, weights=lengths[clustered], minlength=len(ids))
    order = np.lexsort((ids, -bases))  # by size, ties by the clusterer's own id: deterministic
    kept = order[bases[order] >= min_bin_size]
    new = np.full(len(ids), UNBINNED, dtype=np.int64)
    new[kept] = np.arange(len(kept))
    codes[clustered] = new[inverse]
    return codes


@dataclass(frozen=True)
class BinQuality:
    """Per bin (index = bin code): its main genome, purity and recall of that genome, in bases."""

    genomes: list[str]  # the label names codes refer to
    main: np.ndarray  # (bins,) index into genomes; -1 for a bin with no labelled contig
    purity: np.ndarray  # (bins,)
    recall: np.ndarray  # (bins,)
    labelled_bases: np.ndarray  # (bins,) labelled bases in each bin

    def passes(self, recall: float, purity: float) -> np.ndarray:
        """(bins,) bool: which bins are at or above both thresholds."""
        return (self.recall >= recall) & (self.purity >= purity)

    def count(self, recall: float, purity: float) -> int:
        """Bins at or above both thresholds."""
        return int(self.passes(recall, purity).sum())

    @property
    def near_complete(self) -> int:
        return self.count(*NEAR_COMPLETE)

    def grid(self) -> dict[str, int]:
        """Bins at every (recall, purity) threshold pair, by `grid_key`."""
        return {grid_key(r, p): self.count(r, p) for p in PURITIES for r in RECALLS}


def grid_key(recall: float, purity: float) -> str:
    """A cell of the quality grid as summary.json names it: 'recall>=R,purity>=P'."""
    return f"recall>={recall},purity>={purity}"


def bin_quality(codes: np.ndarray, labels, lengths: np.ndarray) -> BinQuality:
    """Quality of the bins `codes` (UNBINNED for none) against genome `labels` (None: unknown)."""
    codes = np.asarray(codes, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    known = np.array([label is not None for label in labels], dtype=bool)
    genomes = sorted({str(label) for label in labels[known]})
    genome_code = np.full(len(labels), -1, dtype=np.int64)
    lookup = {name: i for i, name in enumerate(genomes)}
    genome_code[known] = [lookup[str(label)] for label in labels[known]]
    bins = int(codes.max()) + 1 if len(codes) and codes.max() >= 0 else 0
    table = np.zeros((bins, max(len(genomes), 1)), dtype=np.float64)  # bases of genome g in bin b
    use = known & (codes >= 0)
    np.add.at(table, (codes[use], genome_code[use]), lengths[use])
    genome_bases = np.bincount(genome_code[known], weights=lengths[known], minlength=len(genomes))
    binned = table.sum(axis=1)
    main = np.where(binned > 0, table.argmax(axis=1), -1)
    top = table.max(axis=1) if bins else np.zeros(0)
    purity = np.divide(top, binned, out=np.zeros(bins), where=binned > 0)
    totals = genome_bases[main.clip(min=0)] if len(genomes) else np.zeros(bins)
    recall = np.divide(top, totals, out=np.zeros(bins), where=(main >= 0) & (totals > 0))
    return BinQuality(genomes, main, purity, recall, binned)


def near_complete_bins(
    embeddings: np.ndarray,
    labels,
    lengths: np.ndarray,
    seed: int = 0,
    min_bin_size: int = 0,
    resolution: float = LEIDEN_RESOLUTION,
) -> float:
    """`val/nc_bins`: near-complete bins of the Leiden clusterer on labelled contigs; NaN where
    the clustering libraries are absent (bare GPU hosts) or fewer than 2 contigs are labelled.
    `min_bin_size` 0 for a validation split, which holds only part of each genome; `kmervae bin`'s
    DEFAULT_MIN_BIN_SIZE where every contig validates (data.val_split=all)."""
    try:
        import faiss  # noqa: F401
        import igraph  # noqa: F401
    except ImportError:
        return math.nan
    labels = np.asarray(labels, dtype=object)
    known = np.array([label is not None for label in labels], dtype=bool)
    if known.sum() < 2:
        return math.nan
    lengths = np.asarray(lengths)[known]
    codes = cluster(np.asarray(embeddings)[known], lengths, min_bin_size=min_bin_size, seed=seed, resolution=resolution)
    return float(bin_quality(codes, labels[known], lengths).near_complete)


def estimated_near_complete_bins(
    embeddings: np.ndarray,
    lengths: np.ndarray,
    keys: np.ndarray,
    markers,
    seed: int = 0,
    min_bin_size: int = DEFAULT_MIN_BIN_SIZE,
    resolution: float = LEIDEN_RESOLUTION,
) -> float:
    """`val/est_nc_bins`: the Leiden clusterer's bins judged by single-copy marker genes
    (`markers.estimate_bins(...).score()`: estimated near-complete bins plus a tie-breaker below
    one), for contigs with id hashes `keys` and the dataset's `markers` (`KeyedMarkers`); NaN where
    the clustering libraries are absent or fewer than 2 contigs are given. No labels needed."""
    from kmervae.binning.markers import estimate_bins

    try:
        import faiss  # noqa: F401
        import igraph  # noqa: F401
    except ImportError:
        return math.nan
    if len(embeddings) < 2:
        return math.nan
    codes = cluster(
        np.asarray(embeddings), np.asarray(lengths), min_bin_size=min_bin_size, seed=seed, resolution=resolution
    )
    return estimate_bins(codes, markers.presence(np.asarray(keys))).score()
