"""Settings of the gateway, read from the environment once; missing required addresses fail fast."""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.indexer.config import CollectionConfig, load_collections

# Which embedding model feeds which collection (collections not listed take vectors only).
COLLECTION_MODELS = {"images": "efficientnet_lite0", "texts": "minilm_l6"}


@dataclass(frozen=True)
class GatewaySettings:
    shards: tuple[str, ...]
    triton_url: str
    redis_url: str
    collections: tuple[CollectionConfig, ...]
    host: str = "127.0.0.1"
    port: int = 7000
    metrics_port: int = 9000
    max_k: int = 1000
    max_batch: int = 1000
    max_in_flight: int = 256
    max_message_bytes: int = 64 * 1024 * 1024
    default_deadline_s: float = 5.0
    embedding_ttl_s: int = 24 * 3600
    result_ttl_s: int = 300
    cache_max_result_bytes: int = 256 * 1024
    redis_timeout_s: float = 0.05
    # Health is SERVING when Triton is ready and at least this many shards answer (0: all).
    min_serving_shards: int = 0
    api_keys: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls) -> GatewaySettings:
        env = os.environ
        missing = [
            k for k in ("SEMSEARCH_SHARDS", "SEMSEARCH_TRITON_URL", "SEMSEARCH_REDIS_URL") if not env.get(k)
        ]
        if missing:
            raise SystemExit(f"missing required settings: {', '.join(missing)}")
        keys = tuple(k for k in env.get("SEMSEARCH_API_KEYS", "").split(",") if k)
        return cls(
            shards=tuple(a.strip() for a in env["SEMSEARCH_SHARDS"].split(",") if a.strip()),
            triton_url=env["SEMSEARCH_TRITON_URL"],
            redis_url=env["SEMSEARCH_REDIS_URL"],
            collections=load_collections(env.get("SEMSEARCH_COLLECTIONS_FILE")),
            host=env.get("SEMSEARCH_GATEWAY_HOST", "127.0.0.1"),
            port=int(env.get("SEMSEARCH_GATEWAY_PORT", "7000")),
            metrics_port=int(env.get("SEMSEARCH_GATEWAY_METRICS_PORT", "9000")),
            max_k=int(env.get("SEMSEARCH_MAX_K", "1000")),
            max_batch=int(env.get("SEMSEARCH_MAX_BATCH", "1000")),
            max_in_flight=int(env.get("SEMSEARCH_MAX_IN_FLIGHT", "256")),
            default_deadline_s=float(env.get("SEMSEARCH_DEFAULT_DEADLINE_S", "5")),
            embedding_ttl_s=int(env.get("SEMSEARCH_EMBEDDING_TTL_S", str(24 * 3600))),
            result_ttl_s=int(env.get("SEMSEARCH_RESULT_TTL_S", "300")),
            cache_max_result_bytes=int(env.get("SEMSEARCH_CACHE_MAX_RESULT_BYTES", str(256 * 1024))),
            max_message_bytes=int(env.get("SEMSEARCH_GATEWAY_MAX_MESSAGE_BYTES", str(64 * 1024 * 1024))),
            redis_timeout_s=float(env.get("SEMSEARCH_REDIS_TIMEOUT_S", "0.05")),
            min_serving_shards=int(env.get("SEMSEARCH_MIN_SERVING_SHARDS", "0")),
            api_keys=keys,
            tls_cert=env.get("SEMSEARCH_TLS_CERT") or None,
            tls_key=env.get("SEMSEARCH_TLS_KEY") or None,
        )
