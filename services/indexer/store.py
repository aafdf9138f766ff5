"""Append-only raw vectors on disk, memory-mapped for exact re-ranking and rebuilds."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

GROWTH_ROWS = 65_536


class VectorStore:
    """Rows of float32 (or float16) vectors in one file, addressed by slot number.

    The file is grown in chunks and memory-mapped whole; `rows` is the logical length. Durability
    comes from the write-ahead log: after a crash the store is cut back to the last snapshot's row
    count and the log is replayed, so a row is only trusted once a snapshot covered it.
    """

    def __init__(self, path: Path, dim: int, dtype: str = "float32") -> None:
        assert dtype in ("float32", "float16"), dtype
        self.path = Path(path)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._capacity = 0
        self._map: np.memmap | None = None
        self._lock = threading.Lock()

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    def open(self, rows: int) -> None:
        """Open the file, keeping its first `rows` rows (the rest is stale and is overwritten)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.touch()
        size_rows = self.path.stat().st_size // self.row_bytes
        if size_rows < rows:
            raise RuntimeError(f"{self.path} holds {size_rows} rows, the snapshot needs {rows}")
        self.rows = rows
        self._remap(max(size_rows, GROWTH_ROWS))

    def _remap(self, capacity: int) -> None:
        with open(self.path, "r+b") as f:
            if os.fstat(f.fileno()).st_size < capacity * self.row_bytes:
                f.truncate(capacity * self.row_bytes)
        self._capacity = capacity
        self._map = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=(capacity, self.dim))

    def append(self, vectors: np.ndarray) -> int:
        """Store float32 [n, dim] vectors; returns the slot of the first one."""
        assert vectors.ndim == 2 and vectors.shape[1] == self.dim, vectors.shape
        with self._lock:
            first = self.rows
            end = first + len(vectors)
            if end > self._capacity:
                self._remap(max(end, self._capacity * 2, GROWTH_ROWS))
            self._map[first:end] = vectors
            self.rows = end
            return first

    def view(self) -> np.ndarray:
        """The stored rows [rows, dim] (a memory map; do not write through it)."""
        return self._map[: self.rows]

    def get(self, slots: np.ndarray) -> np.ndarray:
        """float32 vectors of the given slots, shaped like slots + (dim,)."""
        return np.asarray(self._map[slots], dtype=np.float32)

    def flush(self) -> None:
        """Make every stored row durable (before a snapshot that counts them)."""
        if self._map is not None:
            self._map.flush()
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    def close(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map = None
