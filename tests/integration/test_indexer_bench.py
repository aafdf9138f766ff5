"""The indexer benchmark end to end at small scale, and its synthetic embedding generator."""

from __future__ import annotations

import numpy as np
import pytest

from semsearch.tools.bench.indexer import bench, clustered_vectors

SUMMARY_KEYS = {
    "n", "dim", "factory", "nprobe", "rerank", "recall_at_10", "recall_at_10_inprocess",
    "p50_ms", "p99_ms", "inprocess_p50_ms", "echo_p50_ms", "p50_ratio", "qps", "echo_qps",
    "qps_ratio", "qps_ratio_to_floor", "batch_size_mean", "bytes_per_vector", "bytes_per_vector_goal",
    "add_rate_vectors_per_s", "train_seconds", "rebuild_seconds", "rebuild_rate_vectors_per_s",
    "raw_dtype", "goals_met",
}  # fmt: skip
POSITIVE_KEYS = (
    "p50_ms", "p99_ms", "inprocess_p50_ms", "echo_p50_ms", "p50_ratio", "qps", "echo_qps", "qps_ratio",
    "batch_size_mean", "bytes_per_vector", "add_rate_vectors_per_s", "rebuild_rate_vectors_per_s",
)  # fmt: skip


def test_clustered_vectors_are_deterministic_unit_and_anisotropic():
    dim = 64
    x = clustered_vectors(5_000, dim, seed=3)
    assert x.shape == (5_000, dim) and x.dtype == np.float32
    np.testing.assert_array_equal(x, clustered_vectors(5_000, dim, seed=3))
    assert not np.array_equal(x, clustered_vectors(5_000, dim, seed=4))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # Isotropic data would put ~1/dim of the variance on the top principal component.
    eigenvalues = np.linalg.eigvalsh(np.cov(x.T))
    assert eigenvalues[-1] / eigenvalues.sum() > 4 / dim
    # Clustered: a point's nearest neighbour is much closer than a random point.
    sims = x[:200] @ x[200:].T
    assert np.median(sims.max(axis=1)) > np.median(sims) + 0.3


@pytest.mark.integration
def test_bench_small_run_reports_every_measurement(tmp_path):
    rows, summary = bench(
        n=20_000,
        dim=64,
        factory="IVF64,PQ16",
        queries=100,
        seconds=0.5,
        clients=4,
        progress=False,
        work_dir=tmp_path,
    )
    assert not SUMMARY_KEYS - summary.keys(), SUMMARY_KEYS - summary.keys()
    assert summary["n"] == 20_000 and summary["factory"] == "IVF64,PQ16" and summary["nprobe"] >= 1
    assert summary["recall_at_10"] >= 0.8, summary
    assert summary["recall_at_10_inprocess"] >= 0.8, summary
    for key in POSITIVE_KEYS:
        assert summary[key] > 0, (key, summary)
    assert summary["bytes_per_vector_goal"] == 16 + 8
    assert set(summary["goals_met"]) == {
        "recall_at_10", "p50_ratio", "qps_ratio", "qps_ratio_to_floor", "bytes_per_vector",
    }  # fmt: skip
    assert rows and all(isinstance(r, tuple) and all(isinstance(c, str) for c in r) for r in rows)
