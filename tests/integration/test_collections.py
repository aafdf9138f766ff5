"""Collections created by client apps at run time, on a real stack: create, describe, list, drop; shards
that were down converge; restarts keep collections, items, payloads and thumbnails; metrics and index
kinds; every bad input."""

from __future__ import annotations

import io
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from semsearch.client import Item, SemsearchClient
from semsearch.datasets import fashion_mnist
from semsearch.tools.stack import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    home = tmp_path_factory.mktemp("collections") / "stack"
    with Stack(home, model_repository, num_shards=2).start() as stack:
        yield stack


@pytest.fixture
def client(stack):
    with SemsearchClient(stack.gateway_address, timeout_s=60) as c:
        yield c


def rpc_error(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_create_describe_list_and_drop(client, stack):
    info = client.create_collection("notes", dim=16, metric="inner_product", fields={"kind": "string"})
    assert (info.name, info.dim, info.state, info.shards_total) == ("notes", 16, "exact", 2)
    again = client.create_collection("notes", dim=16, metric="inner_product", fields={"kind": "string"})
    assert again.spec == info.spec  # the same settings: nothing happens
    code, details = rpc_error(lambda: client.create_collection("notes", dim=32, metric="inner_product"))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert details == (
        "collection 'notes' exists with other settings: spec.dim: 16 exists, 32 requested; "
        "spec.fields: 'kind:string' exists, 'none' requested"
    )
    rng = np.random.default_rng(0)
    client.upsert(
        "notes", [Item(id=f"n{i}", vector=rng.normal(size=16), metadata={"kind": "a"}) for i in range(50)]
    )
    described = client.describe_collection("notes")
    assert described.count == 50 and sum(s.count for s in described.shards) == 50
    assert all(s.disk_bytes > 0 for s in described.shards) and len(described.shards) == 2
    assert "notes" in {c.name for c in client.collections()}
    folders = [list((s.data_dir / "collections").glob("notes-*")) for s in stack.shards]
    assert all(len(f) == 1 for f in folders)
    client.drop_collection("notes")
    assert "notes" not in {c.name for c in client.collections()}
    assert rpc_error(lambda: client.search("notes", vector=np.ones(16)))[0] == grpc.StatusCode.NOT_FOUND
    assert not any(f[0].exists() for f in folders)  # the disk is freed on every shard
    for shard in stack.shards:  # and its series leave the metrics (the dashboard's panels)
        page = urllib.request.urlopen(f"http://127.0.0.1:{shard.metrics_port}/metrics", timeout=5).read()
        assert b'collection="notes"' not in page
    # A new collection of the same name starts empty.
    client.create_collection("notes", dim=16)
    assert client.describe_collection("notes").count == 0
    client.drop_collection("notes")


def test_l2_vectors_match_numpy_exact_search(client):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10_000, 64)).astype(np.float32) * rng.uniform(0.5, 2, size=(10_000, 1)).astype(
        np.float32
    )
    client.create_collection("points", dim=64, metric="l2")
    for start in range(0, len(x), 1000):
        response = client.upsert(
            "points", [Item(id=f"p{i}", vector=x[i]) for i in range(start, start + 1000)]
        )
        assert response.succeeded == 1000
    queries = rng.normal(size=(20, 64)).astype(np.float32)
    for q in queries:
        hits = client.search("points", vector=q, k=10, no_cache=True).hits
        distances = ((x - q) ** 2).sum(axis=1)
        expected = np.argsort(distances)[:10]
        assert [h.id for h in hits] == [f"p{i}" for i in expected]
        np.testing.assert_allclose([-h.score for h in hits], distances[expected], rtol=1e-4)
    client.drop_collection("points")


@pytest.mark.parametrize("index", ["hnsw", "ivf_pq"])
def test_index_kinds_build_and_answer(client, stack, index):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(30, 32))
    x = (centres[rng.integers(0, 30, 4_000)] + 0.3 * rng.normal(size=(4_000, 32))).astype(np.float32)
    name = f"kind-{index}"
    client.create_collection(name, dim=32, index=index, exact_until=3_000)
    for start in range(0, len(x), 1000):
        client.upsert(name, [Item(id=f"v{i}", vector=x[i]) for i in range(start, start + 1000)])
    deadline = time.monotonic() + 180
    while client.describe_collection(name).state != "indexed" and time.monotonic() < deadline:
        time.sleep(0.5)
    info = client.describe_collection(name)
    assert info.state == "indexed", info
    assert ("HNSW" in info.index) == (index == "hnsw")
    found = 0
    for i in range(0, 4_000, 200):
        response = client.search(name, vector=x[i], k=10, no_cache=True)
        assert len(response.hits) == 10 and set(response.generations.values()) == {1}
        found += response.hits[0].id == f"v{i}"
    assert found >= 19
    client.drop_collection(name)


def test_thumbnails_and_texts_are_kept_and_returned(client):
    client.create_collection("pics", model="efficientnet_lite0")
    client.create_collection("words", model="minilm_l6", thumbnails=False)
    images = fashion_mnist("test")
    photo = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 120, 200)).save(photo, format="JPEG")
    assert (
        client.upsert(
            "pics", [Item(id="shoe", image=images.png(0)), Item(id="photo", image=photo.getvalue())]
        ).succeeded
        == 2
    )
    assert client.upsert("words", [Item(id="w1", text="a sentence kept with its item")]).succeeded == 1
    got = {i.id: i for i in client.get("pics", ["shoe", "photo"], include_payloads=True).items}
    thumb = Image.open(io.BytesIO(got["photo"].payload))
    assert thumb.format == "WEBP" and max(thumb.size) == 128 and len(got["photo"].payload) < 8_000
    assert Image.open(io.BytesIO(got["shoe"].payload)).size == (28, 28)  # never upscaled
    assert not client.get("pics", ["shoe"]).items[0].payload  # only when asked for
    hits = client.search("pics", image=images.png(0), k=2, include_payloads=True, no_cache=True).hits
    assert hits[0].id == "shoe" and hits[0].payload == got["shoe"].payload
    text = client.get("words", ["w1"], include_payloads=True).items[0].payload
    assert text.decode() == "a sentence kept with its item"


def test_a_collection_created_while_a_shard_is_down_is_there_when_it_comes_back(client, stack):
    stack.shards[1].kill()
    try:
        client.create_collection("late", dim=8)
        ids = [f"l{i}" for i in range(40)]
        response = client.upsert("late", [Item(id=i, vector=np.ones(8) + j) for j, i in enumerate(ids)])
        assert 0 < response.succeeded < 40  # items of the down shard fail alone, retryably
    finally:
        stack.start_shard(1)
    deadline = time.monotonic() + 15  # the gateway reconnects within about a second
    while time.monotonic() < deadline:
        response = client.upsert("late", [Item(id=i, vector=np.ones(8) + j) for j, i in enumerate(ids)])
        if response.succeeded == 40:
            break
        time.sleep(0.3)
    assert response.succeeded == 40, [r.error for r in response.results if not r.ok][:2]
    assert "late" in {c.name for c in client.collections()}
    assert client.describe_collection("late").count == 40
    client.drop_collection("late")


def test_restarting_every_process_keeps_collections_items_and_payloads(client, stack):
    client.create_collection("kept", model="efficientnet_lite0", fields={"label": "string"})
    images = fashion_mnist("test")
    client.upsert("kept", [Item(id=f"k{i}", image=images.png(i), metadata={"label": "x"}) for i in range(10)])
    before = client.get("kept", [f"k{i}" for i in range(10)], include_payloads=True, include_vectors=True)
    stack.stop()
    stack.start()
    with SemsearchClient(stack.gateway_address, timeout_s=60) as again:
        after = again.get("kept", [f"k{i}" for i in range(10)], include_payloads=True, include_vectors=True)
        info = again.describe_collection("kept")
        again.drop_collection("kept")
    assert [(i.id, dict(i.metadata), i.payload) for i in after.items] == [
        (i.id, dict(i.metadata), i.payload) for i in before.items
    ]
    assert info.spec.fields[0].name == "label" and info.count == 10


def test_bad_settings_name_the_field(client):
    cases = [
        (dict(name="bad name"), "spec.name"),
        (dict(name="x" * 65), "spec.name"),
        (dict(name="dims", dim=0), "spec.dim"),
        (dict(name="dims", dim=70_000), "spec.dim"),
        (dict(name="m", model="clip"), "spec.model"),
        (dict(name="m", model="minilm_l6", dim=100), "spec.dim"),
        (dict(name="f", dim=8, fields={"a": "date"}), "type"),
        (dict(name="f", dim=8, factory="IVFnonsense"), "spec.index.factory"),
        (dict(name="f", dim=8, recall_target=1.5), "spec.recall_target"),
        (dict(name="f", dim=8, exact_until=10), "spec.index.exact_until"),
    ]
    for kwargs, field in cases:
        try:
            code, details = rpc_error(lambda kwargs=kwargs: client.create_collection(**kwargs))
        except ValueError as exc:  # the SDK refuses unknown enum names itself
            assert field == "type" and "string" in str(exc)
            continue
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, (kwargs, code, details)
    # A field declared twice, through the raw API.
    from semsearch.v1 import common_pb2, search_pb2

    spec = common_pb2.CollectionSpec(
        name="twice",
        dim=8,
        fields=[common_pb2.FieldSpec(name="a", type=common_pb2.STRING)] * 2,
    )
    code, details = rpc_error(
        lambda: client.stub.CreateCollection(search_pb2.CreateCollectionRequest(spec=spec))
    )
    assert (
        code == grpc.StatusCode.INVALID_ARGUMENT and "spec.fields[1].name" in details and "twice" in details
    )
    code, details = rpc_error(lambda: client.drop_collection("never-created"))
    assert code == grpc.StatusCode.NOT_FOUND and "never-created" in details
    assert {"bad name", "dims", "m", "f", "twice"}.isdisjoint({c.name for c in client.collections()})


def test_dropping_a_collection_while_it_is_written_is_safe(client, stack):
    client.create_collection("busy", dim=8)
    outcomes: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        with SemsearchClient(stack.gateway_address, timeout_s=30) as own:
            for n in range(2_000):
                if stop.is_set():
                    return
                try:
                    response = own.upsert(
                        "busy", [Item(id=f"b{n}-{i}", vector=np.ones(8) * (i + 1)) for i in range(20)]
                    )
                    outcomes.extend([r.error for r in response.results if not r.ok] or ["ok"])
                except grpc.RpcError as exc:
                    outcomes.append(f"{exc.code().name}: {exc.details()}")

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.5)
    client.drop_collection("busy")
    time.sleep(0.3)
    stop.set()
    thread.join(30)
    assert "ok" in outcomes
    failures = [o for o in outcomes if o != "ok"]
    assert failures and all(
        "busy" in f and ("NOT_FOUND" in f or "dropped" in f or "unknown" in f) for f in failures
    ), failures[:3]
    # Concurrent creates and drops of one name leave it either there or not, never half there.
    errors: list[str] = []

    def churn(i: int) -> None:
        with SemsearchClient(stack.gateway_address, timeout_s=30) as own:
            for _ in range(5):
                try:
                    (own.create_collection if i % 2 else own.drop_collection)(
                        "churn", **({"dim": 4} if i % 2 else {})
                    )
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        errors.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    names = {c.name for c in client.collections()}
    if "churn" in names:
        assert client.describe_collection("churn").shards_answered == 2
        client.drop_collection("churn")


def test_a_sample_covers_every_shard_with_ids_vectors_and_metadata(client):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    client.create_collection("sampled", dim=8, metric="inner_product")
    client.upsert("sampled", [Item(id=f"s{i}", vector=x[i], metadata={"n": str(i)}) for i in range(400)])
    ids, vectors, metadata = client.sample_items("sampled", 100, seed=3)
    assert 95 <= len(ids) <= 105 and len(set(ids)) == len(ids)  # shares are rounded per shard
    for item_id, vector, meta in zip(ids, vectors, metadata):
        i = int(item_id[1:])
        assert np.allclose(vector, x[i]) and meta == {"n": str(i)}
    assert client.sample_items("sampled", 100, seed=3)[0] == ids  # the same seed, the same sample
    everything = client.sample_items("sampled", 1000)[0]
    assert sorted(everything) == sorted(f"s{i}" for i in range(400))
    code, details = rpc_error(lambda: client.sample_items("sampled", 0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "n: must be in [1, 1,000,000], got 0"
    assert rpc_error(lambda: client.sample_items("nope", 10))[0] == grpc.StatusCode.NOT_FOUND
    client.drop_collection("sampled")
