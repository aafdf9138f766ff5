"""Pure FAISS operations on numpy arrays: train templates, serialise, recall tables, sizes."""

from __future__ import annotations

import faiss
import numpy as np

from services.indexer import search_ops

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


def nlist(index: faiss.Index) -> int:
    return faiss.extract_index_ivf(index).nlist


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
    everything = np.ones(len(base), dtype=bool)
    _, truth = search_ops.exact_topk(queries, lambda s, e: base[s:e], len(base), everything, k, 1 << 30)
    packed = search_ops.bitmap(everything)
    table = []
    for nprobe in NPROBE_CANDIDATES:
        if nprobe > nlist(index):
            break
        params = search_ops.search_params(index, packed, nprobe)
        _, candidates = index.search(queries, rerank_depth, params=params)
        _, found = search_ops.rerank(queries, candidates, lambda s: base[s], k, 1 << 30)
        table.append((nprobe, search_ops.recall_at_k(found, truth, k)))
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
