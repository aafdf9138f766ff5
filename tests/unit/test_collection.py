"""A collection's slice in-process: updates, k hits, overflow, rebuild races, snapshots, apply failures,
group commit, search memory, compaction, disk space."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import ResourceExhausted, Unavailable
from services.indexer import index_ops, snapshots
from services.indexer.collection import Collection
from services.indexer.items import ItemTable
from services.indexer.store import VectorStore

DIM = 16
CONFIG = CollectionConfig(name="c", dim=DIM, factory="IVF16,PQ4", rerank_min=20)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    x = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def opened(path: Path, **kwargs) -> Collection:
    kwargs.setdefault("fsync", False)
    kwargs.setdefault("min_free_bytes", 0)
    collection = Collection(CONFIG, path, **kwargs)
    collection.load()
    return collection


def fill(collection: Collection, x: np.ndarray, prefix: str = "v", start: int = 0) -> None:
    for s in range(0, len(x), 500):
        chunk = x[s : s + 500]
        collection.upsert([f"{prefix}{start + s + i}" for i in range(len(chunk))], chunk, [{}] * len(chunk))


def train(collection: Collection) -> None:
    """Install a template trained on the collection's own vectors and rebuild synchronously."""
    sample = collection.sample(5_000, seed=0)
    template = index_ops.train_template(sample, CONFIG.factory)
    table = index_ops.measure_depth_table(template, sample[100:], sample[:100], CONFIG.rerank_depth(10))
    collection.install_template(index_ops.serialize(template), CONFIG.factory, table)
    collection._rebuild_thread.join()
    assert collection.trained


def ids(collection: Collection, query: np.ndarray, k: int = 10, nprobe: int = 0) -> list[str]:
    outcome = collection.search(
        query[None, :], k, collection.resolve_depth(nprobe, 0), CONFIG.rerank_depth(k)
    )
    return [outcome.items.ids[s] for s in outcome.slots[0].tolist() if s >= 0]


@pytest.mark.parametrize("trained", [False, True])
def test_an_item_replaced_many_times_is_found_once(tmp_path, trained):
    c = opened(tmp_path)
    x = vectors(3_000)
    fill(c, x)
    if trained:
        train(c)
    target = vectors(1, seed=9)[0]
    for _ in range(60):
        c.upsert(["same"], target[None, :], [{}])
    found = ids(c, target, k=5)
    assert found[0] == "same" and found.count("same") == 1 and len(found) == 5


def test_k_hits_whenever_the_slice_holds_k_live_items(tmp_path):
    c = opened(tmp_path)
    fill(c, vectors(3_000))
    train(c)
    for k in (50, 700):
        found = ids(c, vectors(1, seed=5)[0], k=k, nprobe=1)  # one list holds ~190 vectors
        assert len(found) == k and len(set(found)) == k


def test_huge_values_are_normalised_not_zeroed(tmp_path):
    c = opened(tmp_path)
    huge = np.full((1, DIM), 1e20, dtype=np.float32)
    huge[0, 0] = 3e20
    c.upsert(["huge"], huge, [{}])
    stored = c.get(["huge"])[0][0][1]
    expected = huge[0] / np.linalg.norm(huge[0].astype(np.float64))
    np.testing.assert_allclose(stored, expected, rtol=1e-6)


def test_a_write_applied_while_a_rebuild_starts_is_in_the_new_index(tmp_path, monkeypatch):
    c = opened(tmp_path)
    x = vectors(3_000)
    fill(c, x)
    sample = c.sample(3_000, seed=0)
    template = index_ops.train_template(sample, CONFIG.factory)
    in_apply, release = threading.Event(), threading.Event()
    real_add = ItemTable.add

    def slow_add(self, first, item_ids, metadata=None):
        if item_ids == ["late"]:
            in_apply.set()  # the vector is stored, the table does not know it yet
            release.wait(10)
        return real_add(self, first, item_ids, metadata)

    monkeypatch.setattr(ItemTable, "add", slow_add)
    late = vectors(1, seed=11)
    writer = threading.Thread(target=c.upsert, args=(["late"], late, [{}]))
    writer.start()
    assert in_apply.wait(10)
    c.install_template(index_ops.serialize(template), CONFIG.factory, [(1, 0.5), (16, 1.0)])
    time.sleep(0.3)  # the rebuild reads what to copy while the write is half applied
    release.set()
    writer.join(10)
    c._rebuild_thread.join(30)
    assert c.trained and c.generation == 1
    assert ids(c, late[0], k=1, nprobe=16) == ["late"]
    c.close()
    again = opened(tmp_path)  # and the snapshot written after the swap holds it too
    assert ids(again, late[0], k=1, nprobe=16) == ["late"]


def test_a_snapshot_never_deletes_one_published_after_it(tmp_path, monkeypatch):
    c = opened(tmp_path)
    fill(c, vectors(100))
    # Snapshot A pauses between publishing its folder and cleaning up older ones...
    published, resume = threading.Event(), threading.Event()
    real_cleanup = snapshots.remove_unpublished

    def paused_cleanup(directory, keep):
        if threading.current_thread().name == "A":
            published.set()
            resume.wait(10)
        real_cleanup(directory, keep)

    monkeypatch.setattr(snapshots, "remove_unpublished", paused_cleanup)
    a = threading.Thread(target=c.snapshot, name="A")
    a.start()
    assert published.wait(10)
    # ...while a write lands and snapshot B runs.
    c.upsert(["late"], vectors(1, seed=5), [{}])
    b = threading.Thread(target=c.snapshot, name="B")
    b.start()
    time.sleep(0.3)
    resume.set()
    a.join(10)
    b.join(10)
    published_dir = snapshots.read_current(tmp_path)["dir"]
    assert (tmp_path / published_dir).is_dir(), "CURRENT names a deleted snapshot"
    assert sorted(p.name for p in tmp_path.glob("snap-*")) == [published_dir]
    again = opened(tmp_path)
    assert again.count == 101 and not again.get(["late"])[1]


def test_a_snapshot_folder_left_by_a_crash_before_publication_is_replaced(tmp_path):
    c = opened(tmp_path)
    fill(c, vectors(100))
    c.snapshot()
    c.upsert(["one-more"], vectors(1, seed=3), [{}])
    # A crash between renaming the folder into place and updating CURRENT left this behind.
    leftover = tmp_path / snapshots.name_of(c.lsn, c.generation)
    leftover.mkdir()
    (leftover / "junk").write_text("x")
    assert c.snapshot()
    assert snapshots.read_current(tmp_path)["dir"] == leftover.name and not (leftover / "junk").exists()
    assert opened(tmp_path).count == 101


def test_every_snapshot_file_is_fsynced_before_current_is_published(tmp_path, monkeypatch):
    c = opened(tmp_path, fsync=True)
    fill(c, vectors(3_000))
    train(c)
    c.upsert(["x"], vectors(1, seed=4), [{}])
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    real_replace = os.replace
    published_after: list[list[str]] = []

    def recording_replace(src, dst):
        if Path(dst).name == "CURRENT":
            published_after.append(list(synced))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    assert c.snapshot()
    before = published_after[0]
    # SQLite fsyncs its own files from C (not through os.fsync); the power-cut test covers them.
    for name in ("index.faiss", "ids.json", "alive.npy", "manifest.json"):
        assert any(p.endswith(name) for p in before), (name, before)


def test_a_failed_apply_stops_writes_and_a_restart_recovers_the_logged_write(tmp_path, monkeypatch):
    c = opened(tmp_path)
    fill(c, vectors(100))
    real_add = ItemTable.add
    calls = {"n": 0}

    def failing_add(self, first, item_ids, metadata=None):
        calls["n"] += 1
        if item_ids == ["boom"]:
            raise MemoryError("simulated")
        return real_add(self, first, item_ids, metadata)

    monkeypatch.setattr(ItemTable, "add", failing_add)
    with pytest.raises(Unavailable, match="in the log but could not be applied"):
        c.upsert(["boom"], vectors(1, seed=1), [{}])
    with pytest.raises(Unavailable, match="stopped taking writes"):
        c.upsert(["after"], vectors(1, seed=2), [{}])
    assert len(ids(c, vectors(1, seed=1)[0])) == 10  # searches go on
    monkeypatch.setattr(ItemTable, "add", real_add)
    c.close()
    again = opened(tmp_path)
    assert again.count == 101 and not again.get(["boom"])[1]  # replayed from the log
    stored = again.get([f"v{i}" for i in range(100)] + ["boom"])[0]
    assert all(item_id == again.items.ids[again.items.slot_of[item_id]] for item_id, *_ in stored)


def test_concurrent_writers_share_fsyncs(tmp_path, monkeypatch):
    c = opened(tmp_path, fsync=True)
    fsyncs = {"wal": 0}
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        if "/wal" in os.readlink(f"/proc/self/fd/{fd}"):
            fsyncs["wal"] += 1
            time.sleep(0.05)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    x = vectors(8)
    start = threading.Barrier(8)

    def writer(i: int) -> None:
        start.wait()
        c.upsert([f"w{i}"], x[i : i + 1], [{}])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.count == 8
    assert fsyncs["wal"] <= 4, fsyncs  # one writer's fsync covers the others that wrote meanwhile


def test_search_memory_is_bounded(tmp_path):
    c = opened(tmp_path, search_budget_bytes=64 * 1024)
    fill(c, vectors(3_000))
    train(c)
    with pytest.raises(ResourceExhausted, match="re-rank depth"):
        c.check_search_budget(1000, 2000)
    c.check_search_budget(10, 100)  # 100 x 16 x 4 bytes fits
    queries = vectors(40, seed=8)
    chunked = c.search(queries, 10, 4, 100)  # 40 queries x 100 candidates do not fit at once
    roomy = Collection(CONFIG, tmp_path / "unused", search_budget_bytes=1 << 30)
    roomy.__dict__.update({k: v for k, v in c.__dict__.items() if k != "search_budget_bytes"})
    whole = roomy.search(queries, 10, 4, 100)
    np.testing.assert_array_equal(chunked.slots, whole.slots)


@pytest.mark.parametrize("trained", [False, True])
def test_compaction_keeps_disk_and_memory_within_1_5x_of_live_data(tmp_path, trained):
    c = opened(tmp_path, fsync=True)
    x = vectors(2_000)
    fill(c, x)
    if trained:
        train(c)
    generation = c.generation
    for round_ in range(10):  # 10 updates of every item
        fill(c, vectors(2_000, seed=round_ + 1))
    assert c.items.rows == 22_000 and c.count == 2_000 and c.needs_compaction()
    c.maintenance()  # what the shard's maintenance loop runs every second
    c._rebuild_thread.join(60)
    assert c.generation == generation + 1 and c.items.rows == 2_000
    live_bytes = 2_000 * DIM * 4
    vector_files = sum(p.stat().st_size for p in tmp_path.glob("vectors-*"))
    assert vector_files <= 1.5 * live_bytes, vector_files
    log_bytes = c.wal.size_bytes
    assert log_bytes <= 0.5 * live_bytes, log_bytes  # the snapshot after the swap covers the whole log
    assert len(c.items.ids) == 2_000 and len(c.items.alive()) == 2_000
    last = vectors(2_000, seed=10)
    assert ids(c, last[7], k=1, nprobe=16) == ["v7"]
    c.close()
    again = opened(tmp_path)
    assert again.count == 2_000 and again.items.rows == 2_000
    assert ids(again, last[7], k=1, nprobe=16) == ["v7"]


def test_writes_are_refused_before_the_disk_is_full(tmp_path):
    c = opened(tmp_path, min_free_bytes=1 << 60)
    with pytest.raises(ResourceExhausted, match="disk is nearly full"):
        c.upsert(["x"], vectors(1), [{}])
    assert c.count == 0 and c.wal.last_lsn == 0  # nothing was logged


def test_a_failed_rebuild_is_retried_and_resumes_after_a_restart(tmp_path, monkeypatch):
    c = opened(tmp_path)
    fill(c, vectors(3_000))
    sample = c.sample(3_000, seed=0)
    template = index_ops.train_template(sample, CONFIG.factory)
    real_reserve = VectorStore.reserve
    failures = {"left": 1}

    def failing_reserve(self, n, *, exact=False):
        if exact and failures["left"]:
            failures["left"] -= 1
            raise OSError(28, "No space left on device")
        return real_reserve(self, n, exact=exact)

    monkeypatch.setattr(VectorStore, "reserve", failing_reserve)
    c.install_template(index_ops.serialize(template), CONFIG.factory, [(1, 0.5), (16, 1.0)])
    c._rebuild_thread.join(30)
    assert not c.trained and c.rebuild_failures == 1
    c.maintenance()  # backed off: not yet
    assert not c.rebuilding
    c._next_rebuild_at = 0.0  # the back-off has passed
    c.maintenance()
    c._rebuild_thread.join(30)
    assert c.trained and c.generation == 1 and c.rebuild_failures == 0

    # A template installed just before a crash is built after the restart.
    other = opened(tmp_path / "other")
    fill(other, vectors(3_000))
    other.install_template(index_ops.serialize(template), CONFIG.factory, [(1, 0.5), (16, 1.0)])
    other._rebuild_thread.join(30)
    (tmp_path / "other" / "template.json").write_text(
        (tmp_path / "other" / "template.json").read_text().replace(other.template_id, "f" * 16)
    )  # as if a newer template had been installed and the shard died before building it
    other.close()
    again = opened(tmp_path / "other")
    again.maintenance()
    again._rebuild_thread.join(30)
    assert again.trained and again.generation == 2 and again.template_id == "f" * 16
