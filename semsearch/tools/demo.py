"""The main job on a fresh machine: the local stack, real data sets ingested, real searches shown."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Loaded first, before the searches are shown and the explorer's address is printed.
FIRST_IMAGES = 5_000
FIRST_TEXTS = 2_000
TEXT_QUERIES = (
    "computers crash and programmers fix bugs",
    "love makes the world go round",
    "the law and lawyers",
)


def _show(title: str, response) -> None:
    print(f"\n{title}")
    for rank, hit in enumerate(response.hits, 1):
        text = (
            " ".join(hit.payload.decode("utf-8", errors="replace").split())
            if not hit.metadata.get("label")
            else ""
        )
        meta = hit.metadata.get("label") or f"[{hit.metadata.get('category', '')}] {text}"
        print(f"  {rank}. {hit.score:.3f}  {hit.id:<18} {meta[:90]}")
    stages = ", ".join(f"{t.stage} {t.seconds * 1000:.1f}ms" for t in response.timings)
    print(
        f"  shards {response.shards_answered}/{response.shards_queried}, cached {response.cached}; {stages}"
    )


def run_demo(repository: Path, home: Path, *, limit: int | None = None, shards: int = 2) -> int:
    from semsearch.client import SemsearchClient
    from semsearch.datasets import fashion_mnist
    from semsearch.tools.ingest import create_collection_for, dataset_items, ingest
    from semsearch.tools.stack import StackState
    from semsearch.tools.supervisor import STATE_FILE, up
    from services.embedder.export import export_models, repository_is_current

    begin = time.perf_counter()
    if not repository_is_current(repository):
        print(f"Exporting models from packaged weights into {repository} ...", flush=True)
        export_models(repository)
    print("Starting the local stack (or reusing a running one): tritonserver, redis-server, shards, "
          "gateway and the explorer, under a supervisor ...", flush=True)  # fmt: skip
    up(home, repository, shards=shards, port=None, with_prometheus=False)
    state = StackState.load(home / STATE_FILE)
    print(f"gateway on {state.gateway}")
    datasets = (("fashion-mnist", "images", FIRST_IMAGES), ("fortunes", "texts", FIRST_TEXTS))

    def load(first_part: bool) -> None:
        for dataset, collection, first in datasets:
            wanted = min(first, limit or first) if first_part else limit
            total, items = dataset_items(dataset, wanted)
            report = ingest(client, collection, dataset, total, items,
                            state_file=home / f"ingest-{collection}-{dataset}.json")  # fmt: skip
            print(f"{dataset}: {report.succeeded} ingested, {report.failed} failed, {report.skipped} already "
                  f"there, {report.items_per_s:.0f} items/s")  # fmt: skip

    with SemsearchClient(state.gateway, timeout_s=60) as client:
        for dataset, collection, _ in datasets:
            create_collection_for(client, collection, dataset)
        # A first part, so that searches and the explorer work within a minute or two; the rest follows.
        load(first_part=True)
        images = fashion_mnist("test")
        _show(
            f"Search by image (Fashion-MNIST test image 0, a {images.classes[images.labels[0]]}):",
            client.search("images", image=images.png(0), k=5),
        )
        _show("More like item fmnist-train-1:", client.search("images", id="fmnist-train-1", k=5))
        _show(
            'The same image, only among sandals (filter: label = "Sandal"):',
            client.search("images", image=images.png(0), k=5, filter='label = "Sandal"'),
        )
        _show(
            'Words for pictures: "ankle boot" on the images (through ImageNet\'s classes):',
            client.search("images", text="ankle boot", k=5),
        )
        for query in TEXT_QUERIES:
            _show(
                f'Search by text: "{query}"', client.search("texts", text=query, k=3, include_payloads=True)
            )
        again = client.search("texts", text=TEXT_QUERIES[0], k=3, include_payloads=True)
        print(f"\nSame text query again: cached {again.cached}, "
              f"{sum(t.seconds for t in again.timings) * 1000:.1f}ms in the gateway")  # fmt: skip
        if state.explorer:
            print(f"\nThe explorer is open at {state.explorer} ({time.perf_counter() - begin:.0f}s after the "
                  "start): search by words or pictures, look at the results and the map of the embedding "
                  "space. The rest of the data loads behind it:\n", flush=True)  # fmt: skip
        load(first_part=False)
        print("\nCollections:")
        for info in client.collections():
            print(f"  {info.name}: {info.count} items, dim {info.dim}, index {info.index}, "
                  f"generations {dict(info.generations)}, model {info.model_version or '-'}")  # fmt: skip
    print(f"\nMetrics: gateway http://127.0.0.1:{state.gateway_metrics}/metrics, "
          f"triton http://127.0.0.1:{state.triton_metrics}/metrics, shards "
          + ", ".join(f"http://127.0.0.1:{p}/metrics" for p in state.shard_metrics))  # fmt: skip
    if state.explorer:
        print(f"Explorer: {state.explorer}")
    print(f"Demo took {time.perf_counter() - begin:.0f}s. The stack keeps running: try")
    print("  semsearch search --collection texts --text 'your words'     (semsearch down stops it)")
    return 0
