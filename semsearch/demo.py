"""The main job on a fresh machine: export models, start Triton, embed real data, show neighbours."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DEMO_IMAGES = 2_000
DEMO_TEXTS = 3_000
TEXT_QUERIES = (
    "computers crash and programmers fix bugs",
    "love makes the world go round",
    "the law and lawyers",
)


def run_demo(repository: Path, triton_url: str | None) -> int:
    from semsearch.datasets import fashion_mnist, fortunes
    from services.embedder.client import EmbedderClient
    from services.embedder.evaluate import precision_at_k_loo
    from services.embedder.export import export_models, repository_is_current
    from services.embedder.triton import running_triton

    if not repository_is_current(repository):
        print(f"Exporting models from packaged weights into {repository} ...", flush=True)
        export_models(repository)
    images = fashion_mnist("test")
    corpus = fortunes()
    step = max(1, len(corpus.texts) // DEMO_TEXTS)
    texts = corpus.texts[::step][:DEMO_TEXTS]
    categories = corpus.categories[::step][:DEMO_TEXTS]
    pngs = [images.png(i) for i in range(DEMO_IMAGES)]

    async def embed(url: str):
        async with EmbedderClient(url) as client:
            t0 = time.perf_counter()
            image_vectors = await client.embed_images(pngs)
            t1 = time.perf_counter()
            text_vectors = await client.embed_texts(texts)
            t2 = time.perf_counter()
            queries = await client.embed_texts(list(TEXT_QUERIES))
            return image_vectors, text_vectors, queries, (t1 - t0, t2 - t1)

    with running_triton(triton_url, repository) as url:
        print(f"Triton serving on {url}; embedding {DEMO_IMAGES} Fashion-MNIST images and "
              f"{len(texts)} fortunes ...", flush=True)  # fmt: skip
        image_vectors, text_vectors, queries, seconds = asyncio.run(embed(url))

    print(f"\nimages: {DEMO_IMAGES} in {seconds[0]:.1f}s ({DEMO_IMAGES / seconds[0]:.0f}/s), "
          f"model {image_vectors.model_version}, dim {image_vectors.vectors.shape[1]}")  # fmt: skip
    print(f"texts:  {len(texts)} in {seconds[1]:.1f}s ({len(texts) / seconds[1]:.0f}/s), "
          f"model {text_vectors.model_version}, dim {text_vectors.vectors.shape[1]}")  # fmt: skip
    labels = images.labels[:DEMO_IMAGES]
    p10 = precision_at_k_loo(image_vectors.vectors, labels, 10)
    print(f"\nImage neighbours (exact cosine), leave-one-out precision@10 = {p10:.3f}:")
    x = image_vectors.vectors
    for q in (0, 1, 2, 3):
        sims = x @ x[q]
        sims[q] = -np.inf
        top = np.argsort(-sims)[:5]
        names = ", ".join(f"{images.classes[labels[i]]} ({sims[i]:.2f})" for i in top)
        print(f"  #{q} {images.classes[labels[q]]:<12} -> {names}")
    print("\nText search over the fortunes (exact cosine):")
    for query, vector in zip(TEXT_QUERIES, queries.vectors):
        sims = text_vectors.vectors @ vector
        print(f'  "{query}"')
        for i in np.argsort(-sims)[:3]:
            snippet = texts[i] if len(texts[i]) <= 90 else texts[i][:87] + "..."
            print(f"    {sims[i]:.3f} [{categories[i]}] {snippet}")
    return 0
