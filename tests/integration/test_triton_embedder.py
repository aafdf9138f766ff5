"""The embedder end to end: real tritonserver, real images and texts, parity, per-item errors."""

from __future__ import annotations

import asyncio
import glob
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semsearch.datasets import fashion_mnist, fortunes
from semsearch.media import decode_image
from semsearch.procs import StartupError
from services.embedder import models
from services.embedder.export import SAMPLE_TEXTS, read_versions
from services.embedder.inprocess import InProcessEmbedder
from services.embedder.triton import TritonServer
from services.gateway.embedder_client import EmbedderClient, EmbedderUnavailable

pytestmark = pytest.mark.integration


def sample_photos() -> list[bytes]:
    """Real photos shipped in scikit-learn (JPEG, 427x640)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [(folder / name).read_bytes() for name in ("china.jpg", "flower.jpg")]


def embed(url: str, method: str, items, **kwargs):
    async def run():
        async with EmbedderClient(url, **kwargs) as client:
            return await getattr(client, method)(items)

    return asyncio.run(run())


def test_images_have_shape_norm_and_version(triton, model_repository):
    data = fashion_mnist("test")
    items = [data.png(i) for i in range(40)] + sample_photos()
    result = embed(triton.grpc_url, "embed_images", items, batch_size=16)
    assert result.vectors.shape == (42, models.IMAGE_DIM) and result.vectors.dtype == np.float32
    assert result.errors == [None] * 42
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.model_version == read_versions(model_repository)[models.IMAGE_MODEL] + "+cpu"


def test_texts_have_shape_norm_and_meaning(triton):
    texts = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."]
    result = embed(triton.grpc_url, "embed_texts", texts)
    assert result.vectors.shape == (3, models.TEXT_DIM)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    sims = result.vectors @ result.vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # paraphrases are closer than unrelated sentences


def test_triton_matches_inprocess_onnxruntime(triton, model_repository):
    local = InProcessEmbedder(model_repository)
    data = fashion_mnist("test")
    pixels = np.stack([decode_image(b) for b in [data.png(i) for i in range(20)] + sample_photos()])
    served = embed(triton.grpc_url, "embed_pixels", pixels, batch_size=8)
    assert np.abs(served - local.embed_pixels(pixels)).max() <= 1e-5

    corpus = fortunes()
    texts = list(SAMPLE_TEXTS) + corpus.texts[:: len(corpus.texts) // 40][:40]
    served_texts = embed(triton.grpc_url, "embed_texts", texts, batch_size=16)
    # The client batches by length; in-process, embed each text alone (no padding at all).
    expected = np.concatenate([local.embed_texts([" ".join(t.split())]) for t in texts])
    assert np.abs(served_texts.vectors - expected).max() <= 1e-5


def test_bad_items_fail_alone(triton):
    data = fashion_mnist("test")
    good = data.png(0)
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    items = [good, b"", b"GIF89a garbage", good[: len(good) // 2], buffer.getvalue(), sample_photos()[0]]
    result = embed(triton.grpc_url, "embed_images", items)
    assert result.errors[0] is None and result.errors[5] is None
    assert "empty" in result.errors[1]
    assert "not recognised" in result.errors[2] or "could not be decoded" in result.errors[2]
    assert result.errors[3] is not None
    assert "decompression bomb" in result.errors[4]
    assert not result.vectors[1:5].any()
    single = embed(triton.grpc_url, "embed_images", [good])
    np.testing.assert_allclose(result.vectors[0], single.vectors[0], atol=1e-6)

    texts = embed(triton.grpc_url, "embed_texts", ["fine text", "", "   ", "another fine text"])
    assert texts.errors[0] is None and texts.errors[3] is None
    assert texts.errors[1] == "text is empty" and texts.errors[2] == "text is empty"
    assert texts.ok.tolist() == [True, False, False, True]


def test_long_text_is_truncated_not_rejected(triton):
    result = embed(triton.grpc_url, "embed_texts", ["semantic search " * 600])
    assert result.errors == [None]


def test_metrics_endpoint_reports_inference(triton):
    embed(triton.grpc_url, "embed_texts", ["count me"])
    body = urllib.request.urlopen(triton.metrics_url, timeout=5).read().decode()
    assert f'nv_inference_request_success{{model="{models.TEXT_MODEL}"' in body
    assert "nv_inference_queue_duration_us" in body


def test_one_client_survives_a_triton_restart(model_repository, tmp_path):
    server = TritonServer(model_repository, work_dir=tmp_path)
    server.start()

    async def scenario():
        async with EmbedderClient(server.grpc_url, timeout_s=5) as client:
            before = (await client.embed_texts(["restart me"])).vectors
            server.stop()
            assert not glob.glob(f"/dev/shm/{server.shm_prefix}*")
            with pytest.raises(EmbedderUnavailable, match="Triton at"):
                await client.embed_texts(["nobody home"])
            server.start()
            deadline = asyncio.get_running_loop().time() + 10
            while not await client.ready():  # reconnect backoff is capped at 1 s
                assert asyncio.get_running_loop().time() < deadline, "client did not reconnect"
                await asyncio.sleep(0.1)
            after = (await client.embed_texts(["restart me"])).vectors
            np.testing.assert_array_equal(before, after)

    try:
        asyncio.run(scenario())
        server.kill()  # SIGKILL: stubs die with the group, shared memory is still cleaned
        assert not glob.glob(f"/dev/shm/{server.shm_prefix}*")
    finally:
        server.stop()


def test_startup_failure_is_reported_and_cleaned_up(tmp_path):
    broken = tmp_path / "repo"
    (broken / "bad_model" / "1").mkdir(parents=True)
    (broken / "bad_model" / "config.pbtxt").write_text('name: "bad_model"\nbackend: "python"\n')
    (broken / "bad_model" / "1" / "model.py").write_text("raise RuntimeError('broken model')\n")
    (broken / "manifest.json").write_text('{"export_format": 0, "versions": {}}')
    server = TritonServer(broken, work_dir=tmp_path / "work", startup_timeout=60)
    with pytest.raises(StartupError, match="tritonserver"):
        server.start()
    assert server.pid is None
    assert not glob.glob(f"/dev/shm/{server.shm_prefix}*")


def test_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="semsearch embedder export"):
        TritonServer(tmp_path / "nowhere", work_dir=tmp_path).start()


def test_concurrent_single_queries_share_triton_requests(triton):
    """Single texts and images (queries) that arrive together are embedded in shared requests, and each
    caller gets its own vector and its own error."""
    texts = [f"query number {i} about {word}" for i, word in enumerate(["boots", "cats", "rain"] * 10)]
    texts[7] = "   "  # an empty query fails alone
    images = [fashion_mnist("test").png(i) for i in range(12)]

    async def run():
        async with EmbedderClient(triton.grpc_url) as client:
            alone = await client.embed_texts(texts[:2] + texts[8:9])  # one request: the reference
            together = await asyncio.gather(*(client.embed_texts([t]) for t in texts))
            pictures = await asyncio.gather(*(client.embed_images([b]) for b in images))
            reference = await client.embed_images(images)
            return alone, together, pictures, reference, client._coalescer.calls

    alone, together, pictures, reference, calls = asyncio.run(run())
    assert calls < len(texts) + len(images)  # fewer Triton requests than queries
    assert together[7].errors == ["text is empty"] and all(
        r.errors == [None] for i, r in enumerate(together) if i != 7
    )
    for i, j in ((0, 0), (1, 1), (8, 2)):
        np.testing.assert_allclose(together[i].vectors[0], alone.vectors[j], atol=1e-5)
    np.testing.assert_allclose(np.concatenate([p.vectors for p in pictures]), reference.vectors, atol=1e-5)
