"""The exported ONNX graphs compute what the PyTorch models compute, on real inputs."""

import numpy as np
import pytest

from semsearch.datasets import fashion_mnist, fortunes
from semsearch.media import decode_image
from services.embedder.export import read_versions, torch_image_model, torch_text_model
from services.embedder.inprocess import InProcessEmbedder
from tests.integration.test_triton_embedder import sample_photos

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def test_image_onnx_matches_pytorch(model_repository):
    data = fashion_mnist("test")
    pixels = np.stack([decode_image(b) for b in [data.png(i) for i in range(0, 1000, 100)] + sample_photos()])
    with torch.no_grad():
        expected = torch_image_model()(torch.from_numpy(pixels)).numpy()
    got = InProcessEmbedder(model_repository, threads=2).embed_pixels(pixels)
    assert got.shape == (12, 1280)
    assert min_cosine(got, expected) >= 0.9999


def test_text_onnx_matches_pytorch(model_repository):
    corpus = fortunes()
    texts = [*corpus.texts[:: len(corpus.texts) // 12][:12], "word " * 400]  # one truncated
    embedder = InProcessEmbedder(model_repository, threads=2)
    ids, mask = embedder.tokenize(texts)
    with torch.no_grad():
        expected = torch_text_model()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = embedder.embed_texts(texts)
    assert got.shape == (13, 384)
    assert min_cosine(got, expected) >= 0.9999


def test_versions_are_content_hashes(model_repository):
    versions = read_versions(model_repository)
    assert versions["efficientnet_lite0"].startswith("efficientnet_lite0@")
    assert versions["minilm_l6"].startswith("minilm_l6@")
    assert all(len(v.split("@")[1]) == 12 for v in versions.values())
