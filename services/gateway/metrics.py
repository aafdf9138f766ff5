"""Prometheus metrics of the gateway (names prefixed semsearch_gateway_, unit-suffixed)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUEST_SECONDS = Histogram(
    "semsearch_gateway_request_duration_seconds",
    "Time of one gRPC request, by method.",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
SEARCH_SECONDS = Histogram(
    "semsearch_gateway_search_duration_seconds",
    "Time of one search, by query kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "semsearch_gateway_stage_duration_seconds",
    "Time of one stage of a search (decode, embed, cache, fanout, merge).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
CACHE_REQUESTS = Counter(
    "semsearch_gateway_cache_requests_total",
    "Cache lookups by cache and result (hit, miss).",
    ["cache", "result"],
)
CACHE_ERRORS = Counter(
    "semsearch_gateway_cache_errors_total",
    "Redis operations that failed or timed out (served uncached).",
    ["op"],
)
SHARD_COVERAGE = Histogram(
    "semsearch_gateway_shard_coverage_ratio",
    "Share of shards that answered a fan-out.",
    buckets=(0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0),
)
SHARD_ERRORS = Counter(
    "semsearch_gateway_shard_errors_total",
    "Shard calls that failed or missed the deadline, by shard and code.",
    ["shard", "code"],
)
ERRORS = Counter(
    "semsearch_gateway_errors_total",
    "Requests answered with an error, by method and code.",
    ["method", "code"],
)
# With several workers (services/gateway/workers.py), the sum over the live ones.
IN_FLIGHT = Gauge(
    "semsearch_gateway_in_flight_requests", "Requests being served now.", multiprocess_mode="livesum"
)
ITEMS = Counter(
    "semsearch_gateway_upsert_items_total", "Upserted items by outcome (ok, failed).", ["outcome"]
)
