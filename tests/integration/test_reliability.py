"""Defects seen through the public API on a real stack: updates, per-item errors, k, error wording,
vector overflow."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from semsearch.client import Item, SemsearchClient
from semsearch.core.collections import CollectionConfig
from semsearch.datasets import fashion_mnist, fortunes
from semsearch.tools.stack import Stack
from semsearch.v1 import indexer_pb2, indexer_pb2_grpc
from services.indexer.coordinator import train_collection, wait_for_rebuilds
from tests.conftest import create_demo_collections

pytestmark = pytest.mark.integration

VEC_DIM = 32
AUTO = {"name": "auto", "dim": VEC_DIM, "factory": "IVF16,PQ8", "exact_until": 3_000}
# Trained explicitly below, never automatically.
VECS = {"name": "vecs", "dim": VEC_DIM, "factory": "IVF32,PQ8", "exact_until": 10_000_000}


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, VEC_DIM)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, VEC_DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    home = tmp_path_factory.mktemp("reliability")
    env = {"SEMSEARCH_AUTO_TRAIN_INTERVAL_S": "1"}
    with Stack(home / "stack", model_repository, num_shards=2, env=env).start() as stack:
        with SemsearchClient(stack.gateway_address, timeout_s=60) as client:
            create_demo_collections(client)
            client.create_collection(**VECS)
            client.create_collection(**AUTO)
            corpus = fortunes()
            texts = [Item(id=f"t{i}", text=corpus.texts[i * 7]) for i in range(100)]
            assert client.upsert("texts", texts).succeeded == len(texts)
            images = fashion_mnist("test")
            pictures = [Item(id=f"img{i}", image=images.png(i)) for i in range(20)]
            assert client.upsert("images", pictures).succeeded == len(pictures)
        yield stack


@pytest.fixture
def client(stack):
    with SemsearchClient(stack.gateway_address, timeout_s=60) as c:
        yield c


def test_an_item_updated_many_times_stays_findable(client):
    text = "a sentence that will be written sixty times over"
    for _ in range(60):
        assert client.upsert("texts", [Item(id="updated", text=text)]).succeeded == 1
    hits = [h.id for h in client.search("texts", text=text, k=5, no_cache=True).hits]
    assert hits[0] == "updated" and hits.count("updated") == 1, hits
    assert len(hits) == 5


def test_an_item_of_the_wrong_kind_fails_alone_naming_the_field(client):
    png = fashion_mnist("test").png(0)
    response = client.upsert(
        "texts", [Item(id="ok-a", text="fine"), Item(id="pic", image=png), Item(id="ok-b", text="also fine")]
    )
    assert [r.ok for r in response.results] == [True, False, True]
    error = response.results[1].error
    assert "items[1].image" in error and "texts" in error and "internal" not in error.lower(), error
    # In a stream the bad item fails alone too, and the stream goes on.
    batches = [[Item(id="s1", text="one")], [Item(id="s2", image=png)], [Item(id="s3", text="three")]]
    results = [r.results[0] for r in client.upsert_stream("texts", batches)]
    assert [r.ok for r in results] == [True, False, True]
    assert not client.get("texts", ["ok-a", "ok-b", "s1", "s3"]).missing


def test_k_hits_come_back_whenever_the_collection_holds_k_items(stack, client):
    x = clustered(6_000, seed=1)
    for start in range(0, len(x), 1000):
        batch = [Item(id=f"v{i}", vector=x[i]) for i in range(start, start + 1000)]
        assert client.upsert("vecs", batch).succeeded == len(batch)
    by_id = client.search("vecs", id="v0", k=1000, no_cache=True)
    assert len(by_id.hits) == 1000 and "v0" not in {h.id for h in by_id.hits}
    channels = [grpc.insecure_channel(s.address) for s in stack.shards]
    config = CollectionConfig(
        name="vecs", dim=VEC_DIM, factory="IVF32,PQ8", train_sample=4_000, rerank_min=40
    )
    report = train_collection(channels, config)
    wait_for_rebuilds(channels, "vecs", report["template_id"], timeout_s=300)
    response = client.search("vecs", vector=x[1], k=1000, no_cache=True)
    assert set(response.generations.values()) == {1}
    assert len(response.hits) == 1000 and len({h.id for h in response.hits}) == 1000
    by_id = client.search("vecs", id="v0", k=1000, no_cache=True)
    assert len(by_id.hits) == 1000 and "v0" not in {h.id for h in by_id.hits}


def test_errors_speak_the_public_api(client):
    with pytest.raises(grpc.RpcError) as info:
        client.search("vecs", text="a red sneaker")  # a collection of vectors: no model reads words
    details = info.value.details()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "text: collection 'vecs' accepts vector, stored id queries, not text queries", details
    assert "1280" not in details and "queries[0]" not in details and "shard" not in details, details


def test_huge_vector_values_are_never_stored_as_zeros(client):
    huge = np.full(VEC_DIM, 1e20, dtype=np.float32)
    huge[0] = 3e20
    response = client.upsert("vecs", [Item(id="huge", vector=huge)])
    if response.results[0].ok:
        stored = np.array(client.get("vecs", ["huge"], include_vectors=True).items[0].vector.values)
        assert np.isfinite(stored).all() and np.linalg.norm(stored) > 0.5, stored[:4]
        expected = huge / np.linalg.norm(huge.astype(np.float64))
        np.testing.assert_allclose(stored, expected, rtol=1e-5)
        assert client.search("vecs", vector=huge, k=1, no_cache=True).hits[0].id == "huge"
    else:
        assert "items[0].vector" in response.results[0].error


def test_shard_0_trains_a_collection_once_wherever_training_is_asked_for(stack, client):
    x = clustered(3_200, seed=7)
    for start in range(0, len(x), 800):
        assert client.upsert(
            "auto", [Item(id=f"a{i}", vector=x[i]) for i in range(start, start + 800)]
        ).succeeded
    # Shard 0 notices the threshold by itself; meanwhile every other way to ask is refused or a no-op.
    stubs = [indexer_pb2_grpc.IndexerStub(grpc.insecure_channel(s.address)) for s in stack.shards]
    with pytest.raises(grpc.RpcError) as info:
        stubs[1].Train(indexer_pb2.TrainRequest(collection="auto"), timeout=60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "shard 0" in info.value.details()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stats = [
            next(c for c in st.Stats(indexer_pb2.StatsRequest()).collections if c.name == "auto")
            for st in stubs
        ]
        if all(c.generation >= 1 for c in stats):
            break
        time.sleep(0.5)
    assert [c.generation for c in stats] == [1, 1] and len({c.template_id for c in stats}) == 1
    with pytest.raises(grpc.RpcError) as info:
        stubs[0].Train(indexer_pb2.TrainRequest(collection="auto"), timeout=60)
    assert (
        info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "trained already" in info.value.details()
    )
    time.sleep(2.5)  # two more auto-train checks: neither trains again
    log = (stack.shards[0].data_dir / "shard.log").read_text()
    assert log.count("training IVF16,PQ8 on") == 1
    response = client.search("auto", vector=x[5], k=10, no_cache=True)
    assert response.hits[0].id == "a5" and set(response.generations.values()) == {1}
