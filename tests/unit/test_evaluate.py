"""Leave-one-out precision@k against hand-checked cases."""

import numpy as np
import pytest

from semsearch.tools.embedder_eval import precision_at_k_loo


def test_perfectly_separated_clusters_score_one():
    rng = np.random.default_rng(0)
    centers = np.eye(4, 16, dtype=np.float32) * 10
    labels = np.repeat(np.arange(4), 5)
    vectors = centers[labels] + rng.normal(0, 0.1, (20, 16)).astype(np.float32)
    assert precision_at_k_loo(vectors, labels, k=4) == 1.0


def test_query_itself_is_left_out():
    # Two items per label: each item's only same-label neighbour is the other one.
    vectors = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    assert precision_at_k_loo(vectors, labels, k=1) == 1.0
    assert precision_at_k_loo(vectors, labels, k=2) == pytest.approx(0.5)


def test_random_vectors_score_near_chance():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 2000)
    assert abs(precision_at_k_loo(vectors, labels, k=10) - 0.1) < 0.03
