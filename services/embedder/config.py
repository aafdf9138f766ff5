"""Settings of the embedder (the Triton server and its model repository), read from env once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from semsearch.core.settings import Env
from services.embedder.models import CPU_CONFIG_NAME


def state_dir() -> Path:
    """Where local state lives (model repository, logs, shard data): SEMSEARCH_HOME or ./var."""
    return Path(os.environ.get("SEMSEARCH_HOME", "var")).resolve()


@dataclass(frozen=True)
class EmbedderSettings:
    model_repository: Path
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    config_name: str
    startup_timeout_s: float

    @classmethod
    def from_env(cls, environ=None) -> EmbedderSettings:
        env = Env(environ)
        return cls(
            model_repository=Path(env.str("SEMSEARCH_MODEL_REPOSITORY") or state_dir() / "model_repository"),
            host=env.str("SEMSEARCH_TRITON_HOST", "127.0.0.1"),
            http_port=env.int("SEMSEARCH_TRITON_HTTP_PORT", 8000, minimum=0),
            grpc_port=env.int("SEMSEARCH_TRITON_GRPC_PORT", 8001, minimum=0),
            metrics_port=env.int("SEMSEARCH_TRITON_METRICS_PORT", 8002, minimum=0),
            config_name=env.str("SEMSEARCH_TRITON_CONFIG_NAME", CPU_CONFIG_NAME),
            startup_timeout_s=env.float("SEMSEARCH_TRITON_STARTUP_TIMEOUT_S", 120.0, minimum=1),
        )

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"


def triton_url_from_env() -> str | None:
    """Address (host:port) of a running Triton's gRPC endpoint, if one is configured."""
    return os.environ.get("SEMSEARCH_TRITON_URL") or None
