"""Durable file helpers: fsync'd writes, atomic replacement, directory fsyncs, directory locks."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync a file (its contents become durable) or a directory (its entries, i.e. new, renamed and
    deleted names, become durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """Create `path` and any missing parents, making each new name durable (its parent fsync'd): a
    folder whose name was never fsync'd can vanish in a power cut with everything inside it."""
    path = Path(path)
    if path.is_dir():
        return
    ensure_dir(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return
    fsync_path(path.parent)


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (the name is durable only after fsync_path)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a crash leaves either the old or the new content, never a
    mix, and the new name is durable on return."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write_file(tmp, data)
    os.replace(tmp, path)
    fsync_path(path.parent)


class DirectoryInUse(RuntimeError):
    """Another process holds the directory's lock."""


class DirectoryLock:
    """An exclusive lock on a directory (flock on `<dir>/LOCK`, holding the owner's pid), so that one
    process at a time writes there. Released when the process exits, even by SIGKILL."""

    def __init__(self, directory: Path, what: str) -> None:
        self.path = Path(directory) / "LOCK"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        ensure_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryInUse(
                f"{self.path.parent} is in use by pid {holder} (another {self.what}); refusing to start a "
                "second writer on the same directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
