"""`semsearch eval crossmodal`: words for pictures, measured through the public API on a private real
stack. Category words are sent as text queries to image collections (answered by the
words-for-pictures bridge, services/embedder/bridge.py) and their hits are checked against the labels:

- the 10,000 Fashion-MNIST test images, the 10 class names in a natural phrasing (where the bridge's
  settings were chosen);
- Noto emoji drawn from Debian's font (about 1,900), labelled by Unicode subgroup, with 20 category
  words fixed before any emoji result was seen (tuned on nothing);
- latency: the same words as text queries on the image collection and on a text collection, p50 of
  the whole search and of the embedding stage (uncached), interleaved.

Prints a table and, last, one JSON object."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from semsearch.client import Item, SemsearchClient
from semsearch.core.models import IMAGE_MODEL, TEXT_MODEL
from semsearch.tools.stack import Stack

log = logging.getLogger(__name__)

FASHION_MNIST_QUERIES = (
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)  # fmt: skip  (class i of Fashion-MNIST)
EMOJI_QUERIES = {  # Unicode emoji subgroup -> the words a person would type
    "animal-mammal": "mammal", "animal-bird": "bird", "animal-bug": "insect", "animal-marine": "sea animal",
    "plant-flower": "flower", "food-fruit": "fruit", "food-vegetable": "vegetable", "food-sweet": "dessert",
    "drink": "drink", "place-building": "building", "transport-ground": "vehicle",
    "transport-air": "aircraft", "transport-water": "boat", "sport": "sports equipment",
    "clothing": "clothing", "musical-instrument": "musical instrument", "tool": "tool",
    "computer": "computer", "office": "office supplies", "book-paper": "book",
}  # fmt: skip
GOAL_P10, GOAL_CLASS_MIN, GOAL_LATENCY_RATIO = 0.70, 0.3, 1.2
TEXTS_FOR_LATENCY = 2_000


def _ingest(client: SemsearchClient, name: str, items: list[Item], description: str) -> None:
    client.create_collection(name, model=IMAGE_MODEL, fields={"label": "string"}, thumbnails=False)
    with tqdm(total=len(items), desc=description, unit="image", leave=False) as bar:
        for start in range(0, len(items), 64):
            response = client.upsert(name, items[start : start + 64])
            if response.failed:
                first = next(r for r in response.results if r.error)
                raise RuntimeError(
                    f"{name}: {response.failed} items failed, first: {first.id}: {first.error}"
                )
            bar.update(len(items[start : start + 64]))


def _precision(client: SemsearchClient, collection: str, query: str, label: str, relevant: int) -> dict:
    response = client.search(collection, text=query, k=100, no_cache=True)
    labels = [hit.metadata["label"] for hit in response.hits]
    return {
        "query": query,
        "relevant": relevant,
        "precision_at_10": sum(x == label for x in labels[:10]) / 10,
        "precision_at_100": sum(x == label for x in labels[:100]) / 100,
        "ceiling_at_100": min(relevant, 100) / 100,
        "model_version": response.model_version,
    }


def _embed_ms(response) -> float:
    return sum(t.seconds for t in response.timings if t.stage == "embed") * 1000


def evaluate_crossmodal(repository: Path, shards: int = 2, latency_queries: int = 200) -> tuple[list, dict]:
    """(table rows, summary)."""
    from semsearch.datasets import fashion_mnist, fortunes, noto_emoji

    work = Path(tempfile.mkdtemp(prefix="semsearch-eval-crossmodal-"))
    per_query: list[dict] = []
    summary: dict = {}
    try:
        with Stack(work / "stack", repository, num_shards=shards).start() as stack:
            client = SemsearchClient(stack.gateway_address, timeout_s=120)
            data = fashion_mnist("test")
            _ingest(client, "fashion", [
                Item(id=f"t{i}", image=data.png(i), metadata={"label": data.classes[data.labels[i]]})
                for i in range(len(data.labels))
            ], "Fashion-MNIST test")  # fmt: skip
            emoji = noto_emoji()
            _ingest(client, "emoji", [
                Item(id=f"e{i}", image=png, metadata={"label": label})
                for i, (png, label) in enumerate(zip(emoji.pngs, emoji.subgroups))
            ], "Noto emoji")  # fmt: skip

            sets = {
                "fashion-mnist": [
                    ("fashion", q, data.classes[c], int((data.labels == c).sum()))
                    for c, q in enumerate(FASHION_MNIST_QUERIES)
                ],
                "noto-emoji": [
                    ("emoji", q, subgroup, emoji.subgroups.count(subgroup))
                    for subgroup, q in EMOJI_QUERIES.items()
                ],
            }
            sizes = {"fashion-mnist": len(data.labels), "noto-emoji": len(emoji.pngs)}
            for set_name, queries in sets.items():
                results = [_precision(client, *query) for query in queries]
                for result in results:
                    per_query.append({"set": set_name, **result})
                p10 = [r["precision_at_10"] for r in results]
                p100 = [r["precision_at_100"] for r in results]
                key = set_name.replace("-", "_")
                summary[key] = {
                    "images": sizes[set_name],
                    "queries": len(results),
                    "precision_at_10": round(float(np.mean(p10)), 3),
                    "precision_at_100": round(float(np.mean(p100)), 3),
                    "min_precision_at_10": min(p10),
                    "ceiling_at_100": round(float(np.mean([r["ceiling_at_100"] for r in results])), 3),
                    "random": round(float(np.mean([r["relevant"] for r in results])) / sizes[set_name], 3),
                }
            summary["model_version"] = per_query[0]["model_version"]
            fm = summary["fashion_mnist"]
            summary["goal_met"] = (
                fm["precision_at_10"] >= GOAL_P10 and fm["min_precision_at_10"] > GOAL_CLASS_MIN
            )

            # Latency: the same words, on images (the bridge) and on texts (MiniLM), interleaved, uncached.
            client.create_collection("texts", model=TEXT_MODEL)
            corpus = fortunes().texts[:TEXTS_FOR_LATENCY]
            for start in range(0, len(corpus), 64):
                client.upsert(
                    "texts",
                    [Item(id=f"f{start + j}", text=t) for j, t in enumerate(corpus[start : start + 64])],
                )
            words = list(dict.fromkeys(emoji.names))[:latency_queries]
            on_images, on_texts, embed_images, embed_texts = [], [], [], []
            for word in words:
                for collection, total, embed in (
                    ("fashion", on_images, embed_images),
                    ("texts", on_texts, embed_texts),
                ):
                    begin = time.perf_counter()
                    response = client.search(collection, text=word, k=10, no_cache=True)
                    total.append((time.perf_counter() - begin) * 1000)
                    embed.append(_embed_ms(response))
            timings = {
                "images": on_images,
                "texts": on_texts,
                "embed_images": embed_images,
                "embed_texts": embed_texts,
            }
            p50 = {name: float(np.median(values)) for name, values in timings.items()}
            summary["latency"] = {
                "queries": len(words),
                "text_on_images_p50_ms": round(p50["images"], 2),
                "text_on_texts_p50_ms": round(p50["texts"], 2),
                "p50_ratio": round(p50["images"] / p50["texts"], 3),
                "embed_text_on_images_p50_ms": round(p50["embed_images"], 2),
                "embed_text_on_texts_p50_ms": round(p50["embed_texts"], 2),
                "embed_p50_ratio": round(p50["embed_images"] / p50["embed_texts"], 3),
            }
            summary["latency"]["goal_met"] = summary["latency"]["p50_ratio"] <= GOAL_LATENCY_RATIO
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [
        (r["set"], r["query"], r["relevant"], f"{r['precision_at_10']:.2f}", f"{r['precision_at_100']:.2f}")
        for r in per_query
    ]
    return rows, summary
