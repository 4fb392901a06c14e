"""Bins made better by their marker genes, as the peers do: split a bin whose markers show a
second genome, leave out a part that carries none, or choose the clusterer's resolution per
assembly by the bins' estimated quality.

    codes = partition(x, lengths, markers, "kmeans")               # what `kmervae bin --recluster kmeans` makes
    codes = recluster(x, lengths, bins.cluster(x, lengths), markers, "kmeans")   # the same, in two steps

Methods (`METHODS`; bench/RESULTS.md "Reclustering" measures each on every benchmark set):
- `kmeans` (SemiBin2's): a judged bin whose median marker occurs on more than one contig holds
  several genomes; the contigs that carry that marker seed a k-means of the bin's readouts,
  weighted by length, with one centre per seed contig.
- `leiden`: the bin's own contigs clustered again by Leiden at twice the resolution, the
  contigs' neighbours found among the bin's contigs only.
- `grid` (COMEBin's): Leiden over the whole assembly at each resolution of RESOLUTIONS, keeping
  the partition whose bins score best by their markers (`BinEstimates.score`).
- `unmarked`: every bin's own contigs clustered again by Leiden at UNMARKED_RESOLUTION; a part of
  UNMARKED_MIN_BASES or more, under the minimum bin size and under half its bin, with no marker
  gene at all, is left unbinned. A phage or a plasmid whose depths follow its neighbour's joins that genome's bin and
  costs it its purity (bench/RESULTS.md "Issue 38, lever 6"); markers cannot see it, since it has
  none, but a bacterial stretch of that size almost always carries one (about one marker every
  40 kb). Parts of a genome that carry none cost it at most that stretch of its recall.
A split or a partition (not `unmarked`'s, which markers cannot score) is kept only when the
estimated quality of what it makes beats what was there (more estimated near-complete bins, or as
many with a better tie-breaker): markers decide, labels never.
"""

from __future__ import annotations

import numpy as np

from kmervae.binning import bins
from kmervae.binning.markers import BACTERIA, ContigMarkers, estimate_bins

METHODS = ("none", "kmeans", "leiden", "grid", "unmarked")
RESOLUTIONS = (0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
"""The `grid` method's Leiden resolutions (the default 0.4 among them)."""
SPLIT_RESOLUTION = 2.0
"""`leiden`: a mixed bin's contigs are partitioned again at this multiple of the resolution."""
UNMARKED_RESOLUTION = 1.0
"""`unmarked`: the Leiden resolution that partitions each bin's own contigs."""
UNMARKED_MIN_BASES = 50_000
"""`unmarked`: the smallest part left out (a bacterial stretch this long carries about one marker)."""


def partition(
    embeddings: np.ndarray,
    lengths: np.ndarray,
    markers: ContigMarkers | None,
    method: str,
    *,
    cluster_method: str = "leiden",
    min_bin_size: int = bins.DEFAULT_MIN_BIN_SIZE,
    resolution: float = bins.LEIDEN_RESOLUTION,
    seed: int = 0,
) -> np.ndarray:
    """`kmervae bin`'s bins: the clusterer's, improved by `method`. The grid partitions at each of
    its resolutions itself (the default among them), so it gets no first clustering to redo."""
    codes = None
    if method != "grid":
        codes = bins.cluster(embeddings, lengths, cluster_method, min_bin_size, seed, resolution=resolution)
    return recluster(
        embeddings, lengths, codes, markers, method, min_bin_size=min_bin_size, resolution=resolution, seed=seed
    )


def recluster(
    embeddings: np.ndarray,
    lengths: np.ndarray,
    codes: np.ndarray | None,
    markers: ContigMarkers | None,
    method: str,
    *,
    min_bin_size: int = bins.DEFAULT_MIN_BIN_SIZE,
    resolution: float = bins.LEIDEN_RESOLUTION,
    seed: int = 0,
) -> np.ndarray:
    """`codes` improved by `method` (bin codes as `bins.cluster` returns them, renumbered); the grid
    makes its own partitions and reads no `codes`, `none` no `markers`."""
    if method not in METHODS:
        raise ValueError(f"recluster method {method!r}: expected one of {', '.join(METHODS)}")
    if method == "none":
        return codes
    x = bins.readout(embeddings)
    lengths = np.asarray(lengths, dtype=np.int64)
    if method == "grid":
        return best_resolution(x, lengths, markers, min_bin_size=min_bin_size, seed=seed)
    if method == "unmarked":
        return leave_out_unmarked(x, lengths, codes, markers, min_bin_size=min_bin_size, seed=seed)
    split = split_kmeans if method == "kmeans" else split_leiden
    raw = np.asarray(codes, dtype=np.int64).copy()
    est = estimate_bins(codes, markers)
    next_code = int(raw.max()) + 1 if len(raw) else 0
    for b in np.flatnonzero(est.judged & (est.contamination > 0)):
        members = np.flatnonzero(raw == b)
        parts = split(x[members], lengths[members], markers.subset(raw == b), resolution * SPLIT_RESOLUTION, seed)
        if parts is None or len(np.unique(parts)) < 2:
            continue
        proposal = raw.copy()
        proposal[members] = np.where(parts == parts[0], b, next_code + parts)  # the first part keeps the code
        if better(proposal, raw, lengths, markers, min_bin_size):
            raw, next_code = proposal, next_code + int(parts.max()) + 1
    return bins.renumber(raw, lengths, min_bin_size)


def better(proposal: np.ndarray, current: np.ndarray, lengths, markers: ContigMarkers, min_bin_size: int) -> bool:
    """Whether `proposal`'s bins (of at least `min_bin_size` bases) score above `current`'s by their markers."""
    score = lambda raw: estimate_bins(bins.renumber(raw, lengths, min_bin_size), markers).score()  # noqa: E731
    return score(proposal) > score(current)


def seed_contigs(markers: ContigMarkers) -> np.ndarray:
    """Rows of the contigs that carry the bin's median bacterial marker (SemiBin2's seeds: the
    marker that occurs the median number of times; ties to the rarest column index); empty when
    that median is one copy (no second genome shows)."""
    bacterial = np.asarray([name == BACTERIA for name in markers.column_set], dtype=bool)
    keep = bacterial[markers.cols]
    rows, cols = markers.rows[keep], markers.cols[keep]
    if len(cols) == 0:
        return np.zeros(0, dtype=np.int64)
    present, counts = np.unique(cols, return_counts=True)
    order = np.argsort(counts, kind="stable")
    median = counts[order[len(order) // 2]]
    if median < 2:
        return np.zeros(0, dtype=np.int64)
    chosen = present[order[np.searchsorted(counts[order], median)]]
    return np.unique(rows[cols == chosen])


def split_kmeans(x: np.ndarray, lengths: np.ndarray, markers: ContigMarkers, resolution: float, seed: int):
    """SemiBin2's split: k-means of the bin's readouts (weighted by length) from its seed contigs."""
    from sklearn.cluster import KMeans

    seeds = seed_contigs(markers)
    if len(seeds) < 2 or len(seeds) >= len(x):
        return None
    fit = KMeans(n_clusters=len(seeds), init=x[seeds], n_init=1, random_state=seed).fit(x, sample_weight=lengths)
    return fit.labels_.astype(np.int64)


def split_leiden(x: np.ndarray, lengths: np.ndarray, markers: ContigMarkers, resolution: float, seed: int):
    """The bin's contigs partitioned again by Leiden at `resolution`, neighbours among themselves."""
    if len(x) < 3 or len(seed_contigs(markers)) < 2:
        return None
    graph = bins.knn_graph(*bins.nearest_neighbours(x, bins.KNN_NEIGHBOURS))
    return bins.leiden(graph, resolution, seed)


def leave_out_unmarked(
    x: np.ndarray, lengths: np.ndarray, codes: np.ndarray, markers: ContigMarkers, *, min_bin_size: int, seed: int
) -> np.ndarray:
    """`codes` with every part of a bin that carries no marker gene, of UNMARKED_MIN_BASES up to
    `min_bin_size` bases (too small to be a bin of its own) and under half the bin, left unbinned;
    the bins renumbered."""
    raw = np.asarray(codes, dtype=np.int64).copy()
    marked = np.zeros(len(raw), dtype=bool)
    marked[markers.rows] = True
    for b in range(int(raw.max()) + 1 if len(raw) else 0):
        members = np.flatnonzero(codes == b)
        if len(members) <= bins.KNN_NEIGHBOURS:  # too few contigs for a neighbour graph of their own
            continue
        graph = bins.knn_graph(*bins.nearest_neighbours(x[members], bins.KNN_NEIGHBOURS))
        parts = bins.leiden(graph, UNMARKED_RESOLUTION, seed)
        whole = int(lengths[members].sum())
        for part in np.unique(parts):
            inside = members[parts == part]
            size = int(lengths[inside].sum())
            # less than half the bin: a bin mostly without markers is itself what the rule looks for
            if not marked[inside].any() and UNMARKED_MIN_BASES <= size < min(min_bin_size, whole / 2):
                raw[inside] = bins.UNBINNED
    return bins.renumber(raw, lengths, min_bin_size)


def best_resolution(
    x: np.ndarray, lengths: np.ndarray, markers: ContigMarkers, *, min_bin_size: int, seed: int
) -> np.ndarray:
    """COMEBin's choice: the Leiden partition, over RESOLUTIONS, whose bins score best by their markers
    (the first of equal scores, in the order given, so the default resolution wins ties when listed first)."""
    graph = bins.knn_graph(*bins.nearest_neighbours(x, bins.KNN_NEIGHBOURS))
    best, best_score = None, -1.0
    for resolution in sorted(RESOLUTIONS, key=lambda r: r != bins.LEIDEN_RESOLUTION):
        codes = bins.renumber(bins.leiden(graph, resolution, seed), lengths, min_bin_size)
        score = estimate_bins(codes, markers).score()
        if score > best_score:
            best, best_score = codes, score
    return best
