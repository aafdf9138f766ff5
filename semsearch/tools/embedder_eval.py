"""Quality of the served embeddings: leave-one-out precision@k on Fashion-MNIST, and parity with
in-process onnxruntime."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from semsearch.datasets import fashion_mnist
from semsearch.media import decode_image
from services.embedder.export import SAMPLE_TEXTS
from services.embedder.inprocess import InProcessEmbedder
from services.gateway.embedder_client import EmbedderClient


def precision_at_k_loo(vectors: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out precision@k of exact cosine search: for every item, the share of its k
    nearest other items (by cosine similarity) that carry its label. vectors [n, d], labels [n]."""
    assert vectors.ndim == 2 and labels.shape == (vectors.shape[0],), (vectors.shape, labels.shape)
    assert vectors.shape[0] > k, "need more than k items"
    x = vectors.astype(np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    hits = 0
    for start in range(0, len(x), 1024):
        sims = x[start : start + 1024] @ x.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # leave the query itself out
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        hits += int((labels[top] == labels[start : start + 1024, None]).sum())
    return hits / (len(x) * k)


async def _embed_dataset(url: str, pngs: list[bytes], batch: int) -> tuple[np.ndarray, list]:
    async with EmbedderClient(url, batch_size=batch) as client:
        vectors, errors = [], []
        chunk = batch * 8
        with tqdm(total=len(pngs), desc="embedding via Triton", unit="img") as bar:
            for start in range(0, len(pngs), chunk):
                result = await client.embed_images(pngs[start : start + chunk])
                vectors.append(result.vectors)
                errors.extend(result.errors)
                bar.update(len(result.errors))
    return np.concatenate(vectors), errors


async def _parity(url: str, repository: Path, pixels: np.ndarray) -> dict[str, float]:
    local = InProcessEmbedder(repository)
    async with EmbedderClient(url) as client:
        served_images = await client.embed_pixels(pixels)
        served_texts = await client.embed_texts(list(SAMPLE_TEXTS))
    return {
        "parity_max_abs_diff_images": float(np.abs(served_images - local.embed_pixels(pixels)).max()),
        "parity_max_abs_diff_texts": float(
            np.abs(served_texts.vectors - local.embed_texts(list(SAMPLE_TEXTS))).max()
        ),
    }


def evaluate(url: str, repository: Path, limit: int = 10_000, k: int = 10) -> dict:
    """Embed `limit` Fashion-MNIST test images through Triton and score them."""
    data = fashion_mnist("test")
    n = min(limit, len(data.labels))
    begin = time.perf_counter()
    pngs = [data.png(i) for i in range(n)]
    vectors, errors = asyncio.run(_embed_dataset(url, pngs, batch=32))
    failed = sum(e is not None for e in errors)
    if failed:
        raise RuntimeError(f"{failed} images failed to embed, first: {next(e for e in errors if e)}")
    embed_seconds = time.perf_counter() - begin
    labels = data.labels[:n]
    pixels = np.stack([decode_image(pngs[i]) for i in range(64)])
    return {
        "dataset": "fashion-mnist-test",
        "n": n,
        "k": k,
        "precision_at_10": precision_at_k_loo(vectors, labels, k),
        "precision_at_10_raw_pixels": precision_at_k_loo(
            data.images[:n].reshape(n, -1).astype(np.float32), labels, k
        ),
        "precision_at_10_random": float(np.mean(np.bincount(labels) / n)),
        "norm_min": float(np.linalg.norm(vectors, axis=1).min()),
        "norm_max": float(np.linalg.norm(vectors, axis=1).max()),
        **asyncio.run(_parity(url, repository, pixels)),
        "embed_seconds": embed_seconds,
        "images_per_s": n / embed_seconds,
    }
