"""One collection's slice on a shard: writes through the log, search, snapshots, rebuilds, compaction.

Lock order (never taken the other way round): maintenance -> snapshot -> append -> apply -> index.
- append: orders log records (LSN order); held only while a record is written, not while it is
  fsync'd, so concurrent writers share fsyncs (group commit).
- apply (a condition): the in-memory state; records are applied strictly in LSN order after their
  fsync, so a write is durable and searchable when it returns.
- index: FAISS is never searched while it is mutated.
- snapshot: one snapshot at a time, from capture to publication (rebuild swaps hold it too).
- maintenance: one rebuild or compaction at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from semsearch.core import filters
from semsearch.core.collections import CollectionConfig
from semsearch.core.durable import ensure_dir
from semsearch.core.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.indexer import index_ops, records, snapshots
from services.indexer.fields import FieldColumns
from services.indexer.items import ItemTable
from services.indexer.payloads import PayloadStore
from services.indexer.rebuild import Rebuilds
from services.indexer.searches import EXACT_FILTERED_MAX, Searches
from services.indexer.store import VectorStore
from services.indexer.wal import WriteAheadLog

log = logging.getLogger(__name__)

MAX_K = 1000
MAX_ID_BYTES = 512


def safe_normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows of float32 [n, d] without overflow (1e20 values square to inf in float32):
    scale by the largest magnitude first, then normalise in float64. Zero rows stay zero."""
    scale = np.abs(vectors).max(axis=1, keepdims=True).astype(np.float64)
    scale[scale == 0] = 1.0
    scaled = vectors / scale
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (scaled / norms).astype(np.float32)


class Collection(Rebuilds, Searches):
    def __init__(
        self,
        config: CollectionConfig,
        directory: Path,
        *,
        fsync: bool = True,
        search_budget_bytes: int = 256 << 20,
        min_free_bytes: int = 256 << 20,
    ) -> None:
        self.config = config
        self.directory = Path(directory)
        self.fsync = fsync
        self.search_budget_bytes = search_budget_bytes
        self.min_free_bytes = min_free_bytes
        self.wal = WriteAheadLog(self.directory / "wal", fsync=fsync)
        self.payloads: PayloadStore | None = None  # opened by load()
        self._append_lock = threading.Lock()
        self._apply = threading.Condition()
        self._index_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._maintenance_lock = threading.Lock()
        # Applied state (guarded by _apply).
        self.epoch = 0
        self.store = self._new_store(0)
        self.items = ItemTable(self.config.field_types)
        self.index: faiss.Index | None = None  # None: exact search over the raw vectors
        self.factory = ""
        self.depth_table: list[tuple[int, float]] = []
        self.eps_table: list[tuple[float, float, float]] = []
        self.ivf_depth = None  # the per-query depth rule of an IVF index
        self.default_depth = 0
        # Added to the calibrated eps by the recall monitor when live queries get less recall than asked.
        self.eps_extra = 0.0
        self.monitor = None  # the shard's RecallMonitor, when it runs one
        self.exact_filter_max = EXACT_FILTERED_MAX
        self.template_bytes = 0
        self.template_id = ""
        self.generation = 0
        self.lsn = 0
        self.broken: str | None = None
        self.dropped = False
        self._writes_in_flight = 0
        # Snapshot and rebuild bookkeeping.
        self.snapshot_lsn = -1
        self.snapshot_generation = -1
        self.rebuild_progress = 0.0
        self.last_rebuild_seconds = 0.0
        self.rebuild_failures = 0
        self._next_rebuild_at = 0.0
        self._rebuild_thread: threading.Thread | None = None
        self._calibration_thread: threading.Thread | None = None
        self.calibrated_rows = 0  # rows when the recall tables were last measured, and when
        self.calibrated_at = 0.0
        # Drift of the slice from what its index was built on (drift.py): the template's baseline, the
        # last measured ratio (0: unknown) and when it was measured.
        self.drift_baseline = 0.0
        self.drift = 0.0
        self._drift_at = 0.0

    # --- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def trained(self) -> bool:
        return self.index is not None

    @property
    def index_name(self) -> str:
        return self.factory if self.trained else "exact"

    @property
    def count(self) -> int:
        return self.items.count

    @property
    def data_version(self) -> int:
        """Changes on every acknowledged write and every index swap (cache keys use it)."""
        return self.lsn + self.generation

    def _new_store(self, epoch: int) -> VectorStore:
        return VectorStore(self.directory / f"vectors-{epoch:06d}.{self.config.raw_dtype}", self.config.dim,
                           self.config.raw_dtype)  # fmt: skip

    # --- load ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the published snapshot, replay the log after it, and resume a pending rebuild."""
        ensure_dir(self.directory)
        self.payloads = PayloadStore(self.directory / "items.sqlite")
        manifest = snapshots.read_current(self.directory)
        if manifest is None:
            self.store.open(0)
        else:
            snap = self.directory / manifest["dir"]
            self.epoch = manifest["epoch"]
            self.store = self._new_store(self.epoch)
            self.store.open(manifest["rows"])
            self.items = ItemTable.load(snap, manifest["rows"], self.config.field_types)
            if self.items.fields is None:  # a snapshot without field columns: from the payload store
                self.items.fields = FieldColumns(self.config.field_types)
                stored = self.payloads.metadata(self.items.ids)
                encoded = [json.dumps(stored[i]) if i in stored else None for i in self.items.ids]
                self.items.fields.put(0, encoded, self.items.rows)
            self.generation = self.snapshot_generation = manifest["generation"]
            self.lsn = self.snapshot_lsn = manifest["lsn"]
            if manifest["trained"]:
                self._use_index(
                    faiss.read_index(str(snap / "index.faiss")), manifest["factory"], manifest["depth_table"],
                    manifest.get("eps_table", []), manifest["template_bytes"],
                )  # fmt: skip
                self.template_id = manifest["template_id"]
                installed = self._installed_template()
                if installed is not None and installed["id"] == self.template_id:
                    self.drift_baseline = float(installed.get("baseline", 0.0))
            snapshots.remove_unpublished(self.directory, keep=manifest["dir"])
        for stale in self.directory.glob("vectors-*"):
            if stale != self.store.path:
                stale.unlink()  # a compaction that never published
        self.wal.open()
        replayed = 0
        for lsn, payload in self.wal.replay(self.lsn):
            self._apply_record(records.decode(payload, self.config.dim))
            self.lsn = lsn
            replayed += 1
        self.calibrated_rows = self.items.rows
        log.info(
            "collection %s: %d vectors (%d rows), generation %d, index %s, lsn %d (%d replayed from the log)",
            self.name, self.count, self.items.rows, self.generation, self.index_name, self.lsn, replayed,
        )  # fmt: skip

    def validate_vectors(self, vectors: np.ndarray, field: str) -> np.ndarray:
        """float32 [n, dim], finite, normalised per the collection's policy."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.config.dim:
            got = vectors.shape[1] if vectors.ndim == 2 else vectors.shape
            raise InvalidArgument(f"expected {self.config.dim} values per vector, got {got}", field)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            raise InvalidArgument(f"vector {int(np.argmin(finite))} contains NaN or Inf", field)
        if self.config.normalize:
            zero = ~vectors.any(axis=1)
            if zero.any():
                raise InvalidArgument(f"vector {int(np.argmax(zero))} is all zeros", field)
            vectors = safe_normalize(vectors)
        elif not np.isfinite(np.einsum("ij,ij->i", vectors, vectors)).all():
            raise InvalidArgument("values too large: their squares overflow float32", field)
        return np.ascontiguousarray(vectors)

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        metadata: Sequence[dict[str, str]],
        payloads: Sequence[bytes | None] | None = None,
    ) -> tuple[int, int]:
        """Insert or replace items (with optional small payloads: thumbnails, texts); durable (fsync'd
        log) and searchable on return. Returns (lsn, data_version)."""
        if not ids:
            raise InvalidArgument("no items", "items")
        for i, item_id in enumerate(ids):
            if not item_id or len(item_id.encode("utf-8")) > MAX_ID_BYTES:
                raise InvalidArgument(f"must be 1..{MAX_ID_BYTES} bytes", f"items[{i}].id")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("duplicate ids in one batch", "items.id")
        vectors = self.validate_vectors(vectors, "items.vector")
        metas = []
        fields = self.config.field_types
        for i, meta in enumerate(metadata):
            wrong = filters.metadata_error(fields, meta) if fields and meta else None
            if wrong:
                raise InvalidArgument(wrong[1], f"items[{i}].metadata.{wrong[0]}")
            encoded = json.dumps(dict(meta), ensure_ascii=False, separators=(",", ":")) if meta else None
            if encoded and len(encoded.encode()) > self.config.max_metadata_bytes:
                raise InvalidArgument(
                    f"{len(encoded.encode())} bytes, more than {self.config.max_metadata_bytes}",
                    f"items[{i}].metadata",
                )
            metas.append(encoded)
        payloads = list(payloads) if payloads is not None else [None] * len(ids)
        if len(payloads) != len(ids):
            raise InvalidArgument(f"{len(payloads)} payloads for {len(ids)} items", "items.payload")
        record = records.Upsert(list(ids), metas, vectors, [p or None for p in payloads])
        with self._write():
            lsn = self._log(records.encode(record), reserve_rows=len(ids))
            self._apply_in_order(lsn, record)
        return lsn, lsn + self.generation

    def delete(self, ids: Sequence[str]) -> tuple[int, list[str], int, int]:
        """Delete items by id; returns (deleted, ids not stored, lsn, data_version)."""
        if not ids:
            raise InvalidArgument("no ids", "ids")
        record = records.Delete(list(dict.fromkeys(ids)))
        with self._write():
            lsn = self._log(records.encode(record), reserve_rows=0)
            deleted, missing = self._apply_in_order(lsn, record)
        return deleted, missing, lsn, lsn + self.generation

    @contextlib.contextmanager
    def _write(self):
        """Count a write in flight (drop() waits for them) and refuse it once the collection is dropped."""
        with self._apply:
            if self.dropped:
                raise NotFound(f"collection {self.name!r} was dropped", "collection")
            self._writes_in_flight += 1
        try:
            yield
        finally:
            with self._apply:
                self._writes_in_flight -= 1
                self._apply.notify_all()

    def drop(self, timeout_s: float = 60.0) -> None:
        """Refuse new writes, let the ones in flight finish, stop a rebuild, close everything (the
        caller deletes the folder)."""
        with self._apply:
            self.dropped = True
            self._apply.wait_for(lambda: self._writes_in_flight == 0, timeout_s)
        if self._rebuild_thread is not None:
            self._rebuild_thread.join(timeout_s)
        self.close()

    def _check_writable(self, nbytes: int) -> None:
        if self.dropped:
            raise NotFound(f"collection {self.name!r} was dropped", "collection")
        if self.broken:
            raise Unavailable(
                f"collection {self.name} stopped taking writes on this shard ({self.broken}); "
                "searches go on, "
                "and restarting the shard replays its log"
            )
        free = shutil.disk_usage(self.directory).free
        if free - nbytes < self.min_free_bytes:
            raise ResourceExhausted(
                f"the shard's disk is nearly full ({free >> 20} MB free, "
                f"{self.min_free_bytes >> 20} MB are kept "
                "in reserve): writes are refused until space is freed; searches go on"
            )

    def _log(self, payload: bytes, *, reserve_rows: int) -> int:
        """Write a record and wait for its fsync (shared with concurrent writers); returns its LSN."""
        self._check_writable(len(payload) + reserve_rows * self.store.row_bytes)
        with self._append_lock:
            try:
                self.store.reserve(reserve_rows)
            except OSError as exc:
                raise ResourceExhausted(
                    f"no disk space for {reserve_rows} more vectors: {exc.strerror}"
                ) from exc
            try:
                lsn = self.wal.write([payload])
            except OSError as exc:
                self.store.cancel(reserve_rows)
                if self.wal.broken:
                    self._mark_broken(f"the write-ahead log failed: {self.wal.broken}")
                raise ResourceExhausted(f"the write-ahead log could not be written: {exc.strerror}") from exc
        try:
            self.wal.sync(lsn)
        except Exception as exc:
            self._mark_broken(f"the write-ahead log failed to fsync: {exc}")
            raise Unavailable(f"collection {self.name}: the write could not be made durable ({exc})") from exc
        return lsn

    def _mark_broken(self, why: str) -> None:
        with self._apply:
            if not self.broken:
                log.error("collection %s: %s; writes are refused until the shard restarts", self.name, why)
                self.broken = why
            self._apply.notify_all()

    def _apply_in_order(self, lsn: int, record: records.Upsert | records.Delete):
        with self._apply:
            while self.lsn < lsn - 1 and not self.broken and not self.dropped:
                self._apply.wait()
            if self.dropped:
                raise NotFound(f"collection {self.name!r} was dropped", "collection")
            if self.broken:
                raise Unavailable(
                    f"collection {self.name} stopped taking writes on this shard ({self.broken})"
                )
            try:
                result = self._apply_record(record)
            except Exception as exc:
                # The record is in the log, but memory does not hold it: refuse writes until a restart
                # replays the log, rather than let slots and ids drift apart.
                log.exception("collection %s: applying log record %d failed", self.name, lsn)
                self.broken = f"applying log record {lsn} failed: {type(exc).__name__}"
                self._apply.notify_all()
                raise Unavailable(
                    f"collection {self.name}: the write is in the log but could not be applied; the shard "
                    "takes no more writes until it restarts"
                ) from exc
            self.lsn = lsn
            self._apply.notify_all()
            return result

    def _apply_record(self, record: records.Upsert | records.Delete):
        """Apply one logged record to the store, the index and the item table (apply lock held)."""
        if isinstance(record, records.Delete):
            self.payloads.remove(record.ids)
            return self.items.remove(record.ids)
        first = self.store.append(record.vectors)
        if self.index is not None:
            with self._index_lock:
                index_ops.add(self.index, record.vectors, first)
        self.payloads.put(record.ids, record.metadata, record.payloads)
        return self.items.add(first, record.ids, record.metadata)

    # --- reads --------------------------------------------------------------------------------

    def get(
        self, ids: Sequence[str], *, payloads: bool = False
    ) -> tuple[list[tuple[str, np.ndarray, dict[str, str], bytes | None]], list[str]]:
        """Stored items (id, vector, metadata, payload when asked) and the ids that are not stored."""
        found, missing = [], []
        with self._apply:
            slots = {item_id: self.items.slot_of.get(item_id) for item_id in dict.fromkeys(ids)}
            present = [i for i, slot in slots.items() if slot is not None]
            vectors = self.store.get(np.array([slots[i] for i in present], dtype=np.int64))
        metadata = self.payloads.metadata(present)
        blobs = self.payloads.payloads(present) if payloads else {}
        for item_id, slot in slots.items():
            if slot is None:
                missing.append(item_id)
        for item_id, vector in zip(present, vectors):
            found.append((item_id, vector, metadata.get(item_id, {}), blobs.get(item_id)))
        return found, missing

    # --- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> bool:
        """Publish a snapshot of the applied state and drop the log segments it covers. Returns False
        when nothing changed since the last one."""
        with self._snapshot_lock:
            return self._snapshot_locked()

    def _snapshot_locked(self) -> bool:
        with self._apply:
            if self.lsn == self.snapshot_lsn and self.generation == self.snapshot_generation:
                return False
            lsn, generation, rows, store = self.lsn, self.generation, self.items.rows, self.store
            table = self.items.snapshot_copy(rows)
            index_bytes = None
            if self.index is not None:
                with self._index_lock:
                    index_bytes = index_ops.serialize(self.index)
            manifest = {
                "lsn": lsn, "rows": rows, "epoch": self.epoch, "generation": generation,
                "trained": self.index is not None, "factory": self.factory, "depth_table": self.depth_table,
                "eps_table": self.eps_table,
                "template_bytes": self.template_bytes, "template_id": self.template_id,
                "dim": self.config.dim,
            }  # fmt: skip
            # Metadata and payloads applied up to `lsn` become durable before the log is cut there (the
            # payload store's writer is used under this lock only).
            self.payloads.make_durable(lsn)
        store.flush()  # rows below `rows` never change again, so they can be flushed outside the lock
        snapshots.publish(self.directory, manifest, lambda folder: table.save(folder, rows), index_bytes)
        self.snapshot_lsn, self.snapshot_generation = lsn, generation
        self.wal.truncate_before(lsn)
        return True

    def close(self) -> None:
        for thread in (self._rebuild_thread, self._calibration_thread):
            if thread is not None:
                thread.join()
        self.wal.close()
        self.store.close()
        if self.payloads is not None:
            self.payloads.close()

    # --- sizes --------------------------------------------------------------------------------

    def index_bytes(self) -> int:
        """Memory of the serving index (0 while searched exactly over the memory-mapped raw vectors)."""
        if self.index is not None:
            return index_ops.index_bytes(self.index, self.template_bytes)
        return 0

    def memory_bytes(self) -> int:
        """Resident memory of the serving index plus an estimate of the id maps (about 120 bytes a
        row: the slot's id string, its list pointer and its dictionary entry); raw vectors and
        payloads stay on disk (memory-mapped or in SQLite) and are not counted."""
        return self.index_bytes() + 120 * self.items.rows

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())
