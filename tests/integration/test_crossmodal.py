"""Words for pictures through the public API on a real stack: category words find images of their
category; the response names the bridge; collections that cannot read words say so; Triton serves
the bridge exactly as the in-process computation from the exported parts."""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from semsearch.client import Item, SemsearchClient
from semsearch.core.models import BRIDGE_MODEL, IMAGE_DIM
from semsearch.datasets import fashion_mnist
from semsearch.tools.stack import Stack
from services.embedder import bridge, models
from services.embedder.export import read_versions
from services.embedder.inprocess import InProcessEmbedder
from services.embedder.triton_models.bridge_tokenizer_model import wordnet_weights
from services.gateway.embedder_client import EmbedderClient

pytestmark = pytest.mark.integration

IMAGES = 1_000


@pytest.fixture(scope="module")
def stack(model_repository, tmp_path_factory):
    home = tmp_path_factory.mktemp("crossmodal") / "stack"
    with Stack(home, model_repository, num_shards=2).start() as stack:
        with SemsearchClient(stack.gateway_address, timeout_s=120) as client:
            client.create_collection("images", model="efficientnet_lite0", fields={"label": "string"})
            data = fashion_mnist("test")
            items = [
                Item(id=f"t{i}", image=data.png(i), metadata={"label": data.classes[data.labels[i]]})
                for i in range(IMAGES)
            ]
            for start in range(0, IMAGES, 64):
                assert client.upsert("images", items[start : start + 64]).failed == 0
            client.create_collection("plain", dim=16)
        yield stack


@pytest.fixture
def client(stack):
    with SemsearchClient(stack.gateway_address, timeout_s=60) as c:
        yield c


@pytest.mark.parametrize(
    ("words", "label"),
    [("trousers", "Trouser"), ("bag", "Bag"), ("ankle boot", "Ankle boot"), ("sneakers", "Sneaker")],
)
def test_words_find_pictures_of_their_category(client, model_repository, words, label):
    response = client.search("images", text=words, k=10)
    labels = [hit.metadata["label"] for hit in response.hits]
    assert labels.count(label) >= 6, labels
    version = read_versions(model_repository)[BRIDGE_MODEL]
    assert response.model_version == f"{version}+cpu"  # which route answered, and its version


def test_a_collection_that_reads_no_words_says_so(client):
    described = client.describe_collection("images")
    assert (list(described.query_kinds), list(described.item_kinds)) == (
        ["image", "text", "vector", "id"],
        ["image", "vector"],
    )
    assert list(client.describe_collection("plain").query_kinds) == ["vector", "id"]
    with pytest.raises(grpc.RpcError) as info:
        client.search("plain", text="a red sneaker")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        info.value.details() == "text: collection 'plain' accepts vector, stored id queries, not text queries"
    )
    # Items stay what the collection's model embeds: words are queries, not items, of an image collection.
    response = client.upsert("images", [Item(id="words", text="a boot")])
    assert (
        response.results[0].error
        == "items[0].text: collection 'images' takes image or vector items, not texts"
    )


def test_triton_serves_the_bridge_as_computed_in_process(stack, model_repository):
    texts = ["ankle boot", "shoes", "a red sneaker", "mammal", "two dogs on a beach", "geese"]

    async def served():
        async with EmbedderClient(stack.triton.grpc_url) as embedder:
            return await embedder.embed_texts(texts, model=BRIDGE_MODEL)

    result = asyncio.run(served())
    assert result.vectors.shape == (len(texts), IMAGE_DIM) and result.errors == [None] * len(texts)
    # In process: the exported graph in onnxruntime, one text at a time (no padding), and the formula.
    table = json.loads((model_repository / models.BRIDGE_TOKENIZER / "1" / "words.json").read_text())
    graph = model_repository / models.BRIDGE_ENCODER / "1" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    text_model = InProcessEmbedder(model_repository)
    expected = []
    for text in texts:
        ids, mask = text_model.tokenize([text])
        rows = wordnet_weights(text, table)[None]
        expected.append(
            session.run(["embedding"], {"input_ids": ids, "attention_mask": mask, "wordnet_weights": rows})[
                0
            ][0]
        )
    expected = np.asarray(expected)
    constants = {c.name: numpy_helper.to_array(c) for c in onnx.load(str(graph)).graph.initializer}
    class_text, prototypes = constants["bridge_class_text_t"].T, constants["bridge_prototypes"]
    formula = [
        bridge.reference_query(v, wordnet_weights(t, table), class_text, prototypes)
        for v, t in zip(text_model.embed_texts(texts), texts)
    ]
    np.testing.assert_allclose(expected, np.asarray(formula), atol=1e-5)
    np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
