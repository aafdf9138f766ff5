"""Indexer shards as real processes on free 127.0.0.1 ports: recall, sharding, durability, rebuilds
under load, deletes, and every kind of bad input."""

from __future__ import annotations

import json
import threading
import time
from functools import partial
from pathlib import Path

import faiss
import grpc
import numpy as np
import pytest

from semsearch.core.collections import CollectionConfig
from semsearch.core.errors import FailedPrecondition
from semsearch.core.merge import merge_topk
from semsearch.core.routing import shard_for
from semsearch.rpc import health_serving
from semsearch.tools.launch import ShardProcess
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc
from services.indexer import index_ops, search_ops
from services.indexer.coordinator import train_collection, wait_for_rebuilds
from tests.conftest import collection_dir

pytestmark = pytest.mark.integration

DIM = 32
CONFIG = CollectionConfig(
    name="docs", dim=DIM, factory="IVF64,PQ16", train_sample=10_000, rerank_min=50, recall_target=0.95
)


def dataset(n: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors [n, DIM] (more realistic than isotropic noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(8, n // 200), DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def items(x: np.ndarray, start: int = 0, prefix: str = "v") -> list[common_pb2.Item]:
    return [
        common_pb2.Item(
            id=f"{prefix}{start + i}", vector=common_pb2.Vector(values=v), metadata={"i": str(start + i)}
        )
        for i, v in enumerate(x)
    ]


def upsert(stub, x: np.ndarray, start: int = 0, batch: int = 1000, prefix: str = "v") -> None:
    for s in range(0, len(x), batch):
        stub.Upsert(
            indexer_pb2.ShardUpsertRequest(
                collection="docs", items=items(x[s : s + batch], start + s, prefix)
            ),
            timeout=60,
        )


def search(stub, q: np.ndarray, k: int = 10, **kwargs) -> indexer_pb2.ShardSearchResponse:
    request = indexer_pb2.ShardSearchRequest(
        collection="docs", queries=[common_pb2.Vector(values=v) for v in q], k=k, **kwargs
    )
    return stub.Search(request, timeout=60)


def ids_of(response) -> list[list[str]]:
    return [[h.id for h in r.hits] for r in response.results]


class Shards:
    """Start/stop shard processes; all are stopped at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ShardProcess] = []

    def start(
        self, shard: int = 0, num_shards: int = 1, name: str = "s", env: dict | None = None
    ) -> ShardProcess:
        process = ShardProcess(
            shard, num_shards, self.root / f"{name}{shard}", collections=[CONFIG], env=env or {}
        )
        self.started.append(process.start())
        return process

    def restart(self, process: ShardProcess) -> ShardProcess:
        process.start()
        return process

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def shards(tmp_path):
    manager = Shards(tmp_path)
    yield manager
    manager.stop_all()


def stub_for(process: ShardProcess):
    channel = grpc.insecure_channel(process.address)
    return channel, indexer_pb2_grpc.IndexerStub(channel)


def exact_ids(base: np.ndarray, q: np.ndarray, k: int = 10) -> np.ndarray:
    _, rows = faiss.knn(q, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows


def test_recall_after_training_meets_floor(shards):
    data = dataset(20_200)
    base, queries = data[:20_000], data[20_000:]  # held-out queries from the same distribution
    shard = shards.start()
    channel, stub = stub_for(shard)
    upsert(stub, base)
    exact_before = ids_of(search(stub, queries))
    truth = exact_ids(base, queries)
    assert search_ops.recall_at_k(np.array([[int(i[1:]) for i in r] for r in exact_before]), truth) == 1.0

    report = train_collection([channel], CONFIG)
    wait_for_rebuilds([channel], "docs", report["template_id"], timeout_s=120)
    response = search(stub, queries)
    assert response.generation == 1 and response.index == "IVF64,PQ16"
    found = np.array([[int(i[1:]) for i in r] for r in ids_of(response)])
    recall = search_ops.recall_at_k(found, truth)
    assert recall >= 0.93, (recall, report["depth_table"])
    exhaustive = search(stub, queries, nprobe=64, rerank=400)
    found = np.array([[int(i[1:]) for i in r] for r in ids_of(exhaustive)])
    assert search_ops.recall_at_k(found, truth) >= 0.99

    # The trained index survives a restart even with no write after the rebuild.
    shard.stop()
    shards.restart(shard)
    _, stub = stub_for(shard)
    again = search(stub, queries)
    assert again.generation == 1 and again.index == "IVF64,PQ16"
    assert ids_of(again) == ids_of(response)


def test_three_shards_equal_one_shard(shards):
    data = dataset(6_050, seed=1)
    base, queries = data[:6_000], data[6_000:]
    single = shards.start(name="one")
    _, single_stub = stub_for(single)
    upsert(single_stub, base)
    trio = [shards.start(shard=i, num_shards=3, name="three") for i in range(3)]
    stubs = [stub_for(p)[1] for p in trio]
    owners = np.array([shard_for(f"v{i}", 3) for i in range(len(base))])
    for s, stub in enumerate(stubs):
        rows = np.nonzero(owners == s)[0]
        request_items = [items(base[i : i + 1], int(i))[0] for i in rows]
        for b in range(0, len(request_items), 1000):
            stub.Upsert(indexer_pb2.ShardUpsertRequest(collection="docs", items=request_items[b : b + 1000]))
    expected = search(single_stub, queries, k=10)
    per_shard = [search(stub, queries, k=10) for stub in stubs]
    for qi, want in enumerate(expected.results):
        merged = merge_topk([r.results[qi].hits for r in per_shard], 10)
        assert [h.id for h in merged] == [h.id for h in want.hits]
        np.testing.assert_allclose([h.score for h in merged], [h.score for h in want.hits], rtol=1e-6)


def test_sigkill_loses_no_acknowledged_write_and_torn_tail_is_skipped(shards):
    shard = shards.start()
    _, stub = stub_for(shard)
    acked: list[int] = []
    stop = threading.Event()
    x = dataset(20_000, seed=3)

    def writer() -> None:
        for s in range(0, len(x), 50):
            if stop.is_set():
                return
            try:
                stub.Upsert(
                    indexer_pb2.ShardUpsertRequest(collection="docs", items=items(x[s : s + 50], s)),
                    timeout=10,
                )
            except grpc.RpcError:
                return
            acked.append(s)

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 20
    while len(acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    shard.kill()  # SIGKILL in the middle of the stream
    stop.set()
    thread.join(10)
    assert len(acked) >= 40
    # A torn record at the end of the log, as a crash in the middle of a write leaves it.
    wal_dir = collection_dir(shard.data_dir, "docs") / "wal"
    last = sorted(wal_dir.glob("wal-*.log"))[-1]
    with open(last, "ab") as f:
        f.write(b"SWAL\x00\x10\x00\x00partial-record")
    shards.restart(shard)
    _, stub = stub_for(shard)
    wanted = [f"v{s + i}" for s in acked for i in range(50)]
    response = stub.Get(indexer_pb2.ShardGetRequest(collection="docs", ids=wanted))
    assert not response.missing, f"{len(response.missing)} acknowledged items lost"
    assert (
        "dropped" in (shard.data_dir / "shard.log").read_text()
        or "torn" in (shard.data_dir / "shard.log").read_text().lower()
    )
    # Writes continue after recovery.
    stub.Upsert(indexer_pb2.ShardUpsertRequest(collection="docs", items=items(x[:1], 0, prefix="after")))
    assert not stub.Get(indexer_pb2.ShardGetRequest(collection="docs", ids=["after0"])).missing


def test_searches_never_fail_during_train_rebuild_and_swap(shards):
    base = dataset(30_000, seed=4)
    shard = shards.start()
    channel, stub = stub_for(shard)
    upsert(stub, base)
    queries = dataset(20, seed=5)
    results: list[tuple[int, bool]] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def searcher() -> None:
        local = indexer_pb2_grpc.IndexerStub(grpc.insecure_channel(shard.address))
        for _ in range(100_000):
            if stop.is_set():
                return
            try:
                response = search(local, queries[:2])
                results.append((response.generation, all(len(r.hits) == 10 for r in response.results)))
            except grpc.RpcError as exc:
                errors.append(exc)

    def writer() -> None:
        more = dataset(2_000, seed=6)
        for s in range(0, len(more), 100):
            if stop.is_set():
                return
            stub.Upsert(
                indexer_pb2.ShardUpsertRequest(collection="docs", items=items(more[s : s + 100], s, "w"))
            )

    threads = [threading.Thread(target=searcher), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        report = train_collection([channel], CONFIG)
        wait_for_rebuilds([channel], "docs", report["template_id"], timeout_s=120)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors
    generations = [g for g, _ in results]
    assert generations[0] == 0 and generations[-1] == 1
    assert generations == sorted(generations)
    assert all(full for _, full in results)
    # Writes made during the rebuild are in the new index.
    response = stub.Get(indexer_pb2.ShardGetRequest(collection="docs", ids=["w1999", "w0"]))
    assert not response.missing
    more = dataset(2_000, seed=6)
    hit = search(stub, more[1999:2000], k=1)
    assert hit.results[0].hits[0].id == "w1999" and hit.generation == 1


def test_deletes_and_upserts_visible_at_once_and_after_restart(shards):
    base = dataset(3_000, seed=7)
    shard = shards.start()
    _, stub = stub_for(shard)
    upsert(stub, base)
    q = base[10:11]
    assert ids_of(search(stub, q, k=1))[0] == ["v10"]
    stub.Delete(indexer_pb2.ShardDeleteRequest(collection="docs", ids=["v10"]))
    assert "v10" not in ids_of(search(stub, q, k=10))[0]
    replacement = -base[20:21]  # v20 now points the other way
    stub.Upsert(indexer_pb2.ShardUpsertRequest(collection="docs", items=items(replacement, 20)))
    assert "v20" not in ids_of(search(stub, base[20:21], k=10))[0]
    assert ids_of(search(stub, replacement, k=1))[0] == ["v20"]
    stats = stub.Stats(indexer_pb2.StatsRequest()).collections[0]
    assert stats.count == 2_999

    shard.stop()
    shards.restart(shard)
    _, stub = stub_for(shard)
    assert "v10" not in ids_of(search(stub, q, k=10))[0]
    assert ids_of(search(stub, replacement, k=1))[0] == ["v20"]
    assert stub.Get(indexer_pb2.ShardGetRequest(collection="docs", ids=["v10"])).missing == ["v10"]
    assert stub.Stats(indexer_pb2.StatsRequest()).collections[0].count == 2_999


def test_packed_hits_are_the_same_hits_as_hit_messages(shards):
    base = dataset(500, seed=3)
    shard = shards.start()
    _, stub = stub_for(shard)
    upsert(stub, base)
    q = base[:4]
    # The last case asks for more hits than the slice holds: every row is short.
    for kwargs in ({"k": 7}, {"k": 7, "exclude_ids": ["v1"], "include_payloads": True}, {"k": 600}):
        plain = search(stub, q, **kwargs)
        packed = search(stub, q, packed=True, **kwargs)
        assert not packed.results and list(packed.hit_counts) == [len(r.hits) for r in plain.results]
        hits = [h for r in plain.results for h in r.hits]
        assert list(packed.hit_ids) == [h.id for h in hits]
        assert np.frombuffer(packed.hit_scores, "<f4").tolist() == [h.score for h in hits]
        assert [json.loads(m) for m in packed.hit_metadata] == [dict(h.metadata) for h in hits]
        assert len(packed.hit_payloads) == (len(hits) if kwargs.get("include_payloads") else 0)
    assert list(packed.hit_counts) == [500] * 4


def test_bad_inputs_get_clear_statuses_and_shard_keeps_serving(shards):
    shard = shards.start(
        env={"SEMSEARCH_INDEXER_MAX_ITEMS": "100", "SEMSEARCH_INDEXER_MAX_MESSAGE_BYTES": "200000"}
    )
    _, stub = stub_for(shard)
    upsert(stub, dataset(50, seed=8))
    good = dataset(1, seed=9)[0]

    def status(call, request):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10)
        return info.value.code(), info.value.details()

    U = partial(indexer_pb2.ShardUpsertRequest, collection="docs")
    S = partial(indexer_pb2.ShardSearchRequest, collection="docs")

    def V(values) -> common_pb2.Vector:
        return common_pb2.Vector(values=values)

    Item = common_pb2.Item
    cases = [
        (stub.Upsert, U(), grpc.StatusCode.INVALID_ARGUMENT, "items"),
        (
            stub.Upsert,
            U(items=[Item(id="x", vector=V([1.0] * 5))]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "items[0].vector",
        ),
        (
            stub.Upsert,
            U(items=[Item(id="x", vector=V([float("nan")] * DIM))]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            stub.Upsert,
            U(items=[Item(id="", vector=V(good))]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "items[0].id",
        ),
        (
            stub.Upsert,
            U(items=items(dataset(2), 0) + items(dataset(1), 0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "duplicate",
        ),
        (stub.Upsert, U(items=items(dataset(101))), grpc.StatusCode.INVALID_ARGUMENT, "items"),
        (
            stub.Upsert,
            indexer_pb2.ShardUpsertRequest(collection="nope", items=items(dataset(1))),
            grpc.StatusCode.NOT_FOUND,
            "collection",
        ),
        (stub.Search, S(), grpc.StatusCode.INVALID_ARGUMENT, "queries"),
        (stub.Search, S(queries=[V(good)], k=1001), grpc.StatusCode.INVALID_ARGUMENT, "k"),
        (stub.Search, S(queries=[V(good[:3])]), grpc.StatusCode.INVALID_ARGUMENT, "queries[0]"),
        (stub.Search, S(query_matrix=b"\0" * 12), grpc.StatusCode.INVALID_ARGUMENT, "query_matrix"),
        (
            stub.Search,
            S(queries=[V(good)], query_matrix=np.asarray(good, "<f4").tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "either",
        ),
        (
            stub.Search,
            indexer_pb2.ShardSearchRequest(collection="docs", queries=[V([float("inf")] * DIM)]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN or Inf",
        ),
        (
            stub.Search,
            S(queries=[V(good)], recall_target=1.5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "recall_target",
        ),
        (stub.Search, S(queries=[V(good)], k=10, rerank=5), grpc.StatusCode.INVALID_ARGUMENT, "rerank"),
        (
            stub.Search,
            indexer_pb2.ShardSearchRequest(collection="nope", queries=[V(good)]),
            grpc.StatusCode.NOT_FOUND,
            "nope",
        ),
        (
            stub.Delete,
            indexer_pb2.ShardDeleteRequest(collection="docs"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ids",
        ),
        (
            stub.InstallTemplate,
            indexer_pb2.InstallTemplateRequest(collection="docs", index=b"garbage"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "index",
        ),
        (
            stub.Upsert,
            U(items=[Item(id="big", vector=V(good), metadata={"x": "y" * 300_000})]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
    ]
    for call, request, code, fragment in cases:
        got_code, details = status(call, request)
        assert got_code == code, (request, got_code, details)
        assert fragment in details, (fragment, details)

    # A template of the wrong dimension, and one that is not trained.
    wrong = index_ops.train_template(dataset(2_000).repeat(2, axis=1), "IVF8,PQ8")
    code, details = status(stub.InstallTemplate, indexer_pb2.InstallTemplateRequest(
        collection="docs", index=index_ops.serialize(wrong), factory="IVF8,PQ8",
        nprobe_table=[indexer_pb2.NprobeRecall(nprobe=1, recall=1.0)]))  # fmt: skip
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "dimension" in details
    # Nothing above changed the data.
    assert not stub.Get(indexer_pb2.ShardGetRequest(collection="docs", ids=["v1"])).missing
    assert stub.Stats(indexer_pb2.StatsRequest()).collections[0].count == 50
    # A delete reports the ids that were not stored and deletes the others.
    response = stub.Delete(indexer_pb2.ShardDeleteRequest(collection="docs", ids=["v1", "ghost"]))
    assert response.count == 1 and list(response.missing) == ["ghost"]
    assert health_serving(shard.address)
    assert shard.alive()


def test_metrics_endpoint_exposes_shard_metrics(shards):
    import urllib.request

    shard = shards.start()
    _, stub = stub_for(shard)
    upsert(stub, dataset(100, seed=10))
    search(stub, dataset(3, seed=11))
    time.sleep(1.2)  # gauges refresh every second
    body = urllib.request.urlopen(f"http://127.0.0.1:{shard.metrics_port}/metrics", timeout=5).read().decode()
    for name in (
        "semsearch_indexer_search_duration_seconds_bucket",
        "semsearch_indexer_search_batch_queries_bucket",
        'semsearch_indexer_vectors{collection="docs"} 100.0',
        "semsearch_indexer_generation",
        "semsearch_indexer_log_bytes",
        "semsearch_indexer_writes_total",
        "semsearch_indexer_disk_free_bytes",
        'semsearch_indexer_writable{collection="docs"} 1.0',
        'semsearch_indexer_rows{collection="docs"} 100.0',
    ):
        assert name in body, name


def test_waiting_for_a_template_waits_for_that_template_not_a_rebuild_already_running(shards):
    data = dataset(20_000)
    shard = shards.start()
    channel, stub = stub_for(shard)
    upsert(stub, data)
    templates = [index_ops.train_template(data[seed::2], "IVF64,PQ16", False) for seed in (0, 1)]
    table = [indexer_pb2.NprobeRecall(nprobe=8, recall=0.95)]
    requests = [
        indexer_pb2.InstallTemplateRequest(
            collection="docs", index=index_ops.serialize(t), factory="IVF64,PQ16", nprobe_table=table
        )
        for t in templates
    ]
    # The second template arrives while the first one's rebuild runs: it is built after that one.
    first = stub.InstallTemplate(requests[0], timeout=60)
    second = stub.InstallTemplate(requests[1], timeout=60)
    wait_for_rebuilds([channel], "docs", second.template_id, timeout_s=120)
    stats = next(c for c in stub.Stats(indexer_pb2.StatsRequest()).collections if c.name == "docs")
    assert stats.serving_template_id == stats.template_id == second.template_id != ""
    # A template replaced before it served is an error, not a wait until the timeout.
    stub.InstallTemplate(requests[0], timeout=60)
    stub.InstallTemplate(requests[1], timeout=60)
    with pytest.raises(FailedPrecondition, match="replaced"):
        wait_for_rebuilds([channel], "docs", first.template_id, timeout_s=120)
