"""Shared fixtures: the exported model repository and a real tritonserver on free 127.0.0.1 ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory) -> Path:
    """The exported model repository (scripts/setup.sh builds it); exported here if missing."""
    from services.embedder.export import export_models, repository_is_current

    configured = Path(os.environ.get("SEMSEARCH_MODEL_REPOSITORY", ROOT / "var" / "model_repository"))
    if repository_is_current(configured):
        return configured
    repository = tmp_path_factory.mktemp("models") / "model_repository"
    export_models(repository)
    return repository


@pytest.fixture(scope="session")
def triton(model_repository, tmp_path_factory):
    """One tritonserver for the session (tests that stop a server start their own)."""
    from services.embedder.triton import TritonServer

    server = TritonServer(model_repository, work_dir=tmp_path_factory.mktemp("triton"), startup_timeout=90)
    server.start()
    yield server
    server.stop()


def create_demo_collections(client) -> None:
    """The two collections the demo creates: `images` (EfficientNet-Lite0, field label) and `texts`
    (all-MiniLM-L6-v2)."""
    client.create_collection("images", model="efficientnet_lite0", fields={"label": "string"})
    client.create_collection("texts", model="minilm_l6")


def collection_dir(data_dir: Path, name: str) -> Path:
    """Where a shard keeps a collection's slice: collections/<name>-<incarnation>/."""
    matches = sorted((Path(data_dir) / "collections").glob(f"{name}-*"))
    assert len(matches) == 1, matches
    return matches[0]
