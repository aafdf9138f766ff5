"""Triton python-backend model: the WordNet part of the words-for-pictures bridge (services/embedder/
bridge.py). Raw strings in; for each, weights over the 1,000 ImageNet classes: uniform over the
classes that WordNet places at or below the text's first noun sense, zeros when it knows none. The
table (`words.json` beside this file) is built at export time from Debian's WordNet 3.0."""

from __future__ import annotations

import json
import os

import numpy as np

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
    """float32 [num_classes]: 1/|S| on the classes S of the text's first known base form."""
    row = np.zeros(table["num_classes"], dtype=np.float32)
    forms = base_forms(text, table)
    if forms:
        classes = table["classes"][forms[0]]
        row[classes] = 1.0 / len(classes)
    return row


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        path = os.path.join(args["model_repository"], args["model_version"], "words.json")
        with open(path, encoding="utf-8") as f:
            self.table = json.load(f)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            rows = np.stack([wordnet_weights(t.decode("utf-8", errors="replace"), self.table) for t in texts])
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("wordnet_weights", rows)])
            )
        return responses
