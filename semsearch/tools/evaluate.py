"""Quality of search served through the gateway against exact in-process search on the same vectors."""

from __future__ import annotations

import time

import faiss
import numpy as np
from tqdm import tqdm

from semsearch.client import SemsearchClient


def fetch_vectors(
    client: SemsearchClient, collection: str, ids: list[str], batch: int = 500
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Stored vectors [n, d] and metadata of `ids`, in order (all must exist)."""
    vectors, metadata = [], []
    for start in tqdm(range(0, len(ids), batch), desc="fetching stored vectors", unit="batch"):
        chunk = ids[start : start + batch]
        response = client.get(collection, chunk, include_vectors=True)
        if response.missing:
            raise RuntimeError(
                f"{len(response.missing)} ids missing from {collection}, e.g. {response.missing[0]}"
            )
        by_id = {item.id: item for item in response.items}
        for item_id in chunk:
            vectors.append(np.array(by_id[item_id].vector.values, dtype=np.float32))
            metadata.append(dict(by_id[item_id].metadata))
    return np.stack(vectors), metadata


def evaluate_gateway(
    client: SemsearchClient, collection: str, ids: list[str], query_ids: list[str], k: int = 10
) -> dict:
    """Search by id through the gateway for every query id; compare with exact search over the
    stored vectors of `ids` (the whole collection): precision@k by the `label` metadata for both,
    and recall@k of the served results against the exact ones."""
    vectors, metadata = fetch_vectors(client, collection, ids)
    labels = np.array([m.get("label", "") for m in metadata])
    row_of = {item_id: i for i, item_id in enumerate(ids)}
    queries = np.stack([vectors[row_of[q]] for q in query_ids])
    _, exact = faiss.knn(queries, vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    served_rows, seconds = [], []
    for q in tqdm(query_ids, desc="searching via the gateway", unit="query"):
        begin = time.perf_counter()
        response = client.search(collection, id=q, k=k, no_cache=True)
        seconds.append(time.perf_counter() - begin)
        served_rows.append([row_of[h.id] for h in response.hits])
    precision_served, precision_exact, recall = [], [], []
    for qi, q in enumerate(query_ids):
        own = row_of[q]
        truth = [r for r in exact[qi] if r != own][:k]
        served = served_rows[qi][:k]
        precision_served.append(np.mean(labels[served] == labels[own]) if served else 0.0)
        precision_exact.append(np.mean(labels[truth] == labels[own]))
        recall.append(len(set(served) & set(truth)) / k)
    served_p = float(np.mean(precision_served))
    exact_p = float(np.mean(precision_exact))
    return {
        "collection": collection,
        "items": len(ids),
        "queries": len(query_ids),
        "k": k,
        "precision_at_10_served": served_p,
        "precision_at_10_exact": exact_p,
        "served_over_exact": served_p / exact_p if exact_p else 0.0,
        "recall_at_10": float(np.mean(recall)),
        "p50_ms": float(np.percentile(seconds, 50) * 1000),
        "goals_met": {"precision": served_p >= 0.98 * exact_p, "recall": float(np.mean(recall)) >= 0.95},
    }
