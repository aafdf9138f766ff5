"""The explorer's API handlers and map cache with a fake gateway (no processes): request parsing and
errors, payloads as the page shows them, the exact re-run's recall, the map's binary form, its cache on
disk and when it is recomputed, the quality report."""

from __future__ import annotations

import asyncio
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from semsearch.core.collections import FieldSpec, image_collection, text_collection
from semsearch.specs import config_from_spec, spec_from_config
from semsearch.v1 import common_pb2, search_pb2
from services.explorer import projection, quality
from services.explorer.app import Explorer, create_app, payload_fields
from services.explorer.gateway import GatewayError
from services.explorer.maps import CollectionMap, Maps

LABELS = ["Bag", "Coat", "Sandal"]


def webp(colour=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(out, format="WEBP")
    return out.getvalue()


class FakeGateway:
    """Two collections; items i0.. with 3 well separated clusters, labelled by cluster."""

    def __init__(self, count: int = 300, most: int = 1000) -> None:
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(3, 16)) * 5
        self.labels = [LABELS[i % 3] for i in range(most)]
        self.vectors = (centres[np.arange(most) % 3] + rng.normal(size=(most, 16))).astype(np.float32)
        self.count = count
        self.searches: list[search_pb2.SearchRequest] = []
        self.specs = {
            "images": spec_from_config(image_collection(fields=(FieldSpec("label", "string"),))),
            "texts": spec_from_config(text_collection()),
        }

    async def collections(self, timeout=10.0):
        return [await self.describe(name) for name in self.specs]

    async def describe(self, name, timeout=10.0):
        if name not in self.specs:
            raise GatewayError("NOT_FOUND", f"collection: unknown collection {name!r} (known: images, texts)")
        config = config_from_spec(self.specs[name])
        return search_pb2.CollectionInfo(
            name=name,
            spec=self.specs[name],
            count=self.count,
            state="exact",
            query_kinds=config.accepted_kinds,
        )

    async def search(self, request, timeout=30.0):
        self.searches.append(request)
        if request.filter == "bad":
            raise GatewayError("INVALID_ARGUMENT", "filter: at position 1: expected a field name")
        found = range(3) if request.exact else (0, 2, 5)
        hits = [
            common_pb2.Hit(id=f"i{j}", score=1 - j / 10, metadata={"label": self.labels[j]}, payload=webp())
            for j in found
        ]
        return search_pb2.SearchResponse(
            hits=hits, shards_answered=2, shards_queried=2,
            timings=[common_pb2.StageTiming(stage="fanout", seconds=0.002)],
            shard_info=[search_pb2.ShardSearchInfo(shard=0, plan="index", depth=3.5, matched=150,
                                                   seconds=0.001)],
        )  # fmt: skip

    async def get(self, collection, ids, timeout=10.0):
        return search_pb2.GetResponse(
            items=[
                common_pb2.Item(id=i, metadata={"label": self.labels[int(i[1:])]}, payload=webp())
                for i in ids
            ]
        )

    async def sample(self, collection, n, seed=0, timeout=600.0):
        m = min(n, self.count)
        return [f"i{j}" for j in range(m)], self.vectors[:m], [{"label": self.labels[j]} for j in range(m)]


@pytest.fixture
def client(tmp_path):
    gateway = FakeGateway()
    maps = Maps(gateway, tmp_path, points=1000, method="pca")
    maps.min_refresh_interval_s = 0.0
    explorer = Explorer(gateway, maps, max_upload_bytes=1 << 20)
    with TestClient(create_app(explorer)) as c:
        c.gateway, c.maps = gateway, maps
        yield c


def test_collections_list_what_each_accepts(client):
    body = client.get("/api/collections").json()["collections"]
    images = next(c for c in body if c["name"] == "images")
    assert images["kinds"] == ["image", "text", "vector", "id"] and images["fields"] == [
        {"name": "label", "type": "string"}
    ]
    assert images["thumbnails"] is True and images["count"] == 300


def test_a_text_search_and_its_exact_check(client):
    response = client.post("/api/search", data={"collection": "images", "text": "a bag", "k": "3"})
    assert response.status_code == 200
    body = response.json()
    assert [h["id"] for h in body["hits"]] == ["i0", "i2", "i5"]
    assert body["hits"][0]["thumbnail"].startswith("data:image/webp;base64,")
    expected = {"shard": 0, "plan": "index", "depth": 3.5, "matched": 150, "batch_size": 0, "ms": 1.0}
    assert body["info"]["shards"][0] == expected
    sent = client.gateway.searches[-1]
    assert (sent.text, sent.k, sent.include_payloads) == ("a bag", 3, True)
    exact = client.post("/api/exact", json={"query_id": body["query_id"]}).json()
    assert client.gateway.searches[-1].exact and client.gateway.searches[-1].text == "a bag"
    assert exact["recall"] == 0.6667  # i0, i2 found; i1 missed
    assert [h["missed"] for h in exact["exact"]] == [False, True, False]


def test_an_image_upload_is_sent_and_shown(client):
    image = webp((10, 200, 10))
    response = client.post("/api/search", data={"collection": "images", "k": "5"},
                           files={"image": ("q.webp", image, "image/webp")})  # fmt: skip
    assert response.status_code == 200
    assert client.gateway.searches[-1].image == image
    assert response.json()["query_thumbnail"].startswith("data:image/webp;base64,")


@pytest.mark.parametrize(
    "form, status, message",
    [
        ({"collection": "images"}, 400, "type some words, give an image or pick an item"),
        ({"collection": "images", "text": "x", "k": "0"}, 400, "k must be in [1, 100], got 0"),
        ({"collection": "images", "text": "x", "k": "ten"}, 400, "k must be a number, got 'ten'"),
        (
            {"collection": "images", "text": "x", "filter": "bad"},
            400,
            "filter: at position 1: expected a field name",
        ),
        ({"text": "x"}, 400, "choose a collection"),
    ],
)
def test_bad_search_input_gets_a_readable_error(client, form, status, message):
    response = client.post("/api/search", data=form)
    assert response.status_code == status and response.json()["error"] == message


def test_an_oversized_upload_and_a_forgotten_query(client):
    big = b"\xff" * ((1 << 20) + 10)
    response = client.post(
        "/api/search", data={"collection": "images"}, files={"image": ("big.jpg", big, "image/jpeg")}
    )
    assert response.status_code == 400 and response.json()["error"] == "the image is larger than 1 MB"
    response = client.post("/api/exact", json={"query_id": "q-unknown"})
    assert response.status_code == 400 and "no longer remembered" in response.json()["error"]
    assert client.post("/api/exact", content=b"not json").json()["error"] == "the request body must be JSON"


def test_gateway_errors_keep_their_message_and_status(client):
    response = client.get("/api/map/nope")
    assert response.status_code == 404
    assert response.json()["error"] == "collection: unknown collection 'nope' (known: images, texts)"


def wait_for_map(client, name: str) -> bytes:
    for _ in range(200):
        response = client.get(f"/api/map/{name}")
        if response.headers["content-type"] == "application/octet-stream":
            return response.content
        assert response.json()["state"] == "computing"
        asyncio.run(asyncio.sleep(0.02))
    raise AssertionError("the map was never ready")


def decode(payload: bytes) -> tuple[dict, np.ndarray, np.ndarray]:
    (size,) = struct.unpack_from("<I", payload)
    header = json.loads(payload[4 : 4 + size])
    start = 4 + size + (-(4 + size)) % 4
    n = header["count"]
    xy = np.frombuffer(payload, "<u2", count=2 * n, offset=start).reshape(n, 2)
    codes = np.frombuffer(payload, "<u2", count=n, offset=start + 4 * n)
    assert len(payload) == start + 6 * n  # 6 bytes a point
    return header, xy, codes


def test_the_map_is_computed_then_served_in_binary_and_kept_on_disk(client, tmp_path):
    header, xy, codes = decode(wait_for_map(client, "images"))
    assert header["count"] == 300 and header["field"] == "label" and header["method"] == "pca"
    assert [header["labels"][c] for c in codes[:3]] == ["Bag", "Coat", "Sandal"]
    assert xy.min() >= 0 and xy.max() == 65535
    # The three clusters stay apart on the map: each label's points sit around their own centre.
    centres = np.array([xy[codes == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(xy[codes == c] - centres[c], axis=1).mean() for c in range(3))
    assert min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a)) > 2 * spread
    point = client.get("/api/map/images/point/4").json()
    assert point["id"] == "i4" and point["metadata"] == {"label": "Coat"} and point["thumbnail"]
    selection = client.post("/api/map/images/selection", json={"points": [0, 1, 2]}).json()
    assert [item["id"] for item in selection["items"]] == ["i0", "i1", "i2"]
    assert client.get("/api/map/images/point/999").status_code == 400
    # A search names where its hits are on the map.
    body = client.post("/api/search", data={"collection": "images", "id": "i0"}).json()
    assert body["map_points"] == [0, 2, 5]
    # Kept on disk: a new explorer serves it at once.
    again = Maps(client.gateway, tmp_path, points=1000, method="pca")
    assert again.status("images", 300, ["label"], "cosine")[0] == "ready"


def test_a_map_is_recomputed_when_the_collection_changed_enough(client):
    wait_for_map(client, "images")
    client.gateway.count = 320  # +6.7%: the same map
    assert client.get("/api/map/images").headers["content-type"] == "application/octet-stream"
    assert "images" not in client.maps.jobs
    client.gateway.count = 400  # +33%: recomputed in the background, the old map served meanwhile
    assert client.get("/api/map/images").headers["content-type"] == "application/octet-stream"
    assert "images" in client.maps.jobs or client.maps.maps["images"].count == 400
    for _ in range(200):
        if client.maps.cached("images").count == 400:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert decode(client.get("/api/map/images").content)[0]["count"] == 400


def test_the_map_of_a_dropped_collection_is_deleted(client, tmp_path):
    wait_for_map(client, "images")
    assert (tmp_path / "maps" / "images.npz").exists()
    del client.gateway.specs["images"]  # dropped by some client app
    assert [c["name"] for c in client.get("/api/collections").json()["collections"]] == ["texts"]
    assert not (tmp_path / "maps" / "images.npz").exists() and client.maps.cached("images") is None
    # Created again and still empty: no map of the old items.
    client.gateway.specs["images"] = client.gateway.specs["texts"]
    client.gateway.count = 0
    assert client.get("/api/map/images").json() == {"state": "empty"}


def test_quality_by_label(client):
    wait_for_map(client, "images")
    report = client.get("/api/quality/images?field=label").json()
    assert report["field"] == "label" and report["k"] == 10 and report["overall"] > 0.9
    assert {row["label"] for row in report["per_label"]} == set(LABELS)
    assert client.get("/api/quality/images?field=colour").status_code == 400


def test_label_report_counts_confusions():
    vectors = np.array([[0.0, 1], [0.0, 1.1], [0.0, 0.9], [1.0, 0], [1.1, 0], [0.9, 0.05]], dtype=np.float32)
    report = quality.label_report(vectors, ["a", "a", "b", "b", "b", "b"], k=2, metric="l2")
    by_label = {row["label"]: row for row in report["per_label"]}
    assert by_label["a"]["precision"] == 0.5 and by_label["a"]["confused_with"][0]["label"] == "b"
    assert by_label["b"]["precision"] == 0.75  # b2 sits among the a's; the other three find each other


def test_quantize_keeps_proportions_and_label_codes_rank_by_frequency():
    q = projection.quantize(np.array([[0.0, 0.0], [2.0, 1.0], [1.0, 0.5]]))
    assert q[0].tolist() == [0, 16384] and q[1].tolist() == [65535, 49151]
    labels, codes = projection.label_codes([{"l": "x"}, {"l": "y"}, {"l": "y"}, {}], "l")
    assert labels == ["y", "x"] and codes.tolist() == [1, 0, 0, projection.NO_LABEL]


def test_payloads_show_as_pictures_or_text():
    assert payload_fields(webp())["thumbnail"].startswith("data:image/webp;base64,")
    assert payload_fields("naïve text".encode()) == {"thumbnail": None, "text": "naïve text"}
    assert payload_fields(b"\xff\xfe\x00") == {"thumbnail": None, "text": None}
    assert payload_fields(b"") == {"thumbnail": None, "text": None}


def test_a_map_file_that_cannot_be_read_is_computed_again(tmp_path):
    maps = Maps(FakeGateway(), tmp_path, points=100, method="pca")
    (tmp_path / "maps" / "images.npz").write_bytes(b"garbage")
    assert maps.cached("images") is None and not (tmp_path / "maps" / "images.npz").exists()


def test_collection_map_round_trips(tmp_path):
    original = CollectionMap("c", 3, "pca", 1.0, "label", ["a"], np.zeros((3, 2), np.uint16),
                             np.zeros(3, np.uint16), ["x", "y", "z"], [{"label": "a"}] * 3,
                             np.ones((3, 4), np.float32))  # fmt: skip
    original.save(tmp_path / "c.npz")
    loaded = CollectionMap.load(tmp_path / "c.npz")
    assert loaded.payload() == original.payload() and loaded.ids == ["x", "y", "z"]
