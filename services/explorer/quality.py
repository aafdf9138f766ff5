"""How good is the representation? For items with a label, leave-one-out precision@k of exact
nearest-neighbour search (the share of each item's k nearest others that carry its label), per label,
and which labels the neighbours of each label carry instead."""

from __future__ import annotations

import numpy as np


def label_report(vectors: np.ndarray, labels: list[str | None], k: int = 10, metric: str = "cosine") -> dict:
    """The report over the labelled items of vectors [n, d] (items without a label are left out)."""
    keep = [i for i, label in enumerate(labels) if label is not None]
    if len(keep) <= k:
        return {"k": k, "sample": len(keep), "overall": None, "per_label": []}
    x = np.asarray(vectors[keep], dtype=np.float32)
    y = np.array([labels[i] for i in keep])
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    neighbours = np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), 512):
        block = x[start : start + 512]
        if metric == "l2":
            scores = -(
                np.einsum("ij,ij->i", block, block)[:, None] - 2 * block @ x.T + np.einsum("ij,ij->i", x, x)
            )
        else:
            scores = block @ x.T
        scores[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf  # leave one out
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        neighbours[start : start + len(block)] = top
    hits = y[neighbours] == y[:, None]
    per_label = []
    for label in sorted(set(y.tolist())):
        mine = y == label
        others = y[neighbours[mine]][~hits[mine]]
        values, counts = np.unique(others, return_counts=True)
        order = np.argsort(-counts)[:3]
        total = mine.sum() * k
        per_label.append(
            {
                "label": label,
                "count": int(mine.sum()),
                "precision": round(float(hits[mine].mean()), 4),
                "confused_with": [
                    {"label": str(values[i]), "share": round(float(counts[i] / total), 4)} for i in order
                ],
            }
        )
    per_label.sort(key=lambda row: row["precision"])
    return {"k": k, "sample": len(x), "overall": round(float(hits.mean()), 4), "per_label": per_label}
