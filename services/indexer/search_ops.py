"""Pure search functions over a slice: exact blocked scan, IVF candidates with an id selector, exact
re-rank; numpy in, numpy out, memory bounded by a byte budget."""

from __future__ import annotations

from collections.abc import Callable

import faiss
import numpy as np

from semsearch.core.errors import ResourceExhausted

# Rows scored per block by the exact scan.
SCAN_BLOCK_ROWS = 65_536


def bitmap(mask: np.ndarray) -> np.ndarray:
    """Pack a boolean mask [n] into the little-endian bitmap FAISS's IDSelectorBitmap reads."""
    return np.packbits(mask, bitorder="little")


def search_params(index: faiss.Index, packed: np.ndarray, depth: int):
    """SearchParameters for `index` (IVF, HNSW or flat, optionally behind a pre-transform such as OPQ)
    that admit only the slots set in `packed`, searching `depth` deep (nprobe for IVF, efSearch for
    HNSW). The caller keeps `packed` alive during the search."""
    selector = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
    inner = index
    wrapped = False
    if isinstance(index, faiss.IndexPreTransform):
        inner = faiss.downcast_index(index.index)
        wrapped = True
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=max(1, min(depth, inner.nlist)))
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(depth, 16))
    else:
        params = faiss.SearchParameters(sel=selector)
    if wrapped:
        params = faiss.SearchParametersPreTransform(index_params=params)
    params.keep = (selector, packed)  # keep the selector's memory alive as long as the params
    return params


def ivf_params(packed: np.ndarray) -> faiss.SearchParametersIVF:
    """SearchParametersIVF admitting only the slots set in `packed` (for IvfDepth.search, which sets
    nprobe per batch); the caller keeps `packed` alive during the search."""
    selector = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
    params = faiss.SearchParametersIVF(sel=selector)
    params.keep = (selector, packed)
    return params


def check_budget(queries: int, candidates: int, dim: int, budget_bytes: int, what: str) -> None:
    """Refuse a search whose single query would materialise more than `budget_bytes`."""
    need = candidates * dim * 4
    if need > budget_bytes:
        raise ResourceExhausted(
            f"{what} needs {need >> 20} MB of candidate vectors per query, more than the "
            f"{budget_bytes >> 20} MB a search may use; ask for fewer hits or a smaller re-rank depth"
        )


def chunks_for(queries: int, per_query_bytes: int, budget_bytes: int) -> int:
    """How many queries fit in one step under the budget (at least 1)."""
    return max(1, min(queries, budget_bytes // max(per_query_bytes, 1)))


def similarity(rows: np.ndarray, queries: np.ndarray, l2: bool) -> np.ndarray:
    """Scores [n, q] of rows [n, d] against queries [q, d], higher is more similar: inner products, or
    for L2 minus the squared distances."""
    scores = rows @ queries.T
    if l2:
        scores *= 2
        scores -= np.einsum("ij,ij->i", rows, rows)[:, None]
        scores -= np.einsum("ij,ij->i", queries, queries)[None, :]
    return scores


def exact_topk(
    queries: np.ndarray,
    fetch_block: Callable[[int, int], np.ndarray],
    rows: int,
    allowed: np.ndarray,
    k: int,
    budget_bytes: int,
    l2: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of queries [q, d] over rows [0, rows) whose `allowed[slot]` is true, by inner product
    or (l2) minus the squared distance. `fetch_block(start, end)` returns float32 rows [end-start, d].
    Returns (scores, slots) [q, k], padded with (-inf, -1)."""
    q = len(queries)
    best_scores = np.full((q, k), -np.inf, dtype=np.float32)
    best_slots = np.full((q, k), -1, dtype=np.int64)
    block_rows = max(1024, min(SCAN_BLOCK_ROWS, budget_bytes // max(4 * q, 1)))
    for start in range(0, rows, block_rows):
        end = min(start + block_rows, rows)
        mask = allowed[start:end]
        if not mask.any():
            continue
        scores = similarity(fetch_block(start, end), queries, l2)  # [block, q]
        scores[~mask] = -np.inf
        kk = min(k, end - start)
        top = (
            np.argpartition(-scores, kk - 1, axis=0)[:kk]
            if kk < end - start
            else np.arange(end - start)[:, None].repeat(q, axis=1)
        )
        top_scores = np.take_along_axis(scores, top, axis=0).T  # [q, kk]
        merged_scores = np.concatenate([best_scores, top_scores], axis=1)
        merged_slots = np.concatenate([best_slots, top.T.astype(np.int64) + start], axis=1)
        order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
        best_slots = np.take_along_axis(merged_slots, order, axis=1)
    best_slots[~np.isfinite(best_scores)] = -1
    return best_scores, best_slots


def rerank(
    queries: np.ndarray,
    candidates: np.ndarray,
    fetch: Callable[[np.ndarray], np.ndarray],
    k: int,
    budget_bytes: int,
    l2: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-ranking: candidate slots [q, r] (-1 = none) -> (scores, slots) [q, k] by the exact score
    (inner product, or for l2 minus the squared distance) against the raw vectors `fetch(slots [m]) ->
    [m, d]`, in steps of at most `budget_bytes`."""
    q, r = candidates.shape
    out_scores = np.full((q, k), -np.inf, dtype=np.float32)
    out_slots = np.full((q, k), -1, dtype=np.int64)
    if r == 0 or q == 0:
        return out_scores, out_slots
    step = chunks_for(q, r * queries.shape[1] * 4, budget_bytes)
    for begin in range(0, q, step):
        end = min(begin + step, q)
        cand = candidates[begin:end]
        valid = cand >= 0
        scores = np.full(cand.shape, -np.inf, dtype=np.float32)
        flat = cand[valid]
        if flat.size:
            # Fetch each distinct slot once, in file order (sequential reads of the memory map).
            unique, inverse = np.unique(flat, return_inverse=True)
            raw = fetch(unique)
            rows = np.nonzero(valid)[0]
            picked, against = raw[inverse], queries[begin:end][rows]
            if l2:
                difference = picked - against
                scores[valid] = -np.einsum("ij,ij->i", difference, difference)
            else:
                scores[valid] = np.einsum("ij,ij->i", picked, against)
        kk = min(k, r)
        top = (
            np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            if kk < r
            else np.tile(np.arange(r), (end - begin, 1))
        )
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        out_scores[begin:end, :kk] = np.take_along_axis(top_scores, order, axis=1)
        out_slots[begin:end, :kk] = np.take_along_axis(cand, top, axis=1)
    out_slots[~np.isfinite(out_scores)] = -1
    return out_scores, out_slots


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean share of the true top-k ids [q, >=k] found in the returned top-k ids [q, >=k]."""
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth))
    return hits / (len(found) * k)
