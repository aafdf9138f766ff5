"""Rebuilds and compaction of a collection's slice: build a new vector-file epoch (live rows only) and a
new index (from the installed template, once trained) in the background, then swap both in."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from semsearch.core.durable import atomic_write
from semsearch.core.errors import InvalidArgument
from services.indexer import drift, index_ops, search_ops
from services.indexer.depth import EPS_LADDER, IvfDepth
from services.indexer.searches import MAX_ADAPTIVE_LISTS
from services.indexer.store import VectorStore

log = logging.getLogger(__name__)

REBUILD_CHUNK = 65_536
# The recall table is re-measured on the rebuilt slice with this many stored vectors as queries.
TABLE_QUERIES = 200
TABLE_MIN_VECTORS = 1_000
# Dead rows (replaced or deleted items) are compacted away once they are this share of all rows and at
# least COMPACT_MIN_DEAD: disk and memory then stay within 1/(1-share) = 1.33x of the live data.
COMPACT_DEAD_SHARE = 0.25
COMPACT_MIN_DEAD = 1_000
# The recall tables are measured again (half the queries from the new rows) once this many rows were
# written since they were measured, and at least this share of the slice.
RECALIBRATE_MIN_ROWS = 2_000
RECALIBRATE_SHARE = 0.05
RECALIBRATE_MIN_INTERVAL_S = 60.0


class Rebuilds:
    """The rebuild half of Collection (services/indexer/collection.py), which holds the state and the
    locks it uses; kept apart because it is a job of its own."""

    @property
    def rebuilding(self) -> bool:
        return self._rebuild_thread is not None and self._rebuild_thread.is_alive()

    @property
    def _template_file(self) -> Path:
        return self.directory / "template.faiss"

    def install_template(self, data: bytes, factory: str, table: list[tuple[int, float]]) -> tuple[int, str]:
        """Keep a trained template (durably) and rebuild from it in the background; returns the next
        generation and the template's id. A rebuild that fails is retried by maintenance(), also after a
        restart."""
        try:
            template = index_ops.deserialize(data)
        except Exception as exc:
            raise InvalidArgument(f"not a FAISS index: {exc}", "index") from exc
        if template.d != self.config.dim:
            raise InvalidArgument(
                f"template has dimension {template.d}, collection {self.config.dim}", "index"
            )
        if not template.is_trained or template.ntotal != 0:
            raise InvalidArgument("template must be trained and empty", "index")
        if template.metric_type != index_ops.faiss_metric(self.config.faiss_l2):
            raise InvalidArgument(
                f"template metric differs from the collection's ({self.config.metric})", "index"
            )
        if not table:
            raise InvalidArgument("empty", "depth_table")
        with self._apply:
            atomic_write(self._template_file, data)
            meta = {"factory": factory, "table": table, "id": hashlib.sha256(data).hexdigest()[:16]}
            atomic_write(self.directory / "template.json", json.dumps(meta).encode())
            self.rebuild_failures = 0
            self._next_rebuild_at = 0.0
            if not self.rebuilding:  # else maintenance() starts it when the running one ends
                self._start_rebuild()
            return self.generation + 1, meta["id"]

    def _installed_template(self) -> dict | None:
        path = self.directory / "template.json"
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def installed_template_id(self) -> str:
        """Id of the installed template (serving or still being built), "" before training."""
        meta = self._installed_template()
        return meta["id"] if meta else ""

    def _pending_template(self) -> dict | None:
        """The installed template's settings when the serving index is not built from it yet."""
        meta = self._installed_template()
        return meta if meta is not None and meta["id"] != self.template_id else None

    def _start_rebuild(self) -> None:
        self.rebuild_progress = 0.0
        self._rebuild_thread = threading.Thread(
            target=self._rebuild, name=f"rebuild-{self.name}", daemon=True
        )
        self._rebuild_thread.start()

    def needs_compaction(self) -> bool:
        dead = self.items.dead
        return dead >= COMPACT_MIN_DEAD and dead >= COMPACT_DEAD_SHARE * self.items.rows

    def maintenance(self) -> None:
        """Start a due rebuild (a pending template, with back-off after failures) or compaction, else a
        due re-measurement of the recall tables."""
        if self.rebuilding or self.broken or time.monotonic() < self._next_rebuild_at:
            return
        if self.index is not None and time.monotonic() - self._drift_at >= drift.INTERVAL_S:
            self.measure_drift()
        if self._pending_template() is not None or self.needs_compaction():
            with self._apply:
                if not self.rebuilding:
                    self._start_rebuild()
        elif self.recalibration_due() and not (
            self._calibration_thread and self._calibration_thread.is_alive()
        ):
            self._calibration_thread = threading.Thread(
                target=self.recalibrate, name=f"calibrate-{self.name}", daemon=True
            )
            self._calibration_thread.start()

    def _drift_baseline(self, template: dict, index: faiss.Index, store: VectorStore, rows: int) -> float:
        """The template's drift baseline: measured on the first slice built from it and kept with it."""
        if "baseline" in template or not index_ops.is_ivf(index):
            return float(template.get("baseline", 0.0))
        rng = np.random.default_rng(rows)
        sample = store.get(np.sort(rng.choice(rows, size=min(drift.SAMPLE * 4, rows), replace=False)))
        template = dict(template, baseline=drift.mean_distance(IvfDepth(index), sample))
        with self._apply:  # install_template writes it under this lock too: never over a newer template
            installed = self._installed_template()
            if installed is not None and installed["id"] == template["id"]:
                atomic_write(self.directory / "template.json", json.dumps(template).encode())
        return template["baseline"]

    def measure_drift(self) -> None:
        """The slice's drift from its template's baseline, on a uniform sample of live rows (drift.py)."""
        view = self._view()
        if view.ivf_depth is None or self.drift_baseline <= 0:
            return
        live = np.nonzero(view.allowed)[0]
        rng = np.random.default_rng(view.rows)
        sample = view.store.get(np.sort(rng.choice(live, size=min(drift.SAMPLE, len(live)), replace=False)))
        self.drift = drift.ratio(view.ivf_depth, sample, self.drift_baseline)
        self._drift_at = time.monotonic()

    def recalibration_due(self) -> bool:
        written = self.items.rows - self.calibrated_rows
        return (
            self.index is not None
            and written >= max(RECALIBRATE_MIN_ROWS, RECALIBRATE_SHARE * self.items.rows)
            and time.monotonic() - self.calibrated_at >= RECALIBRATE_MIN_INTERVAL_S
        )

    def recalibrate(self) -> None:
        """Measure the recall tables again on the serving index, half the queries from rows written since
        the last measurement, and serve them (unless a rebuild swapped the index meanwhile)."""
        with self._maintenance_lock:
            view = self._view()
            if view.index is None or self.dropped:
                return
            recent = np.arange(min(self.calibrated_rows, view.rows), view.rows)
            table, eps_table = self._measure_tables(
                view.index, view.store, view.rows, view.allowed.copy(), recent, lock=self._index_lock
            )
            with self._apply:
                if table and self.generation == view.generation and self.index is view.index:
                    self.depth_table = table
                    self.eps_table = eps_table
                    self.default_depth = index_ops.depth_for_recall(table, self.config.recall_target)
                self.calibrated_rows, self.calibrated_at = view.rows, time.monotonic()

    def compact(self) -> None:
        """Rebuild now in the calling thread (tests and tools)."""
        self._rebuild()

    def _rebuild(self) -> None:
        begin = time.perf_counter()
        try:
            with self._maintenance_lock:
                self._rebuild_locked()
            self.rebuild_failures = 0
            self.last_rebuild_seconds = time.perf_counter() - begin
        except Exception:
            self.rebuild_failures += 1
            delay = min(600.0, 10.0 * 2 ** (self.rebuild_failures - 1))
            self._next_rebuild_at = time.monotonic() + delay
            log.exception("collection %s: rebuild failed (%d in a row); the previous index keeps serving, "
                          "retry in %.0fs", self.name, self.rebuild_failures, delay)  # fmt: skip
        finally:
            self.rebuild_progress = 0.0

    def _rebuild_locked(self) -> None:
        """Write the live rows into a new vector file (dropping dead rows), fill a new index (from the
        installed template, if any) and swap both in; searches go on against the old ones meanwhile."""
        template = self._installed_template()
        if template is not None:
            template_data, factory, table = (
                self._template_file.read_bytes(),
                template["factory"],
                template["table"],
            )
        else:
            template_data, factory, table = None, "", []
        with self._apply:
            rows = self.items.rows
            live = np.nonzero(self.items.alive(rows))[0]
        epoch = self.epoch + 1
        store = self._new_store(epoch)
        store.path.unlink(missing_ok=True)
        store.open(0)
        index = index_ops.deserialize(template_data) if template_data is not None else None
        log.info("collection %s: rebuilding %s over %d live of %d rows", self.name, factory or "exact",
                 len(live),
                 rows)  # fmt: skip
        store.reserve(len(live), exact=True)
        for start in range(0, len(live), REBUILD_CHUNK):
            if self.dropped:
                log.info("collection %s dropped: rebuild stopped", self.name)
                store.path.unlink(missing_ok=True)
                return
            chunk = self.store.get(live[start : start + REBUILD_CHUNK])
            first = store.append(chunk)
            if index is not None:
                index_ops.add(index, chunk, first)
            self.rebuild_progress = 0.9 * min(start + REBUILD_CHUNK, len(live)) / max(len(live), 1)
        eps_table: list = []
        baseline = 0.0
        if index is not None:
            measured, eps_table = self._measure_tables(index, store, len(live))
            table = measured or table
            baseline = self._drift_baseline(template, index, store, len(live))
        with self._snapshot_lock:
            with self._apply:
                # Rows written during the rebuild are copied now; rows copied earlier that died since
                # stay dead in the new table.
                tail = np.arange(rows, self.items.rows)
                tail = tail[self.items.alive()[rows:]]
                if len(tail):
                    store.reserve(len(tail))
                    chunk = self.store.get(tail)
                    first = store.append(chunk)
                    if index is not None:
                        index_ops.add(index, chunk, first)
                items = self.items.remapped(np.concatenate([live, tail]))
                old_store = self.store
                with self._index_lock:
                    self.store, self.items, self.index, self.epoch = store, items, index, epoch
                    self.calibrated_rows = items.rows
                    if index is not None:
                        self._use_index(index, factory, table, eps_table, len(template_data))
                        self.template_id = template["id"]
                        self.drift_baseline, self.drift, self._drift_at = (
                            baseline,
                            1.0 if baseline else 0.0,
                            0.0,
                        )
                    self.generation += 1
            log.info("collection %s: generation %d (%s, %d rows, default depth %d) swapped in", self.name,
                     self.generation, self.index_name, items.rows, self.default_depth)  # fmt: skip
            self._snapshot_locked()
        old_store.path.unlink(missing_ok=True)  # searches still holding it keep their mapping

    def _measure_tables(
        self,
        index: faiss.Index,
        store: VectorStore,
        rows: int,
        allowed: np.ndarray | None = None,
        recent: np.ndarray | None = None,
        lock=None,
        k: int = 10,
    ) -> tuple[list[tuple[int, float]], list[tuple[float, float, float]]]:
        """recall@k of an index over its whole slice with the default re-rank depth, against exact search
        over the raw vectors: per fixed depth (nprobe or efSearch), and for IVF per eps of the per-query
        rule (depth.py) with the mean lists it probed. The queries are stored vectors, each left out of
        its own results: random ones, and half from `recent` slots when given (recent writes, so the
        tables follow the data as it changes). A training sample is denser per list than the whole
        collection, so the coordinator's table is optimistic; these replace it. Empty for small slices."""
        if rows < TABLE_MIN_VECTORS:
            return [], []
        l2 = self.config.faiss_l2
        lock = lock or contextlib.nullcontext()
        allowed = np.ones(rows, dtype=bool) if allowed is None else allowed[:rows]
        rng = np.random.default_rng(self.generation + rows)
        pool = np.nonzero(allowed)[0]
        slots = np.sort(rng.choice(pool, size=min(TABLE_QUERIES, len(pool)), replace=False))
        groups = [np.ones(len(slots), dtype=bool)]
        if recent is not None and len(recent):
            recent = recent[allowed[recent]]
            half = min(TABLE_QUERIES // 2, len(recent))
            newer = np.sort(rng.choice(recent, size=half, replace=False))
            older = np.setdiff1d(slots, newer)[: TABLE_QUERIES - half]
            slots = np.concatenate([older, newer])
            # Each half must reach a recall for it to count: new data must not hide behind old.
            groups = [np.arange(len(slots)) < len(older), np.arange(len(slots)) >= len(older)]
        queries = store.get(slots)
        fetch_block = lambda s, e: store.get(np.arange(s, e))  # noqa: E731
        _, truth = search_ops.exact_topk(
            queries, fetch_block, rows, allowed, k + 1, self.search_budget_bytes, l2
        )
        truth = np.array([[s for s in row if s != q][:k] for row, q in zip(truth, slots)])
        rerank = self.config.rerank_depth(k)
        packed = search_ops.bitmap(allowed)

        def recall_of(candidates: np.ndarray) -> float:
            _, found = search_ops.rerank(queries, candidates, store.get, k + 1, self.search_budget_bytes, l2)
            found = np.array([[s for s in row if s != q][:k] for row, q in zip(found, slots)])
            return min(search_ops.recall_at_k(found[g], truth[g], k) for g in groups if g.any())

        table = []
        for depth in index_ops.depth_candidates(index):
            if depth > index_ops.max_depth(index):
                break
            params = search_ops.search_params(index, packed, depth)
            with lock:
                _, candidates = index.search(queries, rerank + 1, params=params)
            table.append((depth, recall_of(candidates)))
            if table[-1][1] >= 0.999:
                break
        eps_table = []
        if index_ops.is_ivf(index):
            model = IvfDepth(index)
            ceiling = min(model.nlist, MAX_ADAPTIVE_LISTS)
            probes = model.probes(queries, ceiling)
            for eps in EPS_LADDER:
                depths = model.depths(probes, eps, floor=1, ceiling=ceiling)
                with lock:
                    candidates = model.search(probes, depths, rerank + 1, search_ops.ivf_params(packed))
                eps_table.append((eps, recall_of(candidates), float(depths.mean())))
                if eps_table[-1][1] >= 0.999 or depths.min() >= ceiling:
                    break
        log.info("collection %s: recall@%d on this slice per depth %s; per eps (recall, mean lists) %s",
                 self.name, k, table, [(e, round(r, 3), round(d, 1)) for e, r, d in eps_table])  # fmt: skip
        return table, eps_table
