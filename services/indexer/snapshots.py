"""Snapshot directories of a collection: written aside, fsync'd, published by replacing CURRENT.

A snapshot `snap-<lsn>-<generation>/` holds manifest.json (log position, rows, vector-file epoch,
generation, index settings), the item table and, once trained, index.faiss. Callers serialise
snapshots of one collection (one writer), so publishing and cleaning up never race."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from semsearch.core.durable import atomic_write, fsync_path, write_file

log = logging.getLogger(__name__)

CURRENT = "CURRENT"


def name_of(lsn: int, generation: int) -> str:
    return f"snap-{lsn:020d}-{generation:06d}"


def read_current(directory: Path) -> dict | None:
    """The manifest of the published snapshot (with its folder name under "dir"), or None."""
    current = directory / CURRENT
    if not current.exists():
        return None
    name = current.read_text().strip()
    manifest = json.loads((directory / name / "manifest.json").read_text())
    manifest["dir"] = name
    return manifest


def publish(
    directory: Path, manifest: dict, write_contents: Callable[[Path], None], index_bytes: bytes | None
) -> str:
    """Write a snapshot folder (contents via `write_contents(folder)`, the index, the manifest), make
    it durable, point CURRENT at it and delete every other snapshot folder. Returns its name."""
    name = name_of(manifest["lsn"], manifest["generation"])
    current = read_current(directory)
    if current is not None and current["dir"] == name:
        return name  # already published (nothing changed since)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_contents(tmp)
        if index_bytes is not None:
            write_file(tmp / "index.faiss", index_bytes)
        write_file(tmp / "manifest.json", json.dumps(manifest).encode())
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. a full disk: give the space back at once
        raise
    # A folder of this name can be left by a crash between the rename and CURRENT's update; it was
    # never published (CURRENT names another), so it is replaced.
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(directory)
    atomic_write(directory / CURRENT, name.encode())
    remove_unpublished(directory, keep=name)
    return name


def remove_unpublished(directory: Path, keep: str) -> None:
    """Delete snapshot folders (and unfinished ones) other than `keep`."""
    for path in directory.iterdir():
        if path.name != keep and (path.name.startswith("snap-") or path.name.startswith(".snap-")):
            shutil.rmtree(path, ignore_errors=True)
