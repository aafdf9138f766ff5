"""Maps of collections' embedding spaces, computed in the background and kept on disk.

A map is a uniform sample of a collection (SampleItems through the gateway), laid out in 2-D
(projection.py) in a separate process so that the web app stays responsive, with a label field for
colours and the representation-quality report (quality.py) on a subsample. A map is recomputed when the
collection's item count moved by more than REFRESH_SHARE since it was sampled; the old one is served
meanwhile. The browser gets a compact binary form: 4 bytes of coordinates and 2 of label per point."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.explorer import projection, quality
from services.explorer.gateway import Gateway, GatewayError

log = logging.getLogger(__name__)

REFRESH_SHARE = 0.1
# ... but not more often than this (a collection that is being loaded grows fast).
MIN_REFRESH_INTERVAL_S = 120.0
# A failed computation is tried again after this long.
RETRY_AFTER_S = 30.0
MIN_POINTS = 20
QUALITY_SAMPLE = 3_000
# Rough layout time on this kind of machine (the first run also compiles UMAP's numba code), for the
# progress bar while UMAP runs: it reports no progress of its own.
UMAP_START_SECONDS = 15.0
UMAP_SECONDS_PER_1000 = 1.6


@dataclass
class CollectionMap:
    collection: str
    count: int  # the collection's items when it was sampled
    method: str
    seconds: float
    field: str | None
    labels: list[str]
    xy: np.ndarray  # uint16 [n, 2]
    codes: np.ndarray  # uint16 [n]
    ids: list[str]
    metadata: list[dict[str, str]]
    quality_vectors: np.ndarray  # float32 [m, d], the first m points' vectors
    metric: str = "cosine"
    quality: dict | None = None
    computed_at: float = field(default_factory=time.time)
    _index: dict[str, int] | None = field(default=None, repr=False)

    def index_of(self, item_id: str) -> int:
        if self._index is None:
            self._index = {i: n for n, i in enumerate(self.ids)}
        return self._index.get(item_id, -1)

    def payload(self) -> bytes:
        """The browser's form: uint32 LE header length, the JSON header, padding to 4 bytes, x and y per
        point (uint16 LE), then a label code per point (uint16 LE)."""
        header = {
            "count": len(self.ids),
            "field": self.field,
            "labels": self.labels,
            "method": self.method,
            "seconds": round(self.seconds, 1),
            "items": self.count,
            "computed_at": round(self.computed_at),
        }
        header = json.dumps(header).encode()
        pad = (-(4 + len(header))) % 4
        body = (
            np.ascontiguousarray(self.xy, dtype="<u2").tobytes()
            + np.ascontiguousarray(self.codes, "<u2").tobytes()
        )
        return struct.pack("<I", len(header)) + header + b" " * pad + body

    def report(self, field: str) -> dict:
        """The quality report by `field` (the colour field's is computed with the map)."""
        if field == self.field and self.quality is not None:
            return self.quality
        m = len(self.quality_vectors)
        labels = [meta.get(field) for meta in self.metadata[:m]]
        return {"field": field, **quality.label_report(self.quality_vectors, labels, metric=self.metric)}

    # --- disk ---------------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        header = {"collection": self.collection, "count": self.count, "method": self.method,
                  "seconds": self.seconds, "field": self.field, "labels": self.labels, "metric": self.metric,
                  "quality": self.quality, "metadata": self.metadata, "ids": self.ids,
                  "computed_at": self.computed_at}  # fmt: skip
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, xy=self.xy, codes=self.codes, quality_vectors=self.quality_vectors,
                     header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> CollectionMap:
        with np.load(path) as data:
            header = json.loads(data["header"].tobytes())
            h = header
            return cls(
                h["collection"], h["count"], h["method"], h["seconds"], h["field"], h["labels"], data["xy"],
                data["codes"], h["ids"], h["metadata"], data["quality_vectors"], h["metric"], h["quality"],
                h["computed_at"],
            )  # fmt: skip


@dataclass
class Job:
    phase: str = "sampling the collection"
    progress: float = 0.0
    started: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    error: str = ""


def _layout(reduced: np.ndarray, method: str) -> np.ndarray:
    """Runs in the layout process."""
    return projection.layout(reduced, method)


class Maps:
    def __init__(self, gateway: Gateway, data_dir: Path, points: int, method: str) -> None:
        self.gateway = gateway
        self.directory = Path(data_dir) / "maps"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.points = points
        self.method = method
        self.maps: dict[str, CollectionMap] = {}
        self.jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._pool: ProcessPoolExecutor | None = None
        self.min_refresh_interval_s = MIN_REFRESH_INTERVAL_S

    def _path(self, collection: str) -> Path:
        return self.directory / f"{collection}.npz"

    def cached(self, collection: str) -> CollectionMap | None:
        found = self.maps.get(collection)
        if found is None and self._path(collection).exists():
            try:
                found = self.maps[collection] = CollectionMap.load(self._path(collection))
            except Exception:
                log.exception("map of %s on disk is unreadable; it is computed again", collection)
                self._path(collection).unlink(missing_ok=True)
        return found

    def status(self, collection: str, count: int, fields: list[str], metric: str) -> tuple[str, object]:
        """("ready", map), ("computing", job), ("failed", job) or ("empty", None); starts a computation
        when there is no map yet or the collection changed enough, and serves the old map meanwhile."""
        current = self.cached(collection)
        if current is not None and count < MIN_POINTS:
            self.forget(collection)  # emptied, or dropped and created again: the old items are gone
            current = None
        stale = current is None or (
            abs(count - current.count) > REFRESH_SHARE * max(current.count, 1)
            and time.time() - current.computed_at >= self.min_refresh_interval_s
        )
        failed = self.jobs.get(collection)
        if failed is not None and failed.error and time.monotonic() - failed.finished < RETRY_AFTER_S:
            return ("ready", current) if current is not None else ("failed", failed)
        if stale and count >= MIN_POINTS and collection not in self._tasks:
            self.jobs[collection] = Job()
            self._tasks[collection] = asyncio.get_running_loop().create_task(
                self._compute(collection, count, fields, metric)
            )
        if current is not None:
            return "ready", current
        if collection in self.jobs:
            return "computing", self.jobs[collection]
        return "empty", None

    def forget(self, collection: str) -> None:
        """A collection that was dropped: its map goes too."""
        self.maps.pop(collection, None)
        self._path(collection).unlink(missing_ok=True)

    def keep_only(self, collections: set[str]) -> None:
        """Forgets the maps (in memory and on disk) of collections that no longer exist."""
        on_disk = {path.name.removesuffix(".npz") for path in self.directory.glob("*.npz")}
        for name in (set(self.maps) | on_disk) - collections - set(self._tasks):
            log.info("collection %s is gone: its map is deleted", name)
            self.forget(name)

    async def _compute(self, collection: str, count: int, fields: list[str], metric: str) -> None:
        job = self.jobs[collection]
        loop = asyncio.get_running_loop()
        begin = time.perf_counter()
        try:
            ids, vectors, metadata = await self.gateway.sample(collection, min(self.points, count), seed=1)
            job.phase, job.progress = "principal components", 0.1
            method = self.method if len(ids) > projection.UMAP_NEIGHBOURS + 1 else "pca"
            reduced = await loop.run_in_executor(
                None, projection.pca, vectors, 2 if method == "pca" else projection.PCA_DIMS
            )
            job.phase, job.progress = ("UMAP layout" if method == "umap" else "layout"), 0.2
            # UMAP holds the interpreter for minutes: in its own process, so the app keeps answering.
            pool = self._layout_pool() if method == "umap" else None
            layout = loop.run_in_executor(pool, _layout, reduced, method)
            expected = UMAP_START_SECONDS + UMAP_SECONDS_PER_1000 * len(ids) / 1000
            while not layout.done():
                job.progress = 0.2 + 0.7 * min(0.99, (time.perf_counter() - begin) / expected)
                await asyncio.wait([layout], timeout=0.5)
            xy = projection.quantize(layout.result())
            job.phase, job.progress = "representation quality", 0.92
            field_name = next((f for f in fields if any(f in m for m in metadata[:1000])), None)
            labels, codes = projection.label_codes(metadata, field_name)
            subsample = np.ascontiguousarray(vectors[: min(QUALITY_SAMPLE, len(ids))])
            seconds = time.perf_counter() - begin
            result = CollectionMap(
                collection,
                count,
                method,
                seconds,
                field_name,
                labels,
                xy,
                codes,
                ids,
                metadata,
                subsample,
                metric,
            )
            if field_name:
                result.quality = await loop.run_in_executor(None, result.report, field_name)
            await loop.run_in_executor(None, result.save, self._path(collection))
            self.maps[collection] = result
            self.jobs.pop(collection, None)
            log.info("map of %s: %d points (%s) in %.1fs", collection, len(ids), method, result.seconds)
        except GatewayError as exc:
            job.error = f"{exc.code}: {exc.message}"
            log.warning("map of %s failed: %s", collection, job.error)
        except Exception as exc:
            job.error = f"{type(exc).__name__}: {exc}"
            log.exception("map of %s failed", collection)
        finally:
            job.finished = time.monotonic()
            self._tasks.pop(collection, None)

    def _layout_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
