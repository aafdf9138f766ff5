"""A power cut (not just a SIGKILL) in the middle of writes, snapshots, log truncation and a compaction:
one real shard on a FUSE filesystem that keeps only what was fsync'd (tests/powercut.py), cut at a
seeded moment; a new shard on what a disk would hold after the cut must have every acknowledged write.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from semsearch.core.collections import CollectionConfig
from semsearch.tools.launch import ShardProcess
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc
from services.indexer.wal import segment_name
from tests.conftest import collection_dir
from tests.powercut import PowerCutFS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not os.path.exists("/dev/fuse"),
        reason="mounting the power-cut FUSE filesystem needs root and /dev/fuse",
    ),
]

DIM = 32
CONFIG = CollectionConfig(name="docs", dim=DIM)
# Snapshots every 200 log records (checked every second), so several happen during the run.
ENV = {"SEMSEARCH_INDEXER_MIN_FREE_BYTES": "0", "SEMSEARCH_INDEXER_SNAPSHOT_EVERY": "200"}
BATCH = 50
WRITERS = 2  # concurrent writers share log fsyncs (group commit)


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def upsert_request(ids: list[str], vectors: np.ndarray) -> indexer_pb2.ShardUpsertRequest:
    """Each item's metadata and payload are derived from its vector, so a reader can tell whether the
    three agree."""
    items = [
        common_pb2.Item(
            id=i, vector=common_pb2.Vector(values=v), metadata={"digest": digest(v)}, payload=v.tobytes()
        )
        for i, v in zip(ids, vectors)
    ]
    return indexer_pb2.ShardUpsertRequest(collection="docs", items=items)


def digest(vector: np.ndarray) -> str:
    return hashlib.blake2b(np.asarray(vector, dtype=np.float32).tobytes(), digest_size=8).hexdigest()


class Gate:
    """Writers pass it for each request; hold() waits for the requests in flight and keeps new ones
    out, so that a snapshot taken meanwhile covers the whole log (only then is the log truncated:
    under a steady stream its one 64 MB segment never is)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = 0
        self._held = False

    @contextlib.contextmanager
    def request(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._held)
            self._busy += 1
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def hold(self):
        with self._cond:
            self._held = True
            self._cond.wait_for(lambda: self._busy == 0)
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


@dataclass
class Ledger:
    """One writer's view: the last acknowledged state of each id (a vector, or None once deleted) and,
    for the one write never answered (in flight at the cut), (state before, state it would set)."""

    acked: dict[str, np.ndarray | None] = field(default_factory=dict)
    maybe: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=lambda: {"upsert": 0, "reupsert": 0, "delete": 0})
    failure: str = ""
    failed_at: float = 0.0


def writer(stub, prefix: str, seed: int, gate: Gate, stop: threading.Event, ledger: Ledger) -> None:
    """Upsert batches of new ids, re-upsert and delete earlier ones, one request at a time, until an
    RPC fails (the shard was killed) or `stop` is set."""
    rng = np.random.default_rng(seed)
    written: list[str] = []
    fresh = 0
    while not stop.is_set():
        roll = rng.random()
        if roll < 0.7 or len(written) < 100:
            kind, ids = "upsert", [f"{prefix}{fresh + i}" for i in range(BATCH)]
            fresh += BATCH
        else:
            kind = "reupsert" if roll < 0.85 else "delete"
            ids = [written[i] for i in rng.choice(len(written), size=20, replace=False)]
        if kind == "delete":
            new: list[np.ndarray | None] = [None] * len(ids)
            call, request = stub.Delete, indexer_pb2.ShardDeleteRequest(collection="docs", ids=ids)
        else:
            vectors = unit_vectors(rng, len(ids))
            new = list(vectors)
            call, request = stub.Upsert, upsert_request(ids, vectors)
        with gate.request():
            try:
                call(request, timeout=10)
            except grpc.RpcError as exc:
                ledger.failure, ledger.failed_at = f"{exc.code()}: {exc.details()}", time.monotonic()
                ledger.maybe = {i: (ledger.acked.get(i), v) for i, v in zip(ids, new)}
                return
        ledger.acked.update(zip(ids, new))
        ledger.ops[kind] += 1
        if kind == "upsert":
            written.extend(ids)


def tree(folder: Path) -> str:
    """Every path under `folder` with its size, for failure messages."""
    lines = []
    for path in sorted(folder.rglob("*")):
        size = "/" if path.is_dir() else f" {path.stat().st_size}"
        lines.append(f"  {path.relative_to(folder)}{size}")
    return "\n".join(lines) or "  (empty)"


def get_all(stub, ids: list[str]) -> dict[str, np.ndarray]:
    """The vectors of the stored ids among `ids`; each item's metadata and payload must belong to it."""
    found = {}
    for start in range(0, len(ids), 1000):
        request = indexer_pb2.ShardGetRequest(
            collection="docs", ids=ids[start : start + 1000], include_vectors=True, include_payloads=True
        )
        for item in stub.Get(request, timeout=30).items:
            vector = np.array(item.vector.values, dtype=np.float32)
            # The payload is the vector as sent (the shard re-normalises: the last bit may differ).
            sent = np.frombuffer(item.payload, dtype=np.float32)
            assert item.metadata["digest"] == digest(sent), (
                f"{item.id}: metadata lost or from another write than the payload"
            )
            assert sent.shape == vector.shape and np.allclose(sent, vector, atol=1e-6), (
                f"{item.id}: payload of another write than the vector"
            )
            found[item.id] = vector
    return found


def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Same state: both absent, or both present with the same vector."""
    if a is None or b is None:
        return a is None and b is None
    return np.allclose(a, b, atol=1e-5)


@pytest.fixture
def cleanup():
    """Shards and mounts to tear down, also after a failure: shards first (a shard on a mount whose
    server is gone gets ENOTCONN), then the mounts."""
    shards: list[ShardProcess] = []
    mounts: list[PowerCutFS] = []
    yield shards, mounts
    for shard in shards:
        shard.kill()
    for fs in mounts:
        fs.unmount()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_cut_keeps_exactly_what_was_made_durable(tmp_path, cleanup):
    """The harness itself: fsync'd contents and fsync'd directory entries survive, nothing else."""
    _, mounts = cleanup
    (tmp_path / "backing").mkdir()
    (tmp_path / "backing" / "old").write_bytes(b"there at mount time")
    fs = PowerCutFS(tmp_path / "backing", tmp_path / "mnt")
    mounts.append(fs.mount())
    m = tmp_path / "mnt"
    with open(m / "log", "wb") as f:
        f.write(b"kept")
        f.flush()
        os.fsync(f.fileno())
        f.write(b" lost")
    (m / "unsynced").write_bytes(b"never fsync'd")
    (m / "sub").mkdir()
    (m / "sub" / "inner").write_bytes(b"name durable, content not")
    fsync_path(m / "sub")
    (m / "tmp").write_bytes(b"replaced")
    fsync_path(m / "tmp")
    os.replace(m / "tmp", m / "old")
    with open(m / "map", "w+b") as f:
        os.posix_fallocate(f.fileno(), 0, 8192)
        with mmap.mmap(f.fileno(), 8192) as mapped:
            mapped[:6] = b"mapped"
            mapped.flush()  # msync: durable
            mapped[4096:4100] = b"lost"
            fsync_path(m)  # names: log, unsynced, sub, old (replaced), map
            (m / "late").write_bytes(b"content durable, name not")
            fsync_path(m / "late")
            os.rename(m / "sub", m / "moved")
            report = fs.cut(tmp_path / "cut")
    cut = tmp_path / "cut"
    assert not report["internal_errors"], report["internal_errors"]
    assert sorted(p.name for p in cut.iterdir()) == ["log", "map", "old", "sub", "unsynced"]
    assert (cut / "log").read_bytes() == b"kept"
    assert (cut / "unsynced").read_bytes() == b""
    assert (cut / "sub" / "inner").read_bytes() == b""
    assert (cut / "old").read_bytes() == b"replaced"
    assert (cut / "map").read_bytes() == b"mapped" + bytes(8186)
    assert report["only_live"] == ["/late", "/moved", "/moved/inner"]


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_power_cut_keeps_every_acknowledged_write(tmp_path, cleanup, seed):
    shards, mounts = cleanup
    rng = np.random.default_rng(seed)
    # Timeline (seconds of writes): a compaction, a quiet moment with a snapshot that truncates the
    # log, more writes into the new log segment (automatic snapshots all along), then the cut.
    compact_at = rng.uniform(0.3, 1.5)
    quiet_at = rng.uniform(0.8, 2.0)
    cut_at = quiet_at + rng.uniform(0.3, 2.0)
    fs = PowerCutFS(tmp_path / "backing", tmp_path / "mnt")
    mounts.append(fs.mount())
    # The data directory is the mount's root: it exists before the shard starts (as a deployment's
    # volume does), so it is durable; everything under it is the shard's to make durable.
    shard = ShardProcess(0, 1, tmp_path / "mnt", collections=[CONFIG], env=ENV)
    shards.append(shard.start())
    channel = grpc.insecure_channel(shard.address)
    stub = indexer_pb2_grpc.IndexerStub(channel)

    gate, stop = Gate(), threading.Event()
    ledgers = [Ledger() for _ in range(WRITERS)]
    events: dict[str, object] = {}

    def compact() -> None:
        time.sleep(compact_at)
        try:
            response = stub.Compact(indexer_pb2.CompactRequest(collection="docs"), timeout=30)
            events["compaction"] = f"generation {response.generation}, {response.rows} rows"
        except grpc.RpcError as exc:
            events["compaction"] = f"{exc.code()}: {exc.details()}"

    threads = [
        threading.Thread(target=writer, args=(stub, f"w{k}-", seed * 10 + k, gate, stop, ledgers[k]))
        for k in range(WRITERS)
    ]
    threads.append(threading.Thread(target=compact))
    begin = time.monotonic()
    for thread in threads:
        thread.daemon = True
        thread.start()
    time.sleep(quiet_at)
    with gate.hold():
        events["quiet snapshot"] = list(stub.Snapshot(indexer_pb2.SnapshotRequest(), timeout=30).collections)
    time.sleep(max(0.0, cut_at - (time.monotonic() - begin)))
    killed_at = time.monotonic()
    shard.kill()  # the power cut: nothing more reaches the disk...
    stop.set()
    for thread in threads:
        thread.join(30)
    channel.close()
    report = fs.cut(tmp_path / "cut")  # ...and only what was durable survives
    fs.unmount()
    durable = tree(tmp_path / "cut")
    live_segments = sorted(
        p.name for p in (collection_dir(tmp_path / "backing", "docs") / "wal").glob("wal-*.log")
    )

    assert not report["internal_errors"], report["internal_errors"]
    for k, ledger in enumerate(ledgers):
        assert not ledger.failure or ledger.failed_at >= killed_at, f"writer {k} failed: {ledger.failure}"
    assert sum(ledger.ops["upsert"] for ledger in ledgers) >= 20, "too few writes before the cut"
    assert segment_name(1) not in live_segments, f"the log was never truncated: {live_segments}"
    acked: dict[str, np.ndarray | None] = {}
    maybe: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for ledger in ledgers:  # writers use disjoint ids
        acked.update(ledger.acked)
        maybe.update(ledger.maybe)
    summary = (
        f"seed {seed}: cut after {killed_at - begin:.1f}s of writes, {events}, log segments {live_segments}; "
        f"ops {[ledger.ops for ledger in ledgers]}; {len(acked)} ids acknowledged, {len(maybe)} in flight; "
        f"{report['durable_paths']} durable paths of {report['live_paths']} live; names not durable: "
        f"{report['only_live']}; names deleted but still durable: {report['only_durable']}; "
        f"contents not durable: {report['stale']}"
    )
    print(summary)

    restarted = ShardProcess(0, 1, tmp_path / "cut", collections=[CONFIG], env=ENV)
    shards.append(restarted.start())
    channel = grpc.insecure_channel(restarted.address)
    stub = indexer_pb2_grpc.IndexerStub(channel)
    present = get_all(stub, sorted(set(acked) | set(maybe)))

    def explain(what: str, ids: list[str]) -> str:
        return f"{len(ids)} {what} after the power cut, e.g. {ids[:5]}\n{summary}\ndurable state:\n{durable}"

    settled = {i: v for i, v in acked.items() if i not in maybe}
    upserted = sum(v is not None for v in settled.values())
    lost = [i for i, v in settled.items() if v is not None and i not in present]
    assert not lost, explain(f"of {upserted} acknowledged upserts lost", lost)
    changed = [i for i, v in settled.items() if v is not None and not same(present[i], v)]
    assert not changed, explain("acknowledged upserts came back with another vector", changed)
    undone = [i for i, v in settled.items() if v is None and i in present]
    assert not undone, explain("acknowledged deletes undone", undone)
    # The write in flight at the cut may have happened or not, but nothing else.
    torn = [
        i for i, (old, new) in maybe.items() if not (same(present.get(i), old) or same(present.get(i), new))
    ]
    assert not torn, explain("ids of the unanswered write in a state it never set", torn)
    stats = stub.Stats(indexer_pb2.StatsRequest(), timeout=10).collections[0]
    assert (stats.count, stats.broken) == (len(present), "")

    # The recovered shard takes writes.
    ids, vectors = [f"after-{i}" for i in range(BATCH)], unit_vectors(rng, BATCH)
    stub.Upsert(upsert_request(ids, vectors), timeout=30)
    found = get_all(stub, ids)
    assert all(same(found.get(i), v) for i, v in zip(ids, vectors))
    assert stub.Stats(indexer_pb2.StatsRequest(), timeout=10).collections[0].count == len(present) + BATCH
    channel.close()


def test_a_cut_right_after_a_snapshot_keeps_metadata_and_payloads(tmp_path, cleanup):
    """The snapshot truncates the log, so from then on the payload store alone holds the items' metadata
    and payloads: the snapshot must have made them durable (not only committed) before it published."""
    shards, mounts = cleanup
    fs = PowerCutFS(tmp_path / "backing", tmp_path / "mnt")
    mounts.append(fs.mount())
    shard = ShardProcess(0, 1, tmp_path / "mnt", collections=[CONFIG], env=ENV)
    shards.append(shard.start())
    rng = np.random.default_rng(5)
    ids, vectors = [f"item-{i}" for i in range(300)], unit_vectors(rng, 300)
    with grpc.insecure_channel(shard.address) as channel:
        stub = indexer_pb2_grpc.IndexerStub(channel)
        for start in range(0, len(ids), BATCH):
            stub.Upsert(
                upsert_request(ids[start : start + BATCH], vectors[start : start + BATCH]), timeout=30
            )
        stub.Snapshot(indexer_pb2.SnapshotRequest(), timeout=30)
    live_segments = sorted(
        p.name for p in (collection_dir(tmp_path / "backing", "docs") / "wal").glob("*.log")
    )
    assert segment_name(1) not in live_segments, live_segments  # the log no longer holds these writes
    shard.kill()
    report = fs.cut(tmp_path / "cut")
    fs.unmount()
    assert not report["internal_errors"], report["internal_errors"]

    restarted = ShardProcess(0, 1, tmp_path / "cut", collections=[CONFIG], env=ENV)
    shards.append(restarted.start())
    with grpc.insecure_channel(restarted.address) as channel:
        present = get_all(indexer_pb2_grpc.IndexerStub(channel), ids)
    assert sorted(present) == sorted(ids)
    assert all(same(present[i], v) for i, v in zip(ids, vectors))
