"""The gateway over the real local stack (tritonserver, redis-server, 2 shards) on free ports."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from semsearch.client import Item, SemsearchClient
from semsearch.datasets import fashion_mnist, fortunes
from semsearch.rpc import health_serving
from semsearch.tools.stack import GATEWAY_SERVICE, Stack
from semsearch.v1 import search_pb2
from tests.conftest import create_demo_collections

pytestmark = pytest.mark.integration

KEY1, KEY2 = "first-key-0123456789", "second-key-0123456789"
N_IMAGES = 200
N_TEXTS = 200


def load(client: SemsearchClient) -> None:
    create_demo_collections(client)
    images = fashion_mnist("test")
    response = client.upsert(
        "images",
        [Item(id=f"img{i}", image=images.png(i), metadata={"label": images.classes[images.labels[i]]})
         for i in range(N_IMAGES)],
    )  # fmt: skip
    assert response.succeeded == N_IMAGES, [r.error for r in response.results if not r.ok][:3]
    corpus = fortunes()
    response = client.upsert(
        "texts",
        [Item(id=f"txt{i}", text=corpus.texts[i * 50], metadata={"n": str(i)}) for i in range(N_TEXTS)],
    )
    assert response.succeeded == N_TEXTS


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("stack"), model_repository, num_shards=2).start() as stack:
        with SemsearchClient(stack.gateway_address) as client:
            load(client)
        yield stack


@pytest.fixture
def client(stack):
    with SemsearchClient(stack.gateway_address, timeout_s=30) as c:
        yield c


@pytest.fixture
def fresh_stack(model_repository, tmp_path):
    with Stack(tmp_path / "stack", model_repository, num_shards=2).start() as stack:
        with SemsearchClient(stack.gateway_address) as client:
            load(client)
        yield stack


def labels_of(response) -> list[str]:
    return [h.metadata["label"] for h in response.hits]


def test_every_query_kind(client):
    images = fashion_mnist("test")
    by_image = client.search("images", image=images.png(3), k=5)
    assert by_image.hits[0].id == "img3" and by_image.hits[0].score > 0.999
    assert by_image.shards_answered == by_image.shards_queried == 2
    assert by_image.model_version.startswith("efficientnet_lite0@")
    stages = [t.stage for t in by_image.timings]
    assert stages == ["result_cache", "embedding_cache", "embed", "fanout", "merge"], stages

    by_id = client.search("images", id="img3", k=5)
    assert "img3" not in [h.id for h in by_id.hits] and len(by_id.hits) == 5
    # The stored vector of img3 is its image embedding: "more like img3" is the image search minus img3.
    assert [h.id for h in by_id.hits[:4]] == [h.id for h in by_image.hits[1:5]]

    text = fortunes().texts[50 * 7]
    by_text = client.search("texts", text=text, k=3)
    assert by_text.hits[0].id == "txt7"

    vector = client.get("images", ["img3"], include_vectors=True).items[0].vector.values
    by_vector = client.search("images", vector=vector, k=5)
    assert [h.id for h in by_vector.hits] == [h.id for h in by_image.hits]


def test_search_batch_answers_each_query_as_search_does(client):
    images = fashion_mnist("test")
    vectors = [
        item.vector.values for item in client.get("images", ["img3", "img4"], include_vectors=True).items
    ]
    queries = [
        client.search_request("images", vector=vectors[0], k=5, no_cache=True),
        client.search_request("images", id="img4", k=5, no_cache=True),
        client.search_request("texts", text=fortunes().texts[50 * 7], k=3, no_cache=True),
        client.search_request("images", image=images.png(3), k=5, no_cache=True),
        client.search_request("nope", vector=vectors[0]),  # fails alone
        client.search_request("images", text="   "),  # fails alone
        *(client.search_request("images", vector=v, k=5, no_cache=True, filter=f) for v in vectors
          for f in ('label = "Bag"', "")),
    ]  # fmt: skip
    results = client.search_batch(queries)
    assert len(results) == len(queries)
    assert isinstance(results[4], grpc.RpcError) and results[4].code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in results[4].details()
    assert (
        results[5].code() == grpc.StatusCode.INVALID_ARGUMENT
        and results[5].details() == "text: text is empty"
    )
    for query, result in zip(queries, results):
        if isinstance(result, grpc.RpcError):
            continue
        alone = client.stub.Search(query)
        assert [h.id for h in result.hits] == [h.id for h in alone.hits]
    assert results[2].hits[0].id == "txt7" and results[3].hits[0].id == "img3"
    with pytest.raises(grpc.RpcError) as info:
        client.search_batch([])
    assert (
        info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and info.value.details() == "queries: no queries"
    )


def test_results_are_meaningful(client):
    images = fashion_mnist("test")
    same = []
    for i in range(20):
        response = client.search("images", id=f"img{i}", k=10)
        same.append(np.mean([label == images.classes[images.labels[i]] for label in labels_of(response)]))
    assert np.mean(same) > 0.6  # random would be about 0.1


def test_result_cache_hits_and_writes_make_it_unreachable(client):
    first = client.search("texts", text="the meaning of life", k=3)
    second = client.search("texts", text="the meaning of life", k=3)
    assert not first.cached and second.cached
    assert [h.id for h in first.hits] == [h.id for h in second.hits]
    client.upsert("texts", [Item(id="new-best", text="the meaning of life")])
    third = client.search("texts", text="the meaning of life", k=3)
    assert not third.cached and third.hits[0].id == "new-best"
    client.delete("texts", ["new-best"])
    fourth = client.search("texts", text="the meaning of life", k=3)
    assert not fourth.cached and "new-best" not in [h.id for h in fourth.hits]


def test_get_delete_and_list(client):
    client.upsert("texts", [Item(id="tmp1", text="temporary"), Item(id="tmp2", vector=np.ones(384))])
    got = client.get("texts", ["tmp1", "tmp2", "ghost"], include_vectors=True)
    assert sorted(i.id for i in got.items) == ["tmp1", "tmp2"] and list(got.missing) == ["ghost"]
    assert len(got.items[0].vector.values) == 384
    deleted = client.delete("texts", ["tmp1", "tmp2", "ghost"])
    assert deleted.deleted == 2 and list(deleted.missing) == ["ghost"]
    infos = {c.name: c for c in client.collections()}
    assert infos["images"].count == N_IMAGES and infos["images"].dim == 1280
    assert infos["texts"].model == "minilm_l6" and infos["texts"].shards_total == 2


def test_vectors_as_bytes_equal_vectors_as_values(client):
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3, 384)).astype("<f4")
    as_values = search_pb2.SearchRequest(collection="texts", k=5, no_cache=True)
    as_values.vector.values.extend(vectors[0].tolist())
    as_bytes = search_pb2.SearchRequest(collection="texts", k=5, no_cache=True)
    as_bytes.vector.data = vectors[0].tobytes()
    by_values, by_bytes = client.stub.Search(as_values), client.stub.Search(as_bytes)
    assert [(h.id, h.score) for h in by_bytes.hits] == [(h.id, h.score) for h in by_values.hits]

    upsert = search_pb2.UpsertRequest(collection="texts")
    upsert.items.add(id="bytes-ok").vector.data = vectors[1].tobytes()
    upsert.items.add(id="bytes-short").vector.data = vectors[2].tobytes()[:-2]
    both = upsert.items.add(id="bytes-both").vector
    both.values.extend([1.0] * 384)
    both.data = vectors[2].tobytes()
    response = client.stub.Upsert(upsert)
    assert [r.ok for r in response.results] == [True, False, False]
    assert response.results[1].error == (
        "items[1].vector: data is 1534 bytes, not whole little-endian float32 values (4 bytes each)"
    )
    assert response.results[2].error == "items[2].vector: set values or data, not both"
    stored = client.get("texts", ["bytes-ok"], include_vectors=True).items[0]
    np.testing.assert_allclose(stored.vector.values, vectors[1] / np.linalg.norm(vectors[1]), atol=1e-6)
    client.delete("texts", ["bytes-ok"])

    bad = search_pb2.SearchRequest(collection="texts")
    bad.vector.data = b"\0" * 10
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Search(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == (
        "vector: data is 10 bytes, not whole little-endian float32 values (4 bytes each)"
    )


def test_bad_inputs_name_the_field(client):
    def code(**kwargs):
        with pytest.raises(grpc.RpcError) as info:
            client.search(**kwargs)
        return info.value.code(), info.value.details()

    cases = [
        (dict(collection="texts"), grpc.StatusCode.INVALID_ARGUMENT, "query"),
        (dict(collection="texts", text="  "), grpc.StatusCode.INVALID_ARGUMENT, "text"),
        (dict(collection="images", image=b"not an image"), grpc.StatusCode.INVALID_ARGUMENT, "image"),
        (dict(collection="texts", vector=[0.1] * 5), grpc.StatusCode.INVALID_ARGUMENT, "vector"),
        (dict(collection="texts", vector=[float("nan")] * 384), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        (dict(collection="texts", text="x", k=5000), grpc.StatusCode.INVALID_ARGUMENT, "k"),
        (
            dict(collection="texts", text="x", min_coverage=2.0),
            grpc.StatusCode.INVALID_ARGUMENT,
            "min_coverage",
        ),
        (dict(collection="nope", text="x"), grpc.StatusCode.NOT_FOUND, "collection"),
        (dict(collection="texts", id="ghost"), grpc.StatusCode.NOT_FOUND, "id"),
    ]
    for kwargs, want, fragment in cases:
        got, details = code(**kwargs)
        assert got == want and fragment in details, (kwargs, got, details)
    huge = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(huge, format="PNG")
    got, details = code(collection="images", image=huge.getvalue())
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "decompression bomb" in details

    items = [
        Item(id="ok1", text="fine"),
        Item(id="", text="no id"),
        Item(id="bad-vec", vector=[1.0] * 3),
        Item(id="empty", text=""),
        Item(id="nan", vector=[float("nan")] * 384),
        Item(id="ok2", text="fine too"),
    ]
    response = client.upsert("texts", items)
    assert [r.ok for r in response.results] == [True, False, False, False, False, True]
    assert "id" in response.results[1].error and "vector" in response.results[2].error
    client.delete("texts", ["ok1", "ok2"])


def test_shard_down_gives_partial_results_and_recovers(fresh_stack):
    client = SemsearchClient(fresh_stack.gateway_address, timeout_s=10)
    full = client.search("texts", text="love and friendship", k=10, no_cache=True)
    assert full.shards_answered == 2
    fresh_stack.shards[1].kill()
    partial = client.search("texts", text="love and friendship", k=10, min_coverage=0.5, no_cache=True)
    assert partial.shards_answered == 1 and partial.shards_queried == 2 and len(partial.hits) == 10
    assert list(partial.generations) == [0]
    with pytest.raises(grpc.RpcError) as info:
        client.search("texts", text="love and friendship", k=10, no_cache=True)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "1 of 2 shards" in info.value.details()
    fresh_stack.start_shard(1)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            again = client.search("texts", text="love and friendship", k=10, no_cache=True)
            break
        except grpc.RpcError:
            time.sleep(0.2)
    assert again.shards_answered == 2
    assert [h.id for h in again.hits] == [h.id for h in full.hits]


def test_redis_down_searches_still_work(fresh_stack):
    client = SemsearchClient(fresh_stack.gateway_address, timeout_s=10)
    fresh_stack.redis.kill()
    for _ in range(3):
        response = client.search("texts", text="computers", k=5)
        assert len(response.hits) == 5 and not response.cached
    client.upsert("texts", [Item(id="while-redis-down", text="computers")])
    assert client.search("texts", text="computers", k=1).hits[0].id == "while-redis-down"
    fresh_stack.start_redis()
    time.sleep(1.2)  # the cache is skipped for a second after an error
    client.search("texts", text="computers", k=5)
    assert client.search("texts", text="computers", k=5).cached


def test_triton_down_vector_and_id_still_work(fresh_stack):
    client = SemsearchClient(fresh_stack.gateway_address, timeout_s=10)
    vector = client.get("images", ["img1"], include_vectors=True).items[0].vector.values
    fresh_stack.triton.kill()
    assert client.search("images", vector=vector, k=3, no_cache=True).hits[0].id == "img1"
    assert len(client.search("images", id="img1", k=3, no_cache=True).hits) == 3
    begin = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        client.search("texts", text="a query that was never cached", k=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "embedder" in info.value.details()
    assert time.monotonic() - begin < 5
    with pytest.raises(grpc.RpcError) as info:
        client.search("images", image=fashion_mnist("test").png(999), k=3)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    # Liveness and readiness stay SERVING: the gateway still answers vector and id queries, and
    # restarting it (Kubernetes liveness) or taking it out of rotation (readiness) would not help.
    time.sleep(2.5)  # readiness is re-checked every 2 s
    assert health_serving(fresh_stack.gateway_address)
    assert health_serving(fresh_stack.gateway_address, GATEWAY_SERVICE)
    fresh_stack.start_triton()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            response = client.search("texts", text="back again", k=3)
            break
        except grpc.RpcError:
            time.sleep(0.2)
    assert response.shards_answered == 2


def test_api_key_required_when_configured(model_repository, tmp_path):
    stack = Stack(
        tmp_path / "stack", model_repository, num_shards=1, env={"SEMSEARCH_API_KEYS": f"{KEY1},{KEY2}"}
    ).start()
    try:
        with SemsearchClient(stack.gateway_address) as anonymous:
            with pytest.raises(grpc.RpcError) as info:
                anonymous.collections()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with SemsearchClient(stack.gateway_address, api_key="wrong") as wrong:
            with pytest.raises(grpc.RpcError) as info:
                wrong.search("texts", text="x")
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with SemsearchClient(stack.gateway_address, api_key=KEY2) as keyed:
            create_demo_collections(keyed)
            assert {c.name for c in keyed.collections()} == {"images", "texts"}
    finally:
        stack.stop()
