"""Composition root of the embedder: tritonserver on the model repository, until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from services.embedder.config import EmbedderSettings
from services.embedder.triton import TritonPorts, TritonServer

log = logging.getLogger(__name__)


def build(settings: EmbedderSettings, work_dir: Path | None = None) -> TritonServer:
    return TritonServer(
        settings.model_repository,
        work_dir=work_dir or settings.model_repository.parent / "triton",
        host=settings.host,
        ports=TritonPorts(http=settings.http_port, grpc=settings.grpc_port, metrics=settings.metrics_port),
        config_name=settings.config_name,
        startup_timeout=settings.startup_timeout_s,
    )


def run(settings: EmbedderSettings, work_dir: Path | None = None) -> None:
    """Start Triton, wait for every model to be ready, serve until a signal, stop it (and its python
    backend processes and shared memory)."""
    server = build(settings, work_dir)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info(
        "Triton ready: gRPC %s, HTTP %s, metrics %s", server.grpc_url, server.http_url, server.metrics_url
    )
    try:
        stop.wait()
    finally:
        server.stop()
