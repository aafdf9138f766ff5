"""Append-only raw vectors on disk, memory-mapped for exact search, re-ranking and rebuilds."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from semsearch.core.durable import fsync_path

GROWTH_ROWS = 4_096


class VectorStore:
    """Rows of float32 (or float16) vectors in one file, addressed by slot number.

    Space is reserved with posix_fallocate before any row is written into it, so a full disk is an
    OSError at reserve() time (refused before the write is logged), never a SIGBUS when a page of a
    sparse memory map is first touched. `rows` is the logical length; durability comes from the
    write-ahead log: after a crash the store is cut back to the last snapshot's row count and the
    log is replayed.
    """

    def __init__(self, path: Path, dim: int, dtype: str = "float32") -> None:
        assert dtype in ("float32", "float16"), dtype
        self.path = Path(path)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._reserved = 0
        self._capacity = 0
        self._map: np.memmap | None = None
        self._lock = threading.Lock()

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def open(self, rows: int) -> None:
        """Open (or create) the file, keeping its first `rows` rows; later rows are stale."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
        size_rows = self.path.stat().st_size // self.row_bytes
        if size_rows < rows:
            raise RuntimeError(f"{self.path} holds {size_rows} rows, the snapshot needs {rows}")
        self.rows = self._reserved = rows
        self._map_file(size_rows)

    def _map_file(self, capacity: int) -> None:
        self._capacity = capacity
        if capacity == 0:  # nothing to map yet (numpy would extend the file, sparsely)
            self._map = np.zeros((0, self.dim), dtype=self.dtype)
        else:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=(capacity, self.dim))

    def reserve(self, n: int, *, exact: bool = False) -> None:
        """Make room on disk for `n` more rows beyond those already reserved (OSError, e.g. ENOSPC or
        EFBIG, when the disk cannot hold them). Reservations are consumed by append() in order. Growth
        adds slack for later appends unless `exact` (a rebuild knows its size)."""
        with self._lock:
            self._reserve_locked(n, exact)

    def _reserve_locked(self, n: int, exact: bool = False) -> None:
        end = self._reserved + n
        if end > self._capacity:
            # Grow by a quarter (at least GROWTH_ROWS): few fallocate calls, little slack on disk.
            capacity = end if exact else max(end, self._capacity + max(self._capacity // 4, GROWTH_ROWS))
            fd = os.open(self.path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, capacity * self.row_bytes)
            finally:
                os.close(fd)
            self._map_file(capacity)
        self._reserved = end

    def cancel(self, n: int) -> None:
        """Give back a reservation whose write was refused (the space stays allocated for later)."""
        with self._lock:
            self._reserved -= n

    def append(self, vectors: np.ndarray) -> int:
        """Store [n, dim] vectors (in reserved rows, reserving more if needed); returns the slot of the
        first one."""
        assert vectors.ndim == 2 and vectors.shape[1] == self.dim, vectors.shape
        with self._lock:
            first, end = self.rows, self.rows + len(vectors)
            if end > self._reserved:
                self._reserve_locked(end - self._reserved)
            self._map[first:end] = vectors
            self.rows = end
            return first

    def view(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Stored rows [start, end) as a read-only memory map (not copied)."""
        return self._map[start : self.rows if end is None else end]

    def get(self, slots: np.ndarray) -> np.ndarray:
        """float32 vectors of the given slots, shaped like slots + (dim,)."""
        return np.asarray(self._map[slots], dtype=np.float32)

    def flush(self) -> None:
        """Make every stored row durable (before a snapshot that counts them)."""
        if isinstance(self._map, np.memmap):
            self._map.flush()
            fsync_path(self.path)

    @property
    def nbytes(self) -> int:
        """Bytes of the rows in use."""
        return self.rows * self.row_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes the file takes on disk (reserved space included)."""
        try:
            return self.path.stat().st_blocks * 512
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        if isinstance(self._map, np.memmap):
            self._map.flush()
        self._map = None
