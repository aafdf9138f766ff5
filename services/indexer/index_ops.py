"""Pure FAISS operations on numpy arrays: train, fill, search, exact re-rank, recall tables."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

# nprobe values tried when measuring the recall table of a trained template.
NPROBE_CANDIDATES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def check_vectors(x: np.ndarray, dim: int) -> None:
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == dim, (x.dtype, x.shape, dim)


def train_template(sample: np.ndarray, factory: str) -> faiss.Index:
    """Train an empty index described by a FAISS factory string (e.g. "OPQ48,IVF4096,PQ48") on
    sample [n, d] float32, inner-product metric. The result is the template every shard fills."""
    check_vectors(sample, sample.shape[1])
    index = faiss.index_factory(sample.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    # Cluster on the CPU with a bounded sample per centroid: more points add time, not quality.
    ivf.cp.max_points_per_centroid = 256
    # The factory turns on polysemous training for PQ, which search never uses and which took
    # most of the training time (31-38 s vs 7.5 s for PQ16 on 19.5k vectors).
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False
    index.train(sample)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def set_nprobe(index: faiss.Index, nprobe: int) -> int:
    """Set nprobe on the IVF part of `index` (clamped to its nlist); returns the value used."""
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = max(1, min(int(nprobe), ivf.nlist))
    return ivf.nprobe


def nlist(index: faiss.Index) -> int:
    return faiss.extract_index_ivf(index).nlist


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k of queries [q, d] over vectors [n, d]: (scores, rows) [q, k],
    padded with (-inf, -1) when n < k."""
    scores, rows = faiss.knn(queries, np.ascontiguousarray(vectors, dtype=np.float32), min(k, len(vectors)),
                             metric=faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    if rows.shape[1] < k:
        pad = k - rows.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    return scores, rows


def rerank(
    queries: np.ndarray, candidates: np.ndarray, fetch: Callable[[np.ndarray], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-ranking: candidates [q, r] slot ids (-1 = none) -> (scores, slots) [q, k] by the
    exact inner product with the raw vectors that `fetch(slots [m]) -> [m, d]` returns."""
    q, r = candidates.shape
    valid = candidates >= 0
    flat = candidates[valid]
    scores = np.full((q, r), -np.inf, dtype=np.float32)
    if flat.size:
        # Fetch each distinct slot once, in file order (sequential reads of the memory map).
        unique, inverse = np.unique(flat, return_inverse=True)
        raw = fetch(unique)
        rows = np.nonzero(valid)[0]
        scores[valid] = np.einsum("ij,ij->i", raw[inverse], queries[rows])
    kk = min(k, r)
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < r else np.tile(np.arange(r), (q, 1))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    out_scores = np.take_along_axis(top_scores, order, axis=1)
    out_slots = np.take_along_axis(candidates, top, axis=1)
    out_slots[~np.isfinite(out_scores)] = -1
    if kk < k:
        out_scores = np.pad(out_scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        out_slots = np.pad(out_slots, ((0, 0), (0, k - kk)), constant_values=-1)
    return out_scores, out_slots


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean share of the true top-k ids [q, >=k] found in the returned top-k ids [q, >=k]."""
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth))
    return hits / (len(found) * k)


def measure_nprobe_table(
    template: faiss.Index,
    base: np.ndarray,
    queries: np.ndarray,
    rerank_depth: int,
    k: int = 10,
) -> list[tuple[int, float]]:
    """recall@k with exact re-ranking of `rerank_depth` candidates, for each nprobe, on an index
    filled from `template` with base [n, d]; queries [q, d] are held out of base. The truth is exact
    search over base."""
    index = faiss.clone_index(template)
    index.add(base)
    _, truth = exact_topk(queries, base, k)
    table = []
    for nprobe in NPROBE_CANDIDATES:
        if nprobe > nlist(index):
            break
        set_nprobe(index, nprobe)
        _, candidates = index.search(queries, rerank_depth)
        _, found = rerank(queries, candidates, lambda s: base[s], k)
        table.append((nprobe, recall_at_k(found, truth, k)))
        if table[-1][1] >= 0.999:
            break
    return table


def nprobe_for_recall(table: list[tuple[int, float]], target: float) -> int:
    """The smallest nprobe whose measured recall reaches `target` (the largest measured if none)."""
    for nprobe, recall in sorted(table):
        if recall >= target - 1e-6:  # recalls travel as float32
            return nprobe
    return max(n for n, _ in table)


def index_bytes(index: faiss.Index, fixed_bytes: int) -> int:
    """Bytes the index holds in memory: the codes and 64-bit ids of the inverted lists, plus
    `fixed_bytes` (coarse quantizer, codebooks, transforms: the serialised size of the empty
    template, measured once)."""
    ivf = faiss.extract_index_ivf(index)
    return fixed_bytes + int(ivf.ntotal) * (int(ivf.code_size) + 8)
