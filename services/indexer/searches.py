"""The search half of a collection's slice: plan each batch of queries (exact scan or index), choose each
query's depth, apply filters, keep the k-hit promise, and hand samples to the recall monitor.

Plans. Without an index (or with `exact`) every allowed slot is scored exactly. With a filter, the
filter becomes a mask over the slots (fields.py) and the shard counts the matching items: few
(at most exact_filter_max) are gathered and scored exactly, which is cheaper than any index walk and
exact; more are searched through the index with an id selector of the mask and a depth raised for the
share that matches (a filter keeping a share s of the items leaves about s of each probed list, so the
index is searched about 1/s deeper, up to every list). Whatever the plan, a query gets k hits whenever
k allowed items exist (deeper searches, then an exact scan)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from semsearch.core.filters import Node
from services.indexer import index_ops, search_ops
from services.indexer.depth import IvfDepth, eps_for_recall
from services.indexer.items import ItemTable
from services.indexer.store import VectorStore

# A filter matching at most this many items of a slice is answered by an exact scan of those items
# (the default of Collection.exact_filter_max, SEMSEARCH_INDEXER_EXACT_FILTER_MAX).
EXACT_FILTERED_MAX = 5_000
# The widest coarse step of an adaptive search (lists), beyond which an exact scan is cheaper.
MAX_ADAPTIVE_LISTS = 1024
# A query that probes many more lists than the slice's own items do sits where the index's codes
# describe the data poorly (a new kind of data): up to this many times more candidates are re-ranked.
MAX_RERANK_WIDEN = 10.0


@dataclass
class SearchOutcome:
    """Results of a batch of queries: scores and slots [q, k] (slot -1 = no hit), and how they were
    found: the plan ("exact" or "index"), the depth (mean lists probed, or efSearch), the items the
    search was allowed to return (packed bitmap over the slots) and how many."""

    scores: np.ndarray
    slots: np.ndarray
    items: ItemTable  # the table the slots refer to
    generation: int
    index: str
    depth: float
    plan: str = "exact"
    adaptive: bool = False  # each query's depth chosen by the rule (depth.py), not fixed
    matched: int = 0
    packed: np.ndarray | None = None
    rows: int = 0
    store: VectorStore | None = None


@dataclass
class _View:
    """What one search reads, captured under the apply lock so that a concurrent swap or write cannot
    mix two states."""

    store: VectorStore
    items: ItemTable
    rows: int
    packed: np.ndarray
    allowed: np.ndarray
    index: faiss.Index | None
    ivf_depth: IvfDepth | None
    generation: int
    live: int


class Searches:
    """The search half of Collection (services/indexer/collection.py), which holds the state and locks."""

    def _use_index(self, index, factory: str, table: list, eps_table: list, template_bytes: int) -> None:
        """Serve `index` with its measured tables (depth -> recall, eps -> recall); apply lock held."""
        self.index = index
        self.factory = factory
        self.depth_table = [(int(n), float(r)) for n, r in table]
        self.eps_table = [(float(e), float(r), float(d)) for e, r, d in eps_table]
        self.template_bytes = template_bytes
        self.default_depth = index_ops.depth_for_recall(self.depth_table, self.config.recall_target)
        self.ivf_depth = IvfDepth(index) if index_ops.is_ivf(index) else None

    def resolve_depth(self, depth: int, recall_target: float) -> int:
        """A request's fixed depth (nprobe or efSearch): as given; 0 when the depth is chosen per query
        (IVF with a measured eps table); else from the recall target or the collection's default."""
        if self.index is None:
            return 0
        if depth:
            return min(depth, index_ops.max_depth(self.index))
        if self.ivf_depth is not None and self.eps_table:
            return 0
        if recall_target:
            return index_ops.depth_for_recall(self.depth_table, recall_target)
        return self.default_depth

    def check_search_budget(self, k: int, rerank: int) -> None:
        """RESOURCE_EXHAUSTED for a query whose candidates alone would exceed the search budget."""
        if self.index is not None:
            search_ops.check_budget(1, max(rerank, k), self.config.dim, self.search_budget_bytes,
                                    f"k={k} with re-rank depth {max(rerank, k)}")  # fmt: skip

    def _view(self) -> _View:
        with self._apply:
            items = self.items
            rows = items.rows
            return _View(self.store, items, rows, items.packed(), items.alive(rows), self.index,
                         self.ivf_depth, self.generation, items.count)  # fmt: skip

    def search(
        self,
        queries: np.ndarray,
        k: int,
        depth: int,
        rerank: int,
        where: Node | None = None,
        recall_target: float = 0.0,
        exact: bool = False,
    ) -> SearchOutcome:
        """Top-k allowed items (live, and matching `where`) of validated queries [q, d]. `depth` fixes
        nprobe or efSearch (0: per query, from `recall_target` or the collection's); `rerank` candidates
        are re-ranked exactly against the raw vectors; `exact` scores every allowed item."""
        view = self._view()
        allowed, packed, matched = view.allowed, view.packed, view.live
        if where is not None:
            allowed = allowed & view.items.fields.mask(where, view.rows)
            matched = int(np.count_nonzero(allowed))
            packed = search_ops.bitmap(allowed)
        outcome = SearchOutcome(
            np.full((len(queries), k), -np.inf, dtype=np.float32),
            np.full((len(queries), k), -1, dtype=np.int64),
            view.items, view.generation, self.index_name if view.index is not None else "exact", 0.0,
            matched=matched, packed=packed, rows=view.rows, store=view.store,
        )  # fmt: skip
        if matched == 0:
            return outcome
        if (
            exact
            or view.index is None
            or (where is not None and (matched <= self.exact_filter_max or 2 * k >= matched))
        ):
            outcome.scores, outcome.slots = self._exact(view, queries, k, allowed, matched)
            return outcome
        share = matched / max(view.live, 1)
        target = recall_target or self.config.recall_target
        outcome.plan = "index"
        outcome.adaptive = not depth and view.ivf_depth is not None and bool(self.eps_table)
        outcome.scores, outcome.slots, outcome.depth = self._index_search(
            view, queries, k, depth, max(rerank, k), packed, share, target
        )
        # k hits whenever k allowed items exist: deeper, up to every list, then an exact scan.
        wanted = min(k, matched)
        short = np.nonzero((outcome.slots >= 0).sum(axis=1) < wanted)[0]
        deeper, widest = max(int(np.ceil(outcome.depth)), 1), index_ops.max_depth(view.index)
        while len(short) and deeper < widest:
            deeper = min(widest, deeper * 2)
            found = self._index_search(view, queries[short], k, deeper, max(rerank, k), packed, 1.0, target)
            outcome.scores[short], outcome.slots[short] = found[0], found[1]
            short = short[(outcome.slots[short] >= 0).sum(axis=1) < wanted]
        if len(short):  # an HNSW graph can strand filtered-out regions: the exact scan always finds them
            outcome.scores[short], outcome.slots[short] = self._exact(
                view, queries[short], k, allowed, matched
            )
        if self.monitor is not None:
            self.monitor.offer(self, queries, outcome, target)
        return outcome

    def _exact(self, view: _View, queries: np.ndarray, k: int, allowed: np.ndarray, matched: int):
        """Exact top-k over the allowed slots: a blocked scan of the raw vectors, or, when few are allowed,
        a scan of those rows only."""
        l2, budget = self.config.faiss_l2, self.search_budget_bytes
        if matched * 4 < view.rows:
            slots = np.nonzero(allowed)[0]
            fetch = lambda s, e: np.asarray(view.store.get(slots[s:e]), dtype=np.float32)  # noqa: E731
            scores, positions = search_ops.exact_topk(
                queries, fetch, len(slots), np.ones(len(slots), dtype=bool), k, budget, l2
            )
            return scores, np.where(positions >= 0, slots[np.maximum(positions, 0)], -1)
        fetch = lambda s, e: np.asarray(view.store.view(s, e), dtype=np.float32)  # noqa: E731
        return search_ops.exact_topk(queries, fetch, view.rows, allowed, k, budget, l2)

    def _index_search(self, view, queries, k, depth, rerank, packed, share, target):
        """(scores, slots, mean depth): index candidates re-ranked exactly. Depth: `depth` when given (a
        fixed nprobe or efSearch), else per query; raised by 1/share for a filter keeping that share."""
        adaptive = not depth and view.ivf_depth is not None and self.eps_table
        widest = rerank * (MAX_RERANK_WIDEN if adaptive else 1)
        step = search_ops.chunks_for(
            len(queries), int(widest) * self.config.dim * 4, self.search_budget_bytes
        )
        scores = np.empty((len(queries), k), dtype=np.float32)
        slots = np.empty((len(queries), k), dtype=np.int64)
        depths = []
        if not depth and not adaptive:  # from the table, raised like eps when the monitor saw too little
            depth = index_ops.depth_for_recall(self.depth_table, target) if self.depth_table else 1
            depth = int(np.ceil(depth * (1.0 + self.eps_extra)))
        for begin in range(0, len(queries), step):
            chunk = queries[begin : begin + step]
            if adaptive:
                model = view.ivf_depth
                ceiling = min(model.nlist, MAX_ADAPTIVE_LISTS)
                probes = model.probes(chunk, ceiling)
                calibrated = eps_for_recall(self.eps_table, target)
                chosen = model.depths(probes, calibrated + self.eps_extra, floor=1, ceiling=ceiling)
                typical = next(lists for e, _, lists in self.eps_table if e == calibrated)
                widen = np.clip(chosen / max(typical, 1.0), 1.0, MAX_RERANK_WIDEN)
                per_query = np.ceil(rerank * widen).astype(np.int64)
                if share < 1.0:
                    chosen = np.minimum(ceiling, np.ceil(chosen / share)).astype(np.int64)
                params = search_ops.ivf_params(packed)
                with self._index_lock:
                    candidates = model.search(probes, chosen, int(per_query.max()), params)
                candidates[np.arange(candidates.shape[1])[None, :] >= per_query[:, None]] = -1
                depths.append(chosen)
            else:
                fixed = min(index_ops.max_depth(view.index), int(np.ceil(depth / share)))
                params = search_ops.search_params(view.index, packed, fixed)
                with self._index_lock:
                    _, candidates = view.index.search(chunk, rerank, params=params)
                depths.append(np.full(len(chunk), fixed))
            scores[begin : begin + len(chunk)], slots[begin : begin + len(chunk)] = search_ops.rerank(
                chunk, candidates, view.store.get, k, self.search_budget_bytes, self.config.faiss_l2
            )
        return scores, slots, float(np.concatenate(depths).mean()) if depths else 0.0

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Up to n live vectors chosen uniformly at random (float32 [m, d])."""
        return self.sample_items(n, seed)[1]

    def sample_items(self, n: int, seed: int) -> tuple[list[str], np.ndarray]:
        """Up to n live items chosen uniformly at random: their ids and vectors (float32 [m, d])."""
        view = self._view()
        alive = np.nonzero(view.allowed)[0]
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(alive, size=min(n, len(alive)), replace=False)) if len(alive) else alive
        return [view.items.ids[s] for s in chosen.tolist()], view.store.get(chosen)
