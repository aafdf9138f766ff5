"""A shard whose disk fills up: writes get RESOURCE_EXHAUSTED, searches go on, nothing acknowledged is
lost, and once space is freed writes resume and a restart loads cleanly (a real, tiny ext4 volume)."""

from __future__ import annotations

import os
import shutil
import subprocess

import grpc
import numpy as np
import pytest

from semsearch.core.collections import CollectionConfig
from semsearch.tools.launch import ShardProcess
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4"),
        reason="mounting a loop-device filesystem needs root, losetup and mkfs.ext4",
    ),
]

DIM = 256  # 1 KB per vector: the volume fills after a few thousand items
CONFIG = CollectionConfig(name="docs", dim=DIM)


@pytest.fixture
def small_volume(tmp_path):
    """A 40 MB ext4 filesystem on a loop device, mounted at tmp_path / "mnt"."""
    image, mountpoint = tmp_path / "disk.img", tmp_path / "mnt"
    mountpoint.mkdir()
    with open(image, "wb") as f:
        f.truncate(40 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def upsert(stub, start: int, n: int, rng: np.random.Generator) -> grpc.StatusCode:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    items = [common_pb2.Item(id=f"v{start + i}", vector=common_pb2.Vector(values=v)) for i, v in enumerate(x)]
    try:
        stub.Upsert(indexer_pb2.ShardUpsertRequest(collection="docs", items=items), timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_full_disk_refuses_writes_keeps_searching_and_loses_nothing(small_volume, tmp_path):
    # Something else holds 8 MB of the volume; the operator deletes it once the alert fires.
    filler = small_volume / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (8 << 20))
    env = {"SEMSEARCH_INDEXER_MIN_FREE_BYTES": "0", "SEMSEARCH_INDEXER_SNAPSHOT_EVERY": "20"}
    shard = ShardProcess(
        0, 1, small_volume / "shard", collections=[CONFIG], env=env, log_path=tmp_path / "shard.log"
    )
    shard.start()
    try:
        stub = indexer_pb2_grpc.IndexerStub(grpc.insecure_channel(shard.address))
        rng = np.random.default_rng(0)
        acked, code = 0, grpc.StatusCode.OK
        for _ in range(400):  # bounded: 40 MB hold at most ~40,000 such items
            code = upsert(stub, acked, 100, rng)
            if code != grpc.StatusCode.OK:
                break
            acked += 100
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, code
        assert acked > 5_000 and shard.alive(), acked
        # Searches go on.
        query = indexer_pb2.ShardSearchRequest(
            collection="docs", queries=[common_pb2.Vector(values=rng.normal(size=DIM))], k=5
        )
        assert len(stub.Search(query, timeout=30).results[0].hits) == 5
        got = stub.Get(indexer_pb2.ShardGetRequest(collection="docs", ids=[f"v{i}" for i in range(acked)]))
        assert not got.missing
        # Space freed: writes resume.
        filler.unlink()
        assert upsert(stub, acked, 100, rng) == grpc.StatusCode.OK
        acked += 100
    finally:
        shard.stop()
    assert "Bus error" not in (tmp_path / "shard.log").read_text()
    # A restart on the same volume loads every acknowledged item: no SIGBUS, no corruption.
    shard.start()
    try:
        stub = indexer_pb2_grpc.IndexerStub(grpc.insecure_channel(shard.address))
        got = stub.Get(indexer_pb2.ShardGetRequest(collection="docs", ids=[f"v{i}" for i in range(acked)]))
        assert not got.missing
        assert stub.Stats(indexer_pb2.StatsRequest()).collections[0].count == acked
    finally:
        shard.stop()


def test_the_free_space_reserve_refuses_writes_before_the_disk_is_full(small_volume, tmp_path):
    env = {"SEMSEARCH_INDEXER_MIN_FREE_BYTES": str(30 << 20)}
    shard = ShardProcess(
        0, 1, small_volume / "shard", collections=[CONFIG], env=env, log_path=tmp_path / "shard.log"
    )
    shard.start()
    try:
        stub = indexer_pb2_grpc.IndexerStub(grpc.insecure_channel(shard.address))
        rng = np.random.default_rng(1)
        codes = [upsert(stub, i * 100, 100, rng) for i in range(100)]
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        refused = codes.index(grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert all(c == grpc.StatusCode.OK for c in codes[:refused])
        with pytest.raises(grpc.RpcError) as info:
            stub.Upsert(
                indexer_pb2.ShardUpsertRequest(
                    collection="docs",
                    items=[common_pb2.Item(id="x", vector=common_pb2.Vector(values=[1.0] * DIM))],
                )
            )
        assert "disk is nearly full" in info.value.details() and "searches go on" in info.value.details()
        assert shutil.disk_usage(small_volume).free > (8 << 20)  # refused well before the disk was full
    finally:
        shard.stop()
