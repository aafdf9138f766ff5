"""Triton python-backend model: the first step of the words-for-pictures bridge (services/embedder/
bridge.py explains the method). Raw strings in; MiniLM token ids and mask out, as the text model's
tokenizer makes them, and for each text its WordNet weights over the 1,000 ImageNet classes: uniform
over the classes that WordNet places at or below the text's first noun sense, zeros when it knows
none. Beside this file: `tokenizer.json`, `tokenizer_model.py` (the text model's tokenizer code) and
`words.json` (WordNet lemma -> classes, irregular plurals), built at export time."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

try:
    from services.embedder.triton_models.tokenizer_model import build_tokenizer, encode_batch
except ImportError:  # served by Triton: the tokenizer's code is copied beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tokenizer_model import build_tokenizer, encode_batch

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


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.tokenizer = build_tokenizer(os.path.join(folder, "tokenizer.json"), int(params["max_tokens"]))
        with open(os.path.join(folder, "words.json"), encoding="utf-8") as f:
            self.table = json.load(f)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            texts = [
                t.decode("utf-8", errors="replace")
                for t in pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            ]
            ids, mask = encode_batch(self.tokenizer, texts)  # padded per request, as the text model
            rows = np.stack([wordnet_weights(t, self.table) for t in texts])
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("input_ids", ids),
                        pb_utils.Tensor("attention_mask", mask),
                        pb_utils.Tensor("wordnet_weights", rows),
                    ]
                )
            )
        return responses
