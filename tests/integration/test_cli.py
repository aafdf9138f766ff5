"""The `semsearch` commands against a real tritonserver: output shape, JSON last lines, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from semsearch.datasets import fashion_mnist

pytestmark = pytest.mark.integration


def semsearch(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semsearch", *args], capture_output=True, text=True, timeout=600, check=check
    )


def test_help_explains_commands():
    out = semsearch("--help").stdout
    for command in ("embedder", "embed", "eval", "bench", "demo"):
        assert command in out
    assert "--if-missing" in semsearch("embedder", "export", "--help").stdout


def test_eval_embedder_json(triton, model_repository):
    result = semsearch(
        "eval", "embedder", "--json", "--limit", "1000",
        "--triton-url", triton.grpc_url, "--repository", str(model_repository),
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["n"] == 1000
    assert report["precision_at_10"] >= 0.70
    assert report["precision_at_10"] > report["precision_at_10_raw_pixels"] - 0.05
    assert report["parity_max_abs_diff_images"] <= 1e-5
    assert report["parity_max_abs_diff_texts"] <= 1e-5


def test_embed_json_reports_per_item_errors(triton, model_repository, tmp_path):
    good = tmp_path / "shoe.png"
    good.write_bytes(fashion_mnist("test").png(0))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    result = semsearch(
        "embed", "--json", "--image", str(good), "--image", str(bad), "--text", "hello",
        "--triton-url", triton.grpc_url, "--repository", str(model_repository), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(x["input"]).name for x in lines[:2]] == ["shoe.png", "bad.jpg"]
    assert len(lines[0]["vector"]) == 1280 and lines[0]["error"] is None
    assert lines[1]["vector"] is None and "not recognised" in lines[1]["error"]
    assert len(lines[2]["vector"]) == 384


def test_bench_embedder_prints_table_then_json(triton, model_repository):
    result = semsearch(
        "bench", "embedder", "--seconds", "0.5", "--rounds", "1", "--clients", "2", "--batch", "8",
        "--triton-url", triton.grpc_url, "--repository", str(model_repository),
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["model", "engine"]
    summary = json.loads(lines[-1])
    for key in ("images_per_s_triton", "images_per_s_inprocess", "texts_per_s_triton",
                "texts_per_s_inprocess", "ratio_images", "ratio_texts"):  # fmt: skip
        assert summary[key] > 0
