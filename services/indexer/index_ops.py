"""Pure FAISS operations on numpy arrays: train templates, add rows, serialise, recall tables, sizes.

An index's "depth" is the knob that trades recall for time: nprobe for IVF indexes, efSearch for
HNSW graphs; recall tables map it to measured recall@10."""

from __future__ import annotations

import faiss
import numpy as np

from services.indexer import search_ops

# Depths tried when measuring the recall table of a trained template.
NPROBE_CANDIDATES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
EF_CANDIDATES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# The widest an HNSW search goes when widening to find k live hits (an exact scan after that).
MAX_EF = 16_384


def faiss_metric(l2: bool) -> int:
    return faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT


def is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
    except RuntimeError:
        return False
    return True


def depth_candidates(index: faiss.Index) -> tuple[int, ...]:
    return NPROBE_CANDIDATES if is_ivf(index) else EF_CANDIDATES


def max_depth(index: faiss.Index) -> int:
    """The depth at which a search sees every row: every IVF list; for HNSW, a wide efSearch."""
    return faiss.extract_index_ivf(index).nlist if is_ivf(index) else MAX_EF


def add(index: faiss.Index, vectors: np.ndarray, first_slot: int) -> None:
    """Add rows whose slots are first_slot.. (IVF keeps them as ids; HNSW numbers rows in insertion
    order, so rows must come in slot order)."""
    if is_ivf(index):
        index.add_with_ids(vectors, np.arange(first_slot, first_slot + len(vectors), dtype=np.int64))
    else:
        assert index.ntotal == first_slot, (index.ntotal, first_slot)
        index.add(vectors)


def check_vectors(x: np.ndarray, dim: int) -> None:
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == dim, (x.dtype, x.shape, dim)


def train_template(sample: np.ndarray, factory: str, l2: bool = False) -> faiss.Index:
    """Train an empty index described by a FAISS factory string (e.g. "OPQ48,IVF4096,PQ48" or
    "HNSW32,Flat") on sample [n, d] float32, inner-product or L2 metric. The result is the template
    every shard fills."""
    check_vectors(sample, sample.shape[1])
    index = faiss.index_factory(sample.shape[1], factory, faiss_metric(l2))
    if is_ivf(index):
        ivf = faiss.extract_index_ivf(index)
        # Cluster on the CPU with a bounded sample per centroid: more points add time, not quality.
        ivf.cp.max_points_per_centroid = 256
        # The factory turns on polysemous training for PQ, which search never uses and which took
        # most of the training time (31-38 s vs 7.5 s for PQ16 on 19.5k vectors).
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
    if not index.is_trained:
        index.train(sample)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def measure_depth_table(
    template: faiss.Index,
    base: np.ndarray,
    queries: np.ndarray,
    rerank_depth: int,
    k: int = 10,
    l2: bool = False,
) -> list[tuple[int, float]]:
    """recall@k with exact re-ranking of `rerank_depth` candidates, for each depth, on an index filled
    from `template` with base [n, d]; queries [q, d] are held out of base. The truth is exact search
    over base."""
    index = faiss.clone_index(template)
    add(index, base, 0)
    everything = np.ones(len(base), dtype=bool)
    _, truth = search_ops.exact_topk(queries, lambda s, e: base[s:e], len(base), everything, k, 1 << 30, l2)
    packed = search_ops.bitmap(everything)
    table = []
    for depth in depth_candidates(index):
        if depth > max_depth(index):
            break
        params = search_ops.search_params(index, packed, depth)
        _, candidates = index.search(queries, rerank_depth, params=params)
        _, found = search_ops.rerank(queries, candidates, lambda s: base[s], k, 1 << 30, l2)
        table.append((depth, search_ops.recall_at_k(found, truth, k)))
        if table[-1][1] >= 0.999:
            break
    return table


def depth_for_recall(table: list[tuple[int, float]], target: float) -> int:
    """The smallest depth whose measured recall reaches `target` (the largest measured if none)."""
    for nprobe, recall in sorted(table):
        if recall >= target - 1e-6:  # recalls travel as float32
            return nprobe
    return max(n for n, _ in table)


def index_bytes(index: faiss.Index, fixed_bytes: int) -> int:
    """Bytes the index holds in memory. IVF: the codes and 64-bit ids of the inverted lists plus
    `fixed_bytes` (coarse quantizer, codebooks, transforms: the serialised size of the empty template,
    measured once). HNSW: the stored vectors plus the graph's links (32 neighbours, 4 bytes each, on the
    base level, about half as many above)."""
    if is_ivf(index):
        ivf = faiss.extract_index_ivf(index)
        return fixed_bytes + int(ivf.ntotal) * (int(ivf.code_size) + 8)
    return fixed_bytes + int(index.ntotal) * (index.d * 4 + 2 * 32 * 4)
