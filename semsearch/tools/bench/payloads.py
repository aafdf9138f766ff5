"""`semsearch bench payloads`: the payload store (SQLite) through a real shard against its own in-process
floor: upsert rate and Get p50 with payloads of 0, 1 KB and 8 KB per item, memory per item at N items
with 200-byte metadata, and snapshot time with and without payloads (it must not depend on them)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from semsearch.core.collections import CollectionConfig
from semsearch.rpc import CHANNEL_OPTIONS
from semsearch.tools.launch import ShardProcess
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc
from services.indexer.payloads import PayloadStore

log = logging.getLogger(__name__)

DIM = 16
BATCH = 500
METADATA_BYTES = 200
GOAL_MEMORY_RATIO = 1.3


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS: heap plus the touched pages of memory-mapped files such as
    the raw vectors)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _metadata(i: int) -> dict[str, str]:
    filler = "x" * (METADATA_BYTES - 40)
    return {"label": f"class-{i % 10}", "source": f"item {i:09d}", "note": filler}


def _requests(n: int, payload_bytes: int, seed: int):
    rng = np.random.default_rng(seed)
    payload = bytes(rng.integers(0, 256, payload_bytes, dtype=np.uint8)) if payload_bytes else b""
    for start in range(0, n, BATCH):
        end = min(start + BATCH, n)
        vectors = rng.normal(size=(end - start, DIM)).astype(np.float32)
        items = [
            common_pb2.Item(
                id=f"item-{i}",
                vector=common_pb2.Vector(values=v.tolist()),
                metadata=_metadata(i),
                payload=payload,
            )
            for i, v in zip(range(start, end), vectors)
        ]
        yield indexer_pb2.ShardUpsertRequest(collection="bench", items=items)


def _served(root: Path, n: int, payload_bytes: int, gets: int) -> dict:
    """Upsert n items with payloads of `payload_bytes` into a real shard, then Get p50, snapshot times
    and memory."""
    folder = root / f"shard-{payload_bytes}"
    shard = ShardProcess(0, 1, folder, collections=[CollectionConfig(name="bench", dim=DIM, index="exact")])
    shard.start()
    try:
        channel = grpc.insecure_channel(shard.address, options=CHANNEL_OPTIONS)
        stub = indexer_pb2_grpc.IndexerStub(channel)
        empty_rss = rss_bytes(shard.process.pid)
        begin = time.perf_counter()
        progress = tqdm(total=n, desc=f"upsert, {payload_bytes} B payloads", unit="item")
        for request in _requests(n, payload_bytes, 0):
            stub.Upsert(request, timeout=120)
            progress.update(len(request.items))
        progress.close()
        upsert_rate = n / (time.perf_counter() - begin)
        first = time.perf_counter()
        stub.Snapshot(indexer_pb2.SnapshotRequest(), timeout=600)
        first_snapshot = time.perf_counter() - first
        rng = np.random.default_rng(1)
        latencies = []
        for i in rng.integers(0, n, gets):
            request = indexer_pb2.ShardGetRequest(
                collection="bench", ids=[f"item-{i}"], include_payloads=True
            )
            t = time.perf_counter()
            stub.Get(request, timeout=30)
            latencies.append(time.perf_counter() - t)
        # A snapshot of the full collection after one more write: what every later snapshot costs.
        stub.Upsert(next(_requests(1, payload_bytes, 2)), timeout=60)
        t = time.perf_counter()
        stub.Snapshot(indexer_pb2.SnapshotRequest(), timeout=600)
        steady_snapshot = time.perf_counter() - t
        stats = next(c for c in stub.Stats(indexer_pb2.StatsRequest()).collections if c.name == "bench")
        rss = rss_bytes(shard.process.pid)
        channel.close()
    finally:
        shard.stop()
    store = next((folder / "collections").glob("bench-*")) / "items.sqlite"
    store_bytes = sum(p.stat().st_size for p in store.parent.glob("items.sqlite*"))
    return {
        "upsert_items_per_s": upsert_rate,
        "get_p50_ms": float(np.percentile(latencies, 50) * 1000),
        "snapshot_after_ingest_s": first_snapshot,
        "snapshot_steady_s": steady_snapshot,
        "rss_per_item": (rss - empty_rss) / n,
        "store_bytes_per_item": store_bytes / n,
        # An exact collection is searched over its raw vectors: those are its index.
        "index_bytes_per_item": (stats.index_bytes or n * DIM * 4) / n,
    }


def _floor(root: Path, n: int, payload_bytes: int, gets: int) -> dict:
    """The same items straight into the payload store, in-process (no log, no vectors, no gRPC)."""
    store = PayloadStore(root / f"floor-{payload_bytes}.sqlite")
    begin = time.perf_counter()
    for request in _requests(n, payload_bytes, 0):
        items = request.items
        store.put(
            [i.id for i in items],
            [json.dumps(dict(i.metadata)) for i in items],
            [i.payload or None for i in items],
        )
    rate = n / (time.perf_counter() - begin)
    rng = np.random.default_rng(1)
    latencies = []
    for i in rng.integers(0, n, gets):
        t = time.perf_counter()
        store.metadata([f"item-{i}"])
        store.payloads([f"item-{i}"])
        latencies.append(time.perf_counter() - t)
    store.close()
    return {"upsert_items_per_s": rate, "get_p50_ms": float(np.percentile(latencies, 50) * 1000)}


def bench(
    n: int = 100_000, memory_n: int = 1_000_000, gets: int = 2_000
) -> tuple[list[tuple[str, ...]], dict]:
    """Table rows and the JSON summary: rates at `n` items per payload size; snapshot times and memory at
    `memory_n` items without payloads and with 8 KB ones."""
    root = Path(tempfile.mkdtemp(prefix="semsearch-bench-payloads-"))
    rows: list[tuple[str, ...]] = []
    summary: dict = {"n": n, "memory_n": memory_n, "metadata_bytes": METADATA_BYTES}
    try:
        for size in (0, 1024, 8192):
            served, floor = _served(root, n, size, gets), _floor(root, n, size, gets)
            shutil.rmtree(root / f"shard-{size}", ignore_errors=True)
            upsert, get = served["upsert_items_per_s"], served["get_p50_ms"]
            ratio = upsert / floor["upsert_items_per_s"]
            floor_upsert, floor_get = floor["upsert_items_per_s"], floor["get_p50_ms"]
            rows += [
                (
                    f"upsert items/s, {size} B payload",
                    f"{upsert:,.0f}",
                    f"{floor_upsert:,.0f}",
                    f"{ratio:.2f}",
                ),
                (f"Get p50 ms, {size} B payload", f"{get:.3f}", f"{floor_get:.3f}", f"{get / floor_get:.1f}"),
            ]
            summary[f"upsert_ratio_{size}"] = round(ratio, 3)
            summary[f"get_p50_ms_{size}"] = round(get, 3)
            summary[f"get_p50_floor_ms_{size}"] = round(floor["get_p50_ms"], 4)
        big = {}
        for size in (0, 8192):
            big[size] = run = _served(root, memory_n, size, 200)
            shutil.rmtree(root / f"shard-{size}", ignore_errors=True)
            snapshots = f"{run['snapshot_after_ingest_s']:.2f} / {run['snapshot_steady_s']:.2f}"
            rows += [
                (
                    f"snapshot s after ingest / steady, {memory_n:,} items, {size} B payload",
                    snapshots,
                    "",
                    "",
                ),
                (
                    f"RSS per item, {memory_n:,} items, {size} B payload",
                    f"{run['rss_per_item']:.0f} B",
                    "",
                    "",
                ),
            ]
            summary[f"snapshot_steady_s_{size}"] = round(run["snapshot_steady_s"], 3)
            summary[f"snapshot_after_ingest_s_{size}"] = round(run["snapshot_after_ingest_s"], 3)
            summary[f"rss_per_item_{size}"] = round(run["rss_per_item"], 1)
        steady_ratio = big[8192]["snapshot_steady_s"] / max(big[0]["snapshot_steady_s"], 1e-9)
        memory = big[0]
        store, index = memory["store_bytes_per_item"], memory["index_bytes_per_item"]
        bound = GOAL_MEMORY_RATIO * (store + index)
        rows.append(
            (
                f"memory per item, {memory_n:,} items, {METADATA_BYTES} B metadata",
                f"{memory['rss_per_item']:.0f} B RSS",
                f"store {store:.0f} B + index {index:.0f} B",
                f"goal <= {bound:.0f} B",
            )
        )
        summary.update(
            snapshot_steady_ratio_8k_vs_0=round(steady_ratio, 2),
            store_bytes_per_item=round(store, 1),
            index_bytes_per_item=round(index, 1),
            memory_goal_bytes_per_item=round(bound, 1),
            memory_goal_met=memory["rss_per_item"] <= bound,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows, summary
