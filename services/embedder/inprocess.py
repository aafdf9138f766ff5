"""In-process onnxruntime over the exported model files: the reference for parity and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.embedder import models
from services.embedder.triton_models.onnx_model import make_session
from services.embedder.triton_models.tokenizer_model import build_tokenizer, encode_batch


class InProcessEmbedder:
    """The same ONNX graphs and tokenizer that Triton serves, run in this process on the CPU."""

    def __init__(self, repository: Path, threads: int = 1) -> None:
        repository = Path(repository)
        self.image_session = make_session(str(repository / models.IMAGE_MODEL / "1" / "model.onnx"), threads)
        self.text_session = make_session(str(repository / models.TEXT_ENCODER / "1" / "model.onnx"), threads)
        self.tokenizer = build_tokenizer(
            str(repository / models.TEXT_TOKENIZER / "1" / "tokenizer.json"),
            models.TEXT_MAX_TOKENS,
        )

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [n, 224, 224, 3] -> float32 [n, 1280], unit norm."""
        assert pixels.dtype == np.uint8 and pixels.ndim == 4 and pixels.shape[1:] == (
            models.IMAGE_SIZE, models.IMAGE_SIZE, 3,
        ), (pixels.dtype, pixels.shape)  # fmt: skip
        return self.image_session.run(["embedding"], {"pixels": pixels})[0]

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, int64 [n, longest]."""
        return encode_batch(self.tokenizer, texts)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Raw strings -> float32 [n, 384], unit norm."""
        ids, mask = self.tokenize(texts)
        return self.text_session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
