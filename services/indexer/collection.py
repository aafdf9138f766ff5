"""One collection's slice on a shard: write-ahead log, raw vectors, FAISS index, snapshots, rebuilds."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from semsearch.errors import FailedPrecondition, InvalidArgument, NotFound
from services.indexer import index_ops
from services.indexer.config import CollectionConfig
from services.indexer.store import VectorStore
from services.indexer.wal import WriteAheadLog

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_ID_BYTES = 512
REBUILD_CHUNK = 65_536
# The recall table is re-measured on the rebuilt slice with this many stored vectors as queries.
TABLE_QUERIES = 200
TABLE_MIN_VECTORS = 5_000
_UPSERT, _DELETE = b"U", b"D"


@dataclass
class SearchOutcome:
    """Results of a batch of queries: scores and slots [q, k] (slot -1 = no hit)."""

    scores: np.ndarray
    slots: np.ndarray
    generation: int
    data_version: int
    index: str
    nprobe: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Collection:
    """Thread-safe: writes are serialised by a write lock (log order = apply order); FAISS is
    never searched while it is mutated (index lock); a rebuild fills a private index and swaps it
    in under both locks."""

    def __init__(self, config: CollectionConfig, directory: Path, *, fsync: bool = True) -> None:
        self.config = config
        self.directory = Path(directory)
        self.store = VectorStore(self.directory / f"vectors.{config.raw_dtype}", config.dim, config.raw_dtype)
        self.wal = WriteAheadLog(self.directory / "wal", fsync=fsync)
        self._write_lock = threading.RLock()
        self._index_lock = threading.Lock()
        self.ids: list[str] = []
        self.slot_of: dict[str, int] = {}
        self.metadata: list[str | None] = []
        self._alive = np.zeros(0, dtype=bool)
        self.count = 0
        self.index: faiss.Index = faiss.IndexFlatIP(config.dim)
        self.trained = False
        self.factory = ""
        self.nprobe_table: list[tuple[int, float]] = []
        self.default_nprobe = 1
        self.generation = 0
        self.lsn = 0
        self.snapshot_lsn = 0
        self.snapshot_generation = 0
        self.rebuild_progress = 0.0
        self._rebuild_thread: threading.Thread | None = None
        self.last_rebuild_seconds = 0.0
        self.template_bytes = 0

    # --- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def data_version(self) -> int:
        """Changes on every acknowledged write and every index swap (cache keys use it)."""
        return self.lsn + self.generation

    @property
    def rebuilding(self) -> bool:
        return self._rebuild_thread is not None and self._rebuild_thread.is_alive()

    @property
    def index_name(self) -> str:
        return self.factory if self.trained else "exact"

    # --- load / snapshot ----------------------------------------------------------------------

    def load(self) -> None:
        """Load the latest snapshot, then replay the log records written after it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self._read_current()
        if manifest is None:
            self.store.open(0)
        else:
            snap = self.directory / manifest["dir"]
            self.store.open(manifest["rows"])
            self.ids = json.loads((snap / "ids.json").read_text())
            self.metadata = json.loads((snap / "metadata.json").read_text())
            self._alive = np.load(snap / "alive.npy")
            self.slot_of = {item_id: slot for slot, item_id in enumerate(self.ids) if self._alive[slot]}
            self.count = int(self._alive[: manifest["rows"]].sum())
            self.generation = self.snapshot_generation = manifest["generation"]
            self.lsn = self.snapshot_lsn = manifest["lsn"]
            self.trained = manifest["trained"]
            if self.trained:
                self.index = faiss.read_index(str(snap / "index.faiss"))
                self.factory = manifest["factory"]
                self.nprobe_table = [tuple(x) for x in manifest["nprobe_table"]]
                self.template_bytes = manifest["template_bytes"]
                self.default_nprobe = index_ops.nprobe_for_recall(
                    self.nprobe_table, self.config.recall_target
                )
            else:
                self._fill_flat()
        self.wal.open()
        replayed = 0
        for lsn, payload in self.wal.replay(self.lsn):
            self._apply(payload)
            self.lsn = lsn
            replayed += 1
        log.info(
            "collection %s: %d vectors, generation %d, index %s, lsn %d (%d replayed from the log)",
            self.name, self.count, self.generation, self.index_name, self.lsn, replayed,
        )  # fmt: skip

    def _fill_flat(self) -> None:
        self.index = faiss.IndexFlatIP(self.config.dim)
        for start in range(0, self.store.rows, REBUILD_CHUNK):
            self.index.add(self.store.get(np.arange(start, min(start + REBUILD_CHUNK, self.store.rows))))

    def _read_current(self) -> dict | None:
        current = self.directory / "CURRENT"
        if not current.exists():
            return None
        manifest = json.loads((self.directory / current.read_text().strip() / "manifest.json").read_text())
        manifest["dir"] = current.read_text().strip()
        return manifest

    def snapshot(self) -> bool:
        """Write index, id map, metadata and log position atomically; drop covered log segments.
        Returns False when nothing changed since the last snapshot."""
        with self._write_lock:
            unchanged = self.lsn == self.snapshot_lsn and self.generation == self.snapshot_generation
            if unchanged and (self.directory / "CURRENT").exists():
                return False
            self.store.flush()
            name = f"snap-{self.lsn:020d}-{self.generation:06d}"
            tmp = self.directory / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            rows = self.store.rows
            _write_file(tmp / "ids.json", json.dumps(self.ids).encode())
            _write_file(tmp / "metadata.json", json.dumps(self.metadata).encode())
            with open(tmp / "alive.npy", "wb") as f:
                np.save(f, self._alive[:rows])
                f.flush()
                os.fsync(f.fileno())
            if self.trained:
                faiss.write_index(self.index, str(tmp / "index.faiss"))
            manifest = {
                "lsn": self.lsn,
                "rows": rows,
                "generation": self.generation,
                "trained": self.trained,
                "factory": self.factory,
                "nprobe_table": self.nprobe_table,
                "template_bytes": self.template_bytes,
                "dim": self.config.dim,
            }
            _write_file(tmp / "manifest.json", json.dumps(manifest).encode())
            _fsync_dir(tmp)
            os.replace(tmp, self.directory / name)
            _write_file(self.directory / "CURRENT.tmp", name.encode())
            os.replace(self.directory / "CURRENT.tmp", self.directory / "CURRENT")
            _fsync_dir(self.directory)
            self.snapshot_lsn = self.lsn
            self.snapshot_generation = self.generation
        for old in self.directory.glob("snap-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        self.wal.truncate_before(self.snapshot_lsn)
        return True

    def close(self) -> None:
        if self._rebuild_thread is not None:
            self._rebuild_thread.join()
        self.wal.close()
        self.store.close()

    # --- writes -------------------------------------------------------------------------------

    def _validate_vectors(self, vectors: np.ndarray, field: str) -> np.ndarray:
        if vectors.ndim != 2 or vectors.shape[1] != self.config.dim:
            raise InvalidArgument(
                f"expected {self.config.dim} values per vector, got "
                f"{vectors.shape[1] if vectors.ndim == 2 else vectors.shape}",
                field,
            )
        if not np.isfinite(vectors).all():
            bad = int(np.nonzero(~np.isfinite(vectors).all(axis=1))[0][0])
            raise InvalidArgument(f"vector {bad} contains NaN or Inf", field)
        norms = np.linalg.norm(vectors, axis=1)
        if self.config.normalize == "normalize":
            if (norms == 0).any():
                raise InvalidArgument(f"vector {int(np.argmin(norms))} is all zeros", field)
            vectors = vectors / norms[:, None]
        elif self.config.normalize == "unit" and (np.abs(norms - 1) > 1e-3).any():
            bad = int(np.argmax(np.abs(norms - 1)))
            raise InvalidArgument(f"vector {bad} has norm {norms[bad]:.4f}, the collection needs 1", field)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def upsert(
        self, ids: Sequence[str], vectors: np.ndarray, metadata: Sequence[dict[str, str]]
    ) -> tuple[int, int]:
        """Insert or replace items; durable (fsync'd log) and searchable on return.
        Returns (lsn, data_version)."""
        if not ids:
            raise InvalidArgument("no items", "items")
        for i, item_id in enumerate(ids):
            if not item_id or len(item_id.encode("utf-8")) > MAX_ID_BYTES:
                raise InvalidArgument(f"must be 1..{MAX_ID_BYTES} bytes", f"items[{i}].id")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("duplicate ids in one batch", "items.id")
        vectors = self._validate_vectors(np.asarray(vectors, dtype=np.float32), "items.vector")
        metas = []
        for i, meta in enumerate(metadata):
            encoded = json.dumps(dict(meta), ensure_ascii=False, separators=(",", ":")) if meta else None
            if encoded and len(encoded) > self.config.max_metadata_bytes:
                raise InvalidArgument(
                    f"{len(encoded)} bytes, more than {self.config.max_metadata_bytes}",
                    f"items[{i}].metadata",
                )
            metas.append(encoded)
        header = json.dumps({"ids": list(ids), "metadata": metas}).encode()
        payload = _UPSERT + struct.pack("<I", len(header)) + header + vectors.tobytes()
        with self._write_lock:
            self.lsn = self.wal.append([payload])
            self._apply_upsert(list(ids), vectors, metas)
            return self.lsn, self.data_version

    def delete(self, ids: Sequence[str], ignore_missing: bool = False) -> tuple[int, int, int]:
        """Delete items by id; returns (deleted count, lsn, data_version)."""
        if not ids:
            raise InvalidArgument("no ids", "ids")
        with self._write_lock:
            missing = [i for i in ids if i not in self.slot_of]
            if missing and not ignore_missing:
                shown = ", ".join(repr(m) for m in missing[:5])
                raise NotFound(f"{len(missing)} unknown id(s): {shown}; nothing deleted", "ids")
            present = list(dict.fromkeys(i for i in ids if i in self.slot_of))
            if not present:
                return 0, self.lsn, self.data_version
            payload = _DELETE + json.dumps({"ids": present}).encode()
            self.lsn = self.wal.append([payload])
            self._apply_delete(present)
            return len(present), self.lsn, self.data_version

    def _apply(self, payload: bytes) -> None:
        kind = payload[:1]
        if kind == _UPSERT:
            (size,) = struct.unpack_from("<I", payload, 1)
            header = json.loads(payload[5 : 5 + size])
            vectors = np.frombuffer(payload[5 + size :], dtype=np.float32).reshape(-1, self.config.dim)
            self._apply_upsert(header["ids"], vectors, header["metadata"])
        elif kind == _DELETE:
            self._apply_delete(json.loads(payload[1:])["ids"])
        else:
            raise RuntimeError(f"collection {self.name}: unknown log record kind {kind!r}")

    def _grow_alive(self, rows: int) -> None:
        if rows > len(self._alive):
            grown = np.zeros(max(rows, 2 * len(self._alive), 1024), dtype=bool)
            grown[: len(self._alive)] = self._alive
            self._alive = grown

    def _apply_upsert(self, ids: list[str], vectors: np.ndarray, metas: list[str | None]) -> None:
        first = self.store.append(vectors)
        slots = np.arange(first, first + len(ids), dtype=np.int64)
        self._grow_alive(first + len(ids))
        with self._index_lock:
            if self.trained:
                self.index.add_with_ids(vectors, slots)
            else:
                self.index.add(vectors)
        self.ids.extend(ids)
        self.metadata.extend(metas)
        for item_id, slot in zip(ids, slots.tolist()):
            old = self.slot_of.get(item_id)
            if old is None:
                self.count += 1
            else:
                self._alive[old] = False
            self.slot_of[item_id] = slot
        self._alive[first : first + len(ids)] = True

    def _apply_delete(self, ids: list[str]) -> None:
        for item_id in ids:
            slot = self.slot_of.pop(item_id, None)
            if slot is not None:
                self._alive[slot] = False
                self.count -= 1

    # --- reads --------------------------------------------------------------------------------

    def validate_queries(self, queries: np.ndarray) -> np.ndarray:
        if len(queries) == 0:
            raise InvalidArgument("no queries", "queries")
        queries = self._validate_vectors(np.asarray(queries, dtype=np.float32), "queries")
        return queries

    def resolve_nprobe(self, nprobe: int, recall_target: float) -> int:
        if not self.trained:
            return 0
        if nprobe:
            return min(nprobe, index_ops.nlist(self.index))
        if recall_target:
            return index_ops.nprobe_for_recall(self.nprobe_table, recall_target)
        return self.default_nprobe

    def search(self, queries: np.ndarray, k: int, nprobe: int, rerank_depth: int) -> SearchOutcome:
        """Top-k of validated queries [q, d]: IVF candidates re-ranked exactly against the raw
        vectors, or exact search before the index is trained. Deleted items never appear."""
        alive_share = max(self.count, 1) / max(self.store.rows, 1)
        with self._index_lock:
            index, trained, generation = self.index, self.trained, self.generation
            if trained:
                depth = min(
                    int(np.ceil(max(rerank_depth, k) / max(alive_share, 0.25))), 4 * max(rerank_depth, k)
                )
                index_ops.set_nprobe(index, nprobe)
                _, candidates = index.search(queries, depth)
            else:
                depth = min(int(np.ceil(k / max(alive_share, 0.05))) + 8, max(self.store.rows, 1))
                scores, candidates = index.search(queries, depth)
        candidates = np.where(candidates >= 0, candidates, -1)
        dead = candidates >= 0
        dead[dead] = ~self._alive[candidates[dead]]
        candidates[dead] = -1
        if trained:
            scores, slots = index_ops.rerank(queries, candidates, self.store.get, k)
        else:
            scores = np.where(candidates >= 0, scores, -np.inf).astype(np.float32)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(scores, order, axis=1)
            slots = np.take_along_axis(candidates, order, axis=1)
            if slots.shape[1] < k:
                pad = k - slots.shape[1]
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
                slots = np.pad(slots, ((0, 0), (0, pad)), constant_values=-1)
        return SearchOutcome(scores, slots, generation, self.data_version, self.index_name, nprobe)

    def item(self, slot: int) -> tuple[str, dict[str, str]]:
        meta = self.metadata[slot]
        return self.ids[slot], (json.loads(meta) if meta else {})

    def get(self, ids: Sequence[str]) -> tuple[list[tuple[str, np.ndarray, dict[str, str]]], list[str]]:
        """Stored items (id, vector, metadata) and the ids that are not stored."""
        found, missing = [], []
        for item_id in ids:
            slot = self.slot_of.get(item_id)
            if slot is None:
                missing.append(item_id)
            else:
                _, meta = self.item(slot)
                found.append((item_id, self.store.get(np.array([slot]))[0], meta))
        return found, missing

    def sample(self, n: int, seed: int) -> np.ndarray:
        """Up to n stored vectors chosen uniformly at random (float32 [m, d])."""
        alive = np.nonzero(self._alive[: self.store.rows])[0]
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(alive, size=min(n, len(alive)), replace=False)) if len(alive) else alive
        return self.store.get(chosen)

    # --- rebuild ------------------------------------------------------------------------------

    def install_template(self, data: bytes, factory: str, table: list[tuple[int, float]]) -> int:
        """Start a background rebuild from a trained template; returns the next generation."""
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
        if template.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise InvalidArgument("template must use the inner-product metric", "index")
        if not table:
            raise InvalidArgument("empty", "nprobe_table")
        with self._write_lock:
            if self.rebuilding:
                raise FailedPrecondition(f"collection {self.name} is already rebuilding")
            self.rebuild_progress = 0.0
            self._rebuild_thread = threading.Thread(
                target=self._rebuild,
                args=(template, factory, table),
                name=f"rebuild-{self.name}",
                daemon=True,
            )
            self._rebuild_thread.start()
            return self.generation + 1

    def _add_rows(self, index: faiss.Index, start: int, end: int) -> None:
        slots = np.arange(start, end, dtype=np.int64)
        keep = slots[self._alive[start:end]]
        if len(keep):
            index.add_with_ids(self.store.get(keep), keep)

    def _rebuild(self, template: faiss.Index, factory: str, table: list[tuple[int, float]]) -> None:
        begin = time.perf_counter()
        template_bytes = len(index_ops.serialize(template))
        try:
            rows = self.store.rows
            log.info("collection %s: rebuilding %s over %d rows", self.name, factory, rows)
            for start in range(0, rows, REBUILD_CHUNK):
                self._add_rows(template, start, min(start + REBUILD_CHUNK, rows))
                self.rebuild_progress = 0.95 * min(start + REBUILD_CHUNK, rows) / max(rows, 1)
            table = self._measure_table(template, rows) or table
            with self._write_lock:
                # Writes that arrived during the rebuild went to the old index and the store.
                self._add_rows(template, rows, self.store.rows)
                with self._index_lock:
                    self.index = template
                    self.trained = True
                    self.factory = factory
                    self.nprobe_table = [(int(n), float(r)) for n, r in table]
                    self.default_nprobe = index_ops.nprobe_for_recall(
                        self.nprobe_table, self.config.recall_target
                    )
                    self.template_bytes = template_bytes
                    self.generation += 1
                self.rebuild_progress = 1.0
            self.last_rebuild_seconds = time.perf_counter() - begin
            log.info(
                "collection %s: generation %d (%s, default nprobe %d) swapped in after %.1fs",
                self.name, self.generation, factory, self.default_nprobe, self.last_rebuild_seconds,
            )  # fmt: skip
            self.snapshot()
        except Exception:
            log.exception("collection %s: rebuild failed; the previous index keeps serving", self.name)
            self.rebuild_progress = 0.0

    def _measure_table(self, index: faiss.Index, rows: int, k: int = 10) -> list[tuple[int, float]]:
        """recall@k per nprobe of the rebuilt index over this shard's whole slice, with the default
        re-rank depth, against exact search over the raw vectors; the queries are stored vectors
        (each left out of its own results). The coordinator's table comes from a training sample,
        which is denser per list than the full collection and so optimistic (at 1M vectors it
        promised 0.967 at nprobe 4 where the index gave 0.949). Empty for small slices."""
        alive = np.nonzero(self._alive[:rows])[0]
        if len(alive) < TABLE_MIN_VECTORS:
            return []
        rng = np.random.default_rng(self.generation + 1)
        slots = np.sort(rng.choice(alive, size=TABLE_QUERIES, replace=False))
        queries = self.store.get(slots)
        best_scores = np.full((len(slots), k + 1), -np.inf, dtype=np.float32)
        best_slots = np.full((len(slots), k + 1), -1, dtype=np.int64)
        for start in range(0, rows, REBUILD_CHUNK):
            end = min(start + REBUILD_CHUNK, rows)
            chunk = self.store.get(np.arange(start, end))
            chunk[~self._alive[start:end]] = 0.0
            scores, found = index_ops.exact_topk(queries, chunk, k + 1)
            merged_scores = np.concatenate([best_scores, scores], axis=1)
            merged_slots = np.concatenate([best_slots, np.where(found >= 0, found + start, -1)], axis=1)
            order = np.argsort(-merged_scores, axis=1)[:, : k + 1]
            best_scores = np.take_along_axis(merged_scores, order, axis=1)
            best_slots = np.take_along_axis(merged_slots, order, axis=1)
        truth = np.array([[s for s in row if s != q][:k] for row, q in zip(best_slots, slots)])
        depth = self.config.rerank_depth(k)
        table = []
        for nprobe in index_ops.NPROBE_CANDIDATES:
            if nprobe > index_ops.nlist(index):
                break
            index_ops.set_nprobe(index, nprobe)
            _, candidates = index.search(queries, depth + 1)
            _, found = index_ops.rerank(queries, candidates, self.store.get, k + 1)
            found = np.array([[s for s in row if s != q][:k] for row, q in zip(found, slots)])
            table.append((nprobe, index_ops.recall_at_k(found, truth, k)))
            if table[-1][1] >= 0.999:
                break
        log.info("collection %s: nprobe -> recall@%d on this slice: %s", self.name, k, table)
        return table

    def index_bytes(self) -> int:
        """Memory of the serving index (the flat copy of all rows before training)."""
        if self.trained:
            return index_ops.index_bytes(self.index, self.template_bytes)
        return self.store.rows * self.config.dim * 4
