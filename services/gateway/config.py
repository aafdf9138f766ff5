"""Settings of the gateway, read from the environment once; missing required addresses fail fast."""

from __future__ import annotations

from dataclasses import dataclass

from semsearch.core.settings import Env

# Keys that appear in examples and documentation: never accepted.
EXAMPLE_KEYS = frozenset({"change-me", "changeme", "secret", "password"})
MIN_KEY_LENGTH = 16


def parse_api_keys(raw: str | None) -> tuple[str, ...]:
    """Keys from SEMSEARCH_API_KEYS (comma-separated). Unset or empty: authentication off. A value that
    lists no usable key, an example key or a short key stops the gateway instead of weakening auth."""
    if raw is None or raw == "":
        return ()
    keys = tuple(k.strip() for k in raw.split(","))
    if not any(keys):
        raise SystemExit("SEMSEARCH_API_KEYS is set but lists no key; unset it to turn authentication off")
    for key in keys:
        if not key:
            raise SystemExit("SEMSEARCH_API_KEYS has an empty entry (two commas in a row?)")
        if key.lower() in EXAMPLE_KEYS:
            raise SystemExit(
                f"SEMSEARCH_API_KEYS holds the example key {key!r}; generate one, e.g. `openssl rand -hex 24`"
            )
        if len(key) < MIN_KEY_LENGTH:
            raise SystemExit(
                f"SEMSEARCH_API_KEYS holds a key of {len(key)} characters; "
                f"at least {MIN_KEY_LENGTH} are required"
            )
    return keys


@dataclass(frozen=True)
class GatewaySettings:
    shards: tuple[str, ...]
    triton_url: str
    redis_url: str
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
    # Readiness (health of the Search service) is SERVING while at least this many shards answer;
    # partial results are a feature, so one is enough by default. Liveness (health "") only says the
    # process works. Triton's state does not gate readiness: vector and id queries work without it.
    min_serving_shards: int = 1
    api_keys: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    # A plaintext port answering health checks only (probes of a TLS gateway); 0: none.
    health_port: int = 0
    # Processes serving the port (SO_REUSEPORT; services/gateway/workers.py); 1: this process alone.
    workers: int = 1

    @classmethod
    def from_env(cls, environ=None) -> GatewaySettings:
        env = Env(environ)
        env.required("SEMSEARCH_SHARDS", "SEMSEARCH_TRITON_URL", "SEMSEARCH_REDIS_URL")
        tls_cert, tls_key = env.str("SEMSEARCH_TLS_CERT"), env.str("SEMSEARCH_TLS_KEY")
        if bool(tls_cert) != bool(tls_key):
            raise SystemExit(
                "TLS needs both SEMSEARCH_TLS_CERT and SEMSEARCH_TLS_KEY; only one is set, and the gateway "
                "does not fall back to plaintext"
            )
        return cls(
            shards=env.list("SEMSEARCH_SHARDS"),
            triton_url=env.str("SEMSEARCH_TRITON_URL"),
            redis_url=env.str("SEMSEARCH_REDIS_URL"),
            host=env.str("SEMSEARCH_GATEWAY_HOST", "127.0.0.1"),
            port=env.int("SEMSEARCH_GATEWAY_PORT", 7000, minimum=0),
            metrics_port=env.int("SEMSEARCH_GATEWAY_METRICS_PORT", 9000, minimum=0),
            max_k=env.int("SEMSEARCH_MAX_K", 1000, minimum=1),
            max_batch=env.int("SEMSEARCH_MAX_BATCH", 1000, minimum=1),
            max_in_flight=env.int("SEMSEARCH_MAX_IN_FLIGHT", 256, minimum=1),
            default_deadline_s=env.float("SEMSEARCH_DEFAULT_DEADLINE_S", 5.0, minimum=0.001),
            embedding_ttl_s=env.int("SEMSEARCH_EMBEDDING_TTL_S", 24 * 3600, minimum=1),
            result_ttl_s=env.int("SEMSEARCH_RESULT_TTL_S", 300, minimum=1),
            cache_max_result_bytes=env.int("SEMSEARCH_CACHE_MAX_RESULT_BYTES", 256 * 1024, minimum=0),
            max_message_bytes=env.int("SEMSEARCH_GATEWAY_MAX_MESSAGE_BYTES", 64 << 20, minimum=1024),
            redis_timeout_s=env.float("SEMSEARCH_REDIS_TIMEOUT_S", 0.05, minimum=0.001),
            min_serving_shards=env.int("SEMSEARCH_MIN_SERVING_SHARDS", 1, minimum=0),
            api_keys=parse_api_keys(env.environ.get("SEMSEARCH_API_KEYS")),
            tls_cert=tls_cert,
            tls_key=tls_key,
            health_port=env.int("SEMSEARCH_GATEWAY_HEALTH_PORT", 0, minimum=0),
            workers=env.int("SEMSEARCH_GATEWAY_WORKERS", 1, minimum=1),
        )
