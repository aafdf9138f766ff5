"""Triton python-backend model: the words-for-pictures bridge's last step (services/embedder/bridge.py
explains the method). For each text and its MiniLM embedding: class weights from the text's nearest
ImageNet class texts and from WordNet, then their convex combination of the classifier prototypes,
a unit vector in efficientnet_lite0's feature space. Its data (built at export time, beside this file):
`words.json` (WordNet lemma -> ImageNet classes at or below its first sense, irregular plurals),
`class_text.npy` [1000, 384] and `prototypes.npy` [1000, 1280]."""

from __future__ import annotations

import json
import os

import numpy as np

TOP_CLASSES = 7
TEMPERATURE = 0.1
LAMBDA = 0.5
# WordNet's "morphy" detachment rules for nouns: suffix -> replacement.
NOUN_SUFFIXES = (
    ("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"),
    ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y"),
)  # fmt: skip


def base_forms(text: str, table: dict) -> list[str]:
    """The text's WordNet noun base forms that the table knows, in morphy's order."""
    word = "_".join(text.lower().split())
    classes, exceptions = table["classes"], table["exceptions"]
    found = [word] if word in classes else []
    found += exceptions.get(word, [])
    for suffix, replacement in NOUN_SUFFIXES:
        if word.endswith(suffix):
            base = word[: len(word) - len(suffix)] + replacement
            if base in classes:
                found.append(base)
    return list(dict.fromkeys(found))


def wordnet_weights(text: str, table: dict) -> np.ndarray:
    """float32 [num_classes]: 1/|S| on the classes S of the text's first known base form, else zeros."""
    row = np.zeros(table["num_classes"], dtype=np.float32)
    forms = base_forms(text, table)
    if forms:
        classes = table["classes"][forms[0]]
        row[classes] = 1.0 / len(classes)
    return row


def bridge_vectors(
    text_embeddings: np.ndarray, wordnet_rows: np.ndarray, class_text: np.ndarray, prototypes: np.ndarray
) -> np.ndarray:
    """float32 [n, 1280] for text embeddings [n, 384] and their WordNet rows [n, 1000]."""
    similarities = text_embeddings.astype(np.float32) @ class_text.T  # [n, 1000]
    top = np.argpartition(-similarities, TOP_CLASSES - 1, axis=1)[:, :TOP_CLASSES]
    top_similarities = np.take_along_axis(similarities, top, axis=1)
    scaled = np.exp((top_similarities - top_similarities.max(axis=1, keepdims=True)) / TEMPERATURE)
    weights = np.zeros_like(similarities)
    np.put_along_axis(weights, top, scaled / scaled.sum(axis=1, keepdims=True), axis=1)
    has_wordnet = wordnet_rows.sum(axis=1, keepdims=True) > 0
    weights = np.where(has_wordnet, (1 - LAMBDA) * weights + LAMBDA * wordnet_rows, weights)
    vectors = weights @ prototypes
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "words.json"), encoding="utf-8") as f:
            self.table = json.load(f)
        self.class_text = np.load(os.path.join(folder, "class_text.npy"))
        self.prototypes = np.load(os.path.join(folder, "prototypes.npy"))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        texts, embeddings, sizes = [], [], []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            texts += [t.decode("utf-8", errors="replace") for t in batch]
            embeddings.append(pb_utils.get_input_tensor_by_name(request, "text_embedding").as_numpy())
            sizes.append(len(batch))
        rows = np.stack([wordnet_weights(t, self.table) for t in texts])
        vectors = bridge_vectors(np.concatenate(embeddings), rows, self.class_text, self.prototypes)
        responses, start = [], 0
        for size in sizes:
            output = pb_utils.Tensor("embedding", vectors[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            start += size
        return responses
