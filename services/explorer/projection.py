"""2-D layouts of a collection's sample: PCA (instant, keeps only the largest directions of variance) or
UMAP on the first 50 principal components (minutes for 50,000 points; classes the network separates
show up as islands). Coordinates are quantized to 16 bits per axis for the browser."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

PCA_DIMS = 50
UMAP_NEIGHBOURS = 15
UMAP_MIN_DIST = 0.1
NO_LABEL = 65535


def pca(vectors: np.ndarray, dims: int, seed: int = 0) -> np.ndarray:
    """The first `dims` principal components of vectors [n, d] (float32 [n, min(dims, d, n)])."""
    from sklearn.decomposition import PCA

    dims = min(dims, vectors.shape[1], len(vectors))
    return (
        PCA(n_components=dims, svd_solver="randomized", random_state=seed)
        .fit_transform(vectors)
        .astype(np.float32)
    )


def layout(
    vectors: np.ndarray, method: str, progress: Callable[[str, float], None] = lambda phase, done: None
) -> np.ndarray:
    """2-D coordinates [n, 2] of vectors [n, d]; `progress(phase, done)` hears where it is (done in 0..1)."""
    if len(vectors) < 3:
        return np.zeros((len(vectors), 2), dtype=np.float32)
    progress("principal components", 0.05)
    reduced = pca(vectors, 2 if method == "pca" else PCA_DIMS)
    if method == "pca" or len(vectors) <= UMAP_NEIGHBOURS + 1:
        return pca(reduced, 2) if reduced.shape[1] > 2 else reduced
    progress("UMAP layout (neighbour graph, then optimisation)", 0.2)
    os.environ.setdefault(
        "NUMBA_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "semsearch-numba")
    )
    import umap

    model = umap.UMAP(
        n_neighbors=UMAP_NEIGHBOURS,
        min_dist=UMAP_MIN_DIST,
        n_components=2,
        random_state=None,
        low_memory=True,
    )
    return model.fit_transform(reduced).astype(np.float32)


def quantize(xy: np.ndarray) -> np.ndarray:
    """Coordinates [n, 2] -> uint16 [n, 2] over their bounding box (a square one, so shapes keep their
    proportions), 0..65535."""
    if not len(xy):
        return np.zeros((0, 2), dtype=np.uint16)
    low = xy.min(axis=0)
    span = float((xy.max(axis=0) - low).max()) or 1.0
    centred = (xy - low) / span + (1.0 - (xy.max(axis=0) - low) / span) / 2
    return np.clip(np.round(centred * 65535), 0, 65535).astype(np.uint16)


def label_codes(metadata: list[dict[str, str]], field: str | None) -> tuple[list[str], np.ndarray]:
    """The distinct values of `field` (most frequent first) and each item's index into them (NO_LABEL
    when it has none; values beyond the 65,535th share NO_LABEL too)."""
    if not field:
        return [], np.full(len(metadata), NO_LABEL, dtype=np.uint16)
    values = [m.get(field) for m in metadata]
    counts: dict[str, int] = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    labels = sorted(counts, key=lambda v: (-counts[v], v))[:NO_LABEL]
    index = {v: i for i, v in enumerate(labels)}
    return labels, np.array(
        [index.get(v, NO_LABEL) if v is not None else NO_LABEL for v in values], dtype=np.uint16
    )
