"""How far a slice's data moved from what its IVF index was trained for, for retraining.

An IVF index quantizes each vector to its nearest centroid; when new writes sit far from every centroid
(a new kind of data), its lists describe them poorly and searches must go deeper. The measure: the mean
squared distance of a uniform sample of the slice's live vectors to their nearest centroid, divided by
the same mean when the slice was first built from this template (the baseline, kept with the template
so that compactions do not reset it). A uniform sample weighs new data by its share of the slice: 1.0
means the data still looks like what the index was built on, 1.25 that the index quantizes the slice
25% worse on average. Shard 0 retrains a collection when its shards' drift passes a threshold
(coordinator.py); the new template starts a new baseline."""

from __future__ import annotations

import numpy as np

from services.indexer.depth import IvfDepth

SAMPLE = 500
INTERVAL_S = 60.0


def mean_distance(model: IvfDepth, vectors: np.ndarray) -> float:
    """Mean squared distance of vectors [n, d] to their nearest centroid."""
    if not len(vectors):
        return 0.0
    return float(model.probes(vectors, 1).distances[:, 0].mean())


def ratio(model: IvfDepth, vectors: np.ndarray, baseline: float) -> float:
    """The drift of a sample of a slice against its template's baseline (0.0: unknown)."""
    if baseline <= 0 or not len(vectors):
        return 0.0
    return mean_distance(model, vectors) / baseline
