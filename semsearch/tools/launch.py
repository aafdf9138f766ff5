"""Start indexer shard processes (tests, benchmarks, the local stack) and wait until SERVING."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from semsearch.core.collections import CollectionConfig
from semsearch.procs import ManagedProcess, StartupError, free_port, is_bind_error
from semsearch.rpc import health_serving
from semsearch.specs import spec_from_config
from semsearch.v1 import indexer_pb2, indexer_pb2_grpc


@dataclass
class ShardProcess:
    """One `python -m services.indexer` process on free 127.0.0.1 ports."""

    shard: int
    num_shards: int
    data_dir: Path
    collections: Sequence[CollectionConfig] | None = None
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 120.0
    # Where the process's output goes (default: shard.log in the data directory).
    log_path: Path | None = None
    process: ManagedProcess | None = None
    started_once: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ShardProcess:
        """Start and wait for SERVING. On the first start, ports another process grabbed in the
        meantime are replaced and the start retried; a restart keeps its address (peers know it)."""
        for attempt in range(3):
            try:
                return self._start_once()
            except StartupError as exc:
                if self.started_once or attempt == 2 or not is_bind_error(exc):
                    raise
                self.port, self.metrics_port = free_port(), free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> ShardProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            SEMSEARCH_SHARD=str(self.shard),
            SEMSEARCH_NUM_SHARDS=str(self.num_shards),
            SEMSEARCH_DATA_DIR=str(self.data_dir),
            SEMSEARCH_INDEXER_HOST=self.host,
            SEMSEARCH_INDEXER_PORT=str(self.port),
            SEMSEARCH_INDEXER_METRICS_PORT=str(self.metrics_port),
            SEMSEARCH_LOG_FORMAT="json",
            OMP_WAIT_POLICY="PASSIVE",
        )
        env.update(self.env)
        self.process = ManagedProcess(
            f"indexer shard {self.shard}",
            [sys.executable, "-m", "services.indexer"],
            log_path=self.log_path or self.data_dir / "shard.log",
            env=env,
        )
        self.process.start(lambda: health_serving(self.address), self.startup_timeout)
        if self.collections and not self.started_once:
            try:
                self.create_collections(self.collections)
            except BaseException:
                self.stop()
                raise
        self.started_once = True
        return self

    def create_collections(self, collections: Sequence[CollectionConfig]) -> None:
        """Create collections on this shard (it must own its catalog: shard 0, or a shard without
        peers); the same settings again are a no-op."""
        with grpc.insecure_channel(self.address) as channel:
            stub = indexer_pb2_grpc.IndexerStub(channel)
            for config in collections:
                request = indexer_pb2.ShardCreateCollectionRequest(spec=spec_from_config(config))
                stub.CreateCollection(request, timeout=60)

    def stop(self, grace: float = 20.0) -> None:
        if self.process is not None:
            self.process.stop(grace)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()
