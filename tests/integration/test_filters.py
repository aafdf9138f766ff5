"""Filtered search and the recall monitor through the public API on a real stack (2 shards): every kind
of filter returns exactly the matching items' nearest neighbours (numpy exact search on the same
vectors), extremes, a changed field is seen at once, bad filters and bad field values are named, and the
monitor's metric appears and moves when recall drops."""

from __future__ import annotations

import re
import time
import urllib.request

import grpc
import numpy as np
import pytest

from semsearch.client import Item, SemsearchClient
from semsearch.tools.stack import Stack

pytestmark = pytest.mark.integration

DIM = 32
N = 3_000
LABELS = ["Bag", "Sandal", "Shirt", "Coat", "Sneaker"]


def data(n: int, seed: int = 0) -> tuple[np.ndarray, list[dict[str, str]]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, DIM))
    x = centres[rng.integers(0, 30, n)] + 0.4 * rng.normal(size=(n, DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    meta = [{"label": LABELS[i % len(LABELS)], "price": str(int(rng.integers(0, 100)))} for i in range(n)]
    return x, meta


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    env = {"SEMSEARCH_AUTO_TRAIN_INTERVAL_S": "1", "SEMSEARCH_RECALL_SAMPLE_RATE": "1",
           "SEMSEARCH_RECALL_SAMPLES_PER_S": "1000"}  # fmt: skip
    home = tmp_path_factory.mktemp("filters") / "stack"
    with Stack(home, model_repository, num_shards=2, env=env).start() as stack:
        x, meta = data(N)
        with SemsearchClient(stack.gateway_address, timeout_s=60) as client:
            client.create_collection("goods", dim=DIM, fields={"label": "string", "price": "number"},
                                     exact_until=2_000, factory="IVF32,PQ16")  # fmt: skip
            for s in range(0, N, 500):
                items = [Item(id=f"g{i}", vector=x[i], metadata=meta[i]) for i in range(s, s + 500)]
                assert client.upsert("goods", items).succeeded == 500
            deadline = time.monotonic() + 120
            while client.describe_collection("goods").state != "indexed":
                assert time.monotonic() < deadline, "the collection was never indexed"
                time.sleep(0.5)
        yield stack, x, meta


@pytest.fixture
def client(stack):
    with SemsearchClient(stack[0].gateway_address, timeout_s=60) as c:
        yield c


def exact(x: np.ndarray, allowed: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    scores = x @ q
    scores[~allowed] = -np.inf
    return [f"g{j}" for j in np.argsort(-scores, kind="stable")[:k] if np.isfinite(scores[j])]


def ids(response) -> list[str]:
    return [h.id for h in response.hits]


@pytest.mark.parametrize(
    "text, where",
    [
        ('label = "Bag"', lambda m: m["label"] == "Bag"),
        ('label != "Bag"', lambda m: m["label"] != "Bag"),
        ('label in ["Sandal", "Coat"]', lambda m: m["label"] in ("Sandal", "Coat")),
        ('label not in ["Sandal", "Coat"]', lambda m: m["label"] not in ("Sandal", "Coat")),
        ("price < 10", lambda m: int(m["price"]) < 10),
        ('price >= 40 and price <= 45 or label = "Shirt"',
         lambda m: 40 <= int(m["price"]) <= 45 or m["label"] == "Shirt"),
        ('not (label = "Bag" or price > 5)', lambda m: not (m["label"] == "Bag" or int(m["price"]) > 5)),
    ],
)  # fmt: skip
def test_filters_return_the_nearest_matching_items(client, stack, text, where):
    _, x, meta = stack
    allowed = np.array([where(m) for m in meta])
    for q in data(3, seed=7)[0]:
        response = client.search("goods", vector=q, k=10, filter=text, no_cache=True)
        assert ids(response) == exact(x, allowed, q, 10), text
        assert all(where(dict(h.metadata)) for h in response.hits)
        assert sum(i.matched for i in response.shard_info) == allowed.sum()


def test_selectivity_extremes(client, stack):
    _, x, _ = stack
    q = data(1, seed=8)[0][0]
    assert ids(client.search("goods", vector=q, k=10, filter='label = "Hat"')) == []
    assert ids(client.search("goods", vector=q, k=10, filter="price > 1000")) == []
    everything = client.search("goods", vector=q, k=10, filter="price >= 0", no_cache=True)
    assert ids(everything) == exact(x, np.ones(N, dtype=bool), q, 10)
    assert ids(client.search("goods", vector=q, k=10, exact=True)) == exact(x, np.ones(N, dtype=bool), q, 10)


def test_a_changed_field_is_seen_at_once(client, stack):
    _, x, _ = stack
    q = x[11]
    before = client.search("goods", vector=q, k=3, filter='label = "Hat"')
    assert ids(before) == []
    client.upsert("goods", [Item(id="g11", vector=x[11], metadata={"label": "Hat", "price": "5"})])
    assert ids(client.search("goods", vector=q, k=3, filter='label = "Hat"')) == ["g11"]
    client.delete("goods", ["g11"])
    assert ids(client.search("goods", vector=q, k=3, filter='label = "Hat"')) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ('colour = "red"', "filter: field 'colour' is not indexed by collection 'goods' (indexed fields: "
                           "label (string), price (number))"),
        ('price = "cheap"', "filter: field 'price' holds numbers, got \"cheap\""),
        ('label < "B"', "filter: field 'label' holds strings: compare it with =, != or in, not <"),
        ('label = "Bag', "filter: at position 9: a string without its closing quote"),
        ("(" * 40 + "price = 1" + ")" * 40, "filter: at position 34: nested more than 32 deep"),
    ],
)  # fmt: skip
def test_bad_filters_are_invalid_argument_naming_the_field(client, text, message):
    with pytest.raises(grpc.RpcError) as info:
        client.search("goods", vector=np.ones(DIM), k=3, filter=text)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


def test_a_number_field_with_a_value_that_is_not_a_number_fails_that_item_only(client):
    response = client.upsert(
        "goods",
        [Item(id="ok", vector=np.ones(DIM), metadata={"price": "3"}),
         Item(id="bad", vector=np.ones(DIM), metadata={"price": "three"})],
    )  # fmt: skip
    assert [r.ok for r in response.results] == [True, False]
    assert response.results[1].error == (
        "items[1].metadata.price: 'three' is not a finite number (the collection indexes 'price' as a number)"
    )
    client.delete("goods", ["ok"])


def estimated_recall(stack) -> list[float]:
    values = []
    for shard in stack.shards:
        page = (
            urllib.request.urlopen(f"http://127.0.0.1:{shard.metrics_port}/metrics", timeout=5)
            .read()
            .decode()
        )
        found = re.search(r'semsearch_indexer_estimated_recall\{collection="goods"\} ([0-9.e+-]+)', page)
        if found:
            values.append(float(found.group(1)))
    return values


def test_the_recall_monitor_reports_and_moves_when_recall_drops(client, stack):
    _, x, _ = stack
    rng = np.random.default_rng(9)
    near = x[:30] + 0.05 * rng.normal(size=(30, DIM)).astype(np.float32)  # like the stored items
    queries = np.concatenate([near, data(30, seed=9)[0]])  # then others from elsewhere
    for q in queries[:30]:
        client.search("goods", vector=q, k=10, no_cache=True)
    deadline = time.monotonic() + 30
    while len(estimated_recall(stack[0])) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    good = estimated_recall(stack[0])
    assert len(good) == 2 and min(good) >= 0.9, good
    for _ in range(8):  # one list probed: the monitor sees the recall fall (200 samples a window)
        for q in queries[30:]:
            client.search("goods", vector=q, k=10, nprobe=1, no_cache=True)
    deadline = time.monotonic() + 30
    while max(estimated_recall(stack[0])) > min(good) - 0.05 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert max(estimated_recall(stack[0])) < min(good) - 0.05, (good, estimated_recall(stack[0]))
