"""`semsearch bench peers` end to end at small scale: the stack and a real Chroma server (from
.venv-peers, made by scripts/setup.sh) on the same vectors; both reach the recall target, every
figure is there, and the Chroma server is gone afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from semsearch.tools.bench.peers import PEERS_PYTHON, bench

pytestmark = pytest.mark.integration


def chroma_servers() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/chroma") and b"run" in argv:
                pids.append(int(proc.name))
    return pids


def test_bench_peers_small_run_reports_both_sides(model_repository):
    assert PEERS_PYTHON.exists(), "scripts/setup.sh installs the benchmark peer into .venv-peers"
    before = set(chroma_servers())
    rows, summary = bench(model_repository, n=3_000, queries=50, rounds=1, seconds=0.3, clients=2)
    assert summary["stack_recall_at_10"] >= 0.95 and summary["chroma_recall_at_10"] >= 0.95, summary
    for key in (
        "stack_p50_ms",
        "chroma_p50_ms",
        "stack_qps8",
        "chroma_qps8",
        "p50_ratio_to_chroma",
        "qps8_ratio_to_chroma",
        "stack_server_cpu_ms_per_query",
        "chroma_server_cpu_ms_per_query",
    ):
        assert summary[key] > 0, (key, summary)  # fmt: skip
    assert set(summary["goals_met"]) == {
        "recall_at_10_stack", "recall_at_10_chroma", "p50_ratio_to_chroma", "qps8_ratio_to_chroma",
    }  # fmt: skip
    assert rows and all(isinstance(c, str) for r in rows for c in r)
    assert set(chroma_servers()) <= before
