"""Metadata and small payloads (thumbnails, texts) of a collection's items, by id, in SQLite.

SQLite in WAL mode, because it is in the standard library, keeps one file per collection, reads by
primary key in microseconds while one writer appends, and recovers by itself after a crash. It holds
applied state, like the index: the write-ahead log stays the source of truth. Commits are not fsync'd
one by one (synchronous=NORMAL); a snapshot makes everything committed so far durable first (one
synchronous=FULL commit), so after any crash the store holds at least what the snapshot covers, and
replaying the log after it re-applies the rest (every write here is idempotent by id)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, metadata TEXT, payload BLOB) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID;
"""


class PayloadStore:
    """One writer (the collection's apply path, serialised by its lock) and any number of reader
    threads, each with its own connection."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _reader(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
            with self._readers_lock:
                self._readers.append(connection)
        return connection

    # --- writes (apply path) ------------------------------------------------------------------------

    def put(
        self, ids: Sequence[str], metadata: Sequence[str | None], payloads: Sequence[bytes | None]
    ) -> None:
        """Insert or replace items (metadata as JSON text)."""
        with self._writer:
            self._writer.execute("BEGIN")
            self._writer.executemany(
                "INSERT OR REPLACE INTO items (id, metadata, payload) VALUES (?, ?, ?)",
                zip(ids, metadata, payloads),
            )

    def remove(self, ids: Iterable[str]) -> None:
        with self._writer:
            self._writer.execute("BEGIN")
            self._writer.executemany("DELETE FROM items WHERE id = ?", ((i,) for i in ids))

    def make_durable(self, lsn: int) -> None:
        """Record the log position the store has applied and fsync everything committed so far."""
        self._writer.execute("PRAGMA synchronous=FULL")
        try:
            with self._writer:
                self._writer.execute("BEGIN")
                self._writer.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('lsn', ?)", (lsn,))
        finally:
            self._writer.execute("PRAGMA synchronous=NORMAL")

    # --- reads --------------------------------------------------------------------------------------

    def metadata(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Metadata of the stored ids among `ids` (missing ids are absent)."""
        return {item_id: json.loads(meta) for item_id, meta in self.metadata_json(ids).items()}

    def metadata_json(self, ids: Sequence[str]) -> dict[str, str]:
        """Metadata of the stored ids among `ids` as stored: JSON objects (missing ids are absent)."""
        out: dict[str, str] = {}
        connection = self._reader()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for item_id, meta in connection.execute(
                f"SELECT id, metadata FROM items WHERE id IN ({marks})", chunk
            ):
                out[item_id] = meta or "{}"
        return out

    def payloads(self, ids: Sequence[str]) -> dict[str, bytes]:
        """Payloads of the stored ids among `ids` that have one."""
        out: dict[str, bytes] = {}
        connection = self._reader()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT id, payload FROM items WHERE id IN ({marks}) AND payload IS NOT NULL"
            out.update(connection.execute(query, chunk))
        return out

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())

    def close(self) -> None:
        with self._readers_lock:
            for connection in self._readers:
                connection.close()
            self._readers.clear()
        self._writer.close()
