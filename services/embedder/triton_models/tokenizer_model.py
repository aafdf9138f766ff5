"""Triton python-backend model that turns raw strings into MiniLM token ids (tokenizer.json beside it)."""

from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import Tokenizer


def build_tokenizer(path: str, max_tokens: int) -> Tokenizer:
    """Load tokenizer.json and replace its baked-in settings: truncate at `max_tokens`, pad to the
    longest sequence of each batch (not to a fixed length)."""
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=max_tokens)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


def encode_batch(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask, both int64 [len(texts), longest]."""
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return ids, mask


class TritonPythonModel:
    """Tokenizes every request of a dynamic batch together, then splits the result back."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer.json")
        self.tokenizer = build_tokenizer(path, int(params["max_tokens"]))

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        per_request = [
            [
                t.decode("utf-8", errors="replace")
                for t in pb_utils.get_input_tensor_by_name(r, "text").as_numpy().reshape(-1)
            ]
            for r in requests
        ]
        responses = []
        for texts in per_request:
            # Pad per request: the encoder batches requests of equal length, and one long text
            # must not make every other request in the batch pay for its padding.
            ids, mask = encode_batch(self.tokenizer, texts)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("input_ids", ids),
                        pb_utils.Tensor("attention_mask", mask),
                    ]
                )
            )
        return responses
