"""How deep each query searches an IVF index: every list whose centroid lies within (1 + eps) times the
squared distance of the nearest centroid (the ratio rule of query-aware pruning, as in SPANN).

A query from the data the index was trained on sits close to one centroid and probes few lists; a query
unlike anything in the training sample (a new kind of data) is far from every centroid, its centroids
are nearly equidistant, and the same eps probes many more lists. That is what keeps a recall target on
data the table was not measured on, where a fixed nprobe silently loses recall. eps is calibrated per
slice against exact search (eps_table) and raised by the online recall monitor (monitor.py) when live
queries get less recall than asked."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

# eps values tried by the calibration, in increasing cost.
EPS_LADDER = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# A query probes at least this many lists (a query sitting on a centroid has a near-zero distance).
MIN_LISTS = 2


@dataclass
class Probes:
    """The coarse step of a batch of queries: transformed queries [q, d'], the quantizer's scores and
    lists [q, width] in probing order, and pseudo squared distances to those centroids [q, width]."""

    xq: np.ndarray
    scores: np.ndarray
    lists: np.ndarray
    distances: np.ndarray


class IvfDepth:
    """The per-query depth rule of one IVF index (plain, or behind transforms such as OPQ)."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.ivf = faiss.extract_index_ivf(index)
        self.transforms = []
        if isinstance(index, faiss.IndexPreTransform):
            self.transforms = [
                faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())
            ]
        self.nlist = int(self.ivf.nlist)
        self.inner_product = self.ivf.metric_type == faiss.METRIC_INNER_PRODUCT
        centroids = self.ivf.quantizer.reconstruct_n(0, self.nlist)
        self.centroid_norms = np.einsum("ij,ij->i", centroids, centroids).astype(np.float32)

    def probes(self, queries: np.ndarray, width: int) -> Probes:
        xq = np.ascontiguousarray(queries, dtype=np.float32)
        for transform in self.transforms:
            xq = np.ascontiguousarray(transform.apply(xq), dtype=np.float32)
        width = max(1, min(width, self.nlist))
        scores, lists = self.ivf.quantizer.search(xq, width)
        if self.inner_product:  # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 <x, c>
            norms = np.einsum("ij,ij->i", xq, xq)[:, None]
            distances = norms + self.centroid_norms[np.maximum(lists, 0)] - 2 * scores
        else:
            distances = scores
        return Probes(xq, scores, lists, np.maximum(distances, 0.0))

    def depths(self, probes: Probes, eps: float, floor: int, ceiling: int) -> np.ndarray:
        """Lists each query probes: those within (1 + eps) of its nearest centroid's distance, at least
        `floor`, at most `ceiling`."""
        nearest = probes.distances.min(axis=1, keepdims=True)
        within = (probes.distances <= (1.0 + eps) * nearest + 1e-12).sum(axis=1)
        return np.clip(within, max(1, floor), max(1, min(ceiling, probes.lists.shape[1])))

    def search(
        self, probes: Probes, depths: np.ndarray, k: int, params: faiss.SearchParametersIVF
    ) -> np.ndarray:
        """Candidate slots [q, k] (-1 = none), each query probing its first depths[i] lists."""
        n = len(probes.xq)
        width = int(depths.max()) if n else 1
        lists = np.ascontiguousarray(probes.lists[:, :width])
        lists[np.arange(width)[None, :] >= depths[:, None]] = -1  # FAISS skips negative lists
        scores = np.ascontiguousarray(probes.scores[:, :width], dtype=np.float32)
        params.nprobe = width
        distances = np.empty((n, k), dtype=np.float32)
        slots = np.empty((n, k), dtype=np.int64)
        self.ivf.search_preassigned_c(
            n, faiss.swig_ptr(probes.xq), k, faiss.swig_ptr(lists), faiss.swig_ptr(scores),
            faiss.swig_ptr(distances), faiss.swig_ptr(slots), False, params, None,
        )  # fmt: skip
        return slots


def eps_for_recall(table: list[tuple[float, float, float]], target: float) -> float:
    """The smallest eps whose measured recall reaches `target` (the largest measured if none)."""
    for eps, recall, _ in sorted(table):
        if recall >= target - 1e-6:
            return eps
    return max(e for e, _, _ in table)
