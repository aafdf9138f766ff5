"""Indexer benchmark: one real shard against in-process FAISS and a bare gRPC echo, in one run."""

from __future__ import annotations

import os

# libgomp reads this when FAISS loads it. The shard runs with PASSIVE (ShardProcess sets it), so the
# in-process floor must too; it has no effect when the caller imported FAISS already.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import asyncio
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import grpc
import numpy as np
from tqdm import tqdm

from semsearch.core.collections import CollectionConfig
from semsearch.procs import ManagedProcess
from semsearch.tools import echo as echo_server
from semsearch.tools.launch import ShardProcess
from semsearch.v1 import common_pb2, indexer_pb2, indexer_pb2_grpc
from services.indexer import search_ops
from services.indexer.coordinator import train_collection, wait_for_rebuilds

log = logging.getLogger(__name__)

COLLECTION = "bench"
K = 10
UPSERT_BATCH = 2_000
# Queries per request when measuring served recall (recall does not depend on the batching).
RECALL_BATCH = 100
# Coarse-quantizer training wants >= 39 points per list; 200k covers IVF4096 with 49 per list.
TRAIN_SAMPLE_MAX = 200_000
# Every timed loop stops at whichever comes first: its time budget or this many calls.
MAX_CALLS = 200_000
RPC_TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Client channels must accept the shard's Sample chunks (8192 rows x dim floats, > 4 MB at 384-d).
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
SHARD_SEARCH = "/semsearch.v1.Indexer/Search"
GOAL_P50_RATIO = 1.25
GOAL_QPS_RATIO = 0.7
GOAL_FLOOR_RATIO = 0.8
GOAL_BYTES_RATIO = 1.3

# Synthetic embedding model: per-dimension standard deviations decay like i**-0.5 (a few directions
# carry most of the variance, as in sentence embeddings), each spectrum in its own random rotation.
CENTRE_DECAY = 0.5
NOISE_DECAY = 0.5
# Within-cluster spread relative to the spread of the centres: 0.8 gives mean top-1 cosine ~0.78
# and top-10 ~0.74 at 100k x 384, and an IVF-PQ recall table that needs nprobe > 1 to reach 0.95.
NOISE_SCALE = 0.8
GENERATE_CHUNK = 32_768


# --- data -------------------------------------------------------------------------------------


def default_clusters(n: int) -> int:
    """Clusters for n points: one per 500 points, within [16, 4096]."""
    return int(min(4096, max(16, n // 500)))


def _rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A uniformly random orthogonal [dim, dim] float32 matrix."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def clustered_vectors(n: int, dim: int, seed: int, clusters: int | None = None) -> np.ndarray:
    """[n, dim] float32 L2-normalised vectors that mimic text embeddings: points around `clusters`
    centres of unequal sizes and spreads, centres and within-cluster noise each drawn from a
    Gaussian with a decaying spectrum in its own random rotation. Deterministic for
    (n, dim, seed, clusters); generated in chunks, so memory beyond the result is bounded."""
    clusters = clusters or default_clusters(n)
    rng = np.random.default_rng([seed, 0])
    i = np.arange(1, dim + 1, dtype=np.float64)
    centre_scale = (i**-CENTRE_DECAY).astype(np.float32)
    noise_scale = i**-NOISE_DECAY
    # Same total noise energy whatever NOISE_DECAY is; NOISE_SCALE alone sets the cluster tightness.
    noise_scale *= np.sqrt((centre_scale.astype(np.float64) ** 2).sum() / (noise_scale**2).sum())
    noise_scale = noise_scale.astype(np.float32)
    centre_basis, noise_basis = _rotation(rng, dim), _rotation(rng, dim)
    centres = (rng.standard_normal((clusters, dim), dtype=np.float32) * centre_scale) @ centre_basis
    # Real corpora have a few big topics and many small ones, some tight, some diffuse.
    weights = rng.lognormal(0.0, 1.0, clusters)
    weights /= weights.sum()
    spread = (NOISE_SCALE * rng.lognormal(0.0, 0.25, clusters)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for chunk, start in enumerate(range(0, n, GENERATE_CHUNK)):
        m = min(GENERATE_CHUNK, n - start)
        # One generator per chunk: the result does not depend on how the chunks are processed.
        crng = np.random.default_rng([seed, 1, chunk])
        labels = crng.choice(clusters, size=m, p=weights)
        noise = (crng.standard_normal((m, dim), dtype=np.float32) * noise_scale) @ noise_basis
        x = centres[labels] + spread[labels, None] * noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


# --- helpers ----------------------------------------------------------------------------------


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


def _upsert_request(base: np.ndarray, start: int, end: int) -> indexer_pb2.ShardUpsertRequest:
    # tolist(): protobuf copies Python floats ~5x faster than numpy scalars.
    items = [
        common_pb2.Item(id=f"v{i}", vector=common_pb2.Vector(values=row), metadata={"source": f"doc-{i}"})
        for i, row in zip(range(start, end), base[start:end].tolist())
    ]
    return indexer_pb2.ShardUpsertRequest(collection=COLLECTION, items=items)


def _search_request(
    queries: np.ndarray, *, nprobe: int, recall_target: float, rerank: int
) -> indexer_pb2.ShardSearchRequest:
    """The form the gateway sends: one float32 matrix in, packed hits out."""
    return indexer_pb2.ShardSearchRequest(
        collection=COLLECTION,
        query_matrix=np.ascontiguousarray(queries, dtype="<f4").tobytes(),
        k=K,
        nprobe=nprobe,
        recall_target=recall_target,
        rerank=rerank,
        packed=True,
    )


def _ids_to_rows(response: indexer_pb2.ShardSearchResponse) -> np.ndarray:
    """[q, K] base rows of the packed hits (ids are f"v{row}"; -1 pads short lists)."""
    rows = np.full((len(response.hit_counts), K), -1, dtype=np.int64)
    start = 0
    for r, count in enumerate(response.hit_counts):
        for j, item_id in enumerate(response.hit_ids[start : start + min(count, K)]):
            rows[r, j] = int(item_id[1:])
        start += count
    return rows


def _collection_stats(stub: indexer_pb2_grpc.IndexerStub) -> indexer_pb2.CollectionStats:
    stats = stub.Stats(indexer_pb2.StatsRequest(), timeout=RPC_TIMEOUT_S)
    return next(c for c in stats.collections if c.name == COLLECTION)


def _rss_anon_mb(pid: int | None) -> float | None:
    """Anonymous resident memory of a process (Linux), excluding the memory-mapped raw vectors."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


# --- timed loops ------------------------------------------------------------------------------


def _single_client_latencies(
    calls: dict[str, Callable[[int], object]], count: int, seconds: float
) -> dict[str, list[float]]:
    """Seconds per call of each named call(i), one client, interleaved call by call (rotating the
    order) so that load from elsewhere on the machine hits every target alike."""
    names = list(calls)
    for name in names:  # connect, first allocations
        for i in range(min(count, 20)):
            calls[name](i)
    times: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + seconds
    for i in range(MAX_CALLS):
        if time.perf_counter() >= deadline:
            break
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            begin = time.perf_counter()
            calls[name](i % count)
            times[name].append(time.perf_counter() - begin)
    return times


async def _concurrent_rate(
    address: str, method: str, requests: list[bytes], clients: int, seconds: float
) -> tuple[float, list[int]]:
    """(timed seconds, batch_size of each response) of `clients` concurrent callers sharing one
    channel (one HTTP/2 connection, as the gateway holds per shard), each sending one request at a
    time."""
    channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    try:
        # Pre-serialised requests: the client's cost per call is the same for every target.
        call = channel.unary_unary(
            method, request_serializer=None, response_deserializer=indexer_pb2.ShardSearchResponse.FromString
        )
        await asyncio.gather(
            *(call(requests[c % len(requests)], timeout=RPC_TIMEOUT_S) for c in range(clients))
        )
        batches: list[int] = []
        begin = time.perf_counter()
        deadline = begin + seconds
        per_client = max(1, MAX_CALLS // clients)

        async def loop(c: int) -> None:
            for j in range(per_client):
                if time.perf_counter() >= deadline:
                    return
                response = await call(requests[(c + j * clients) % len(requests)], timeout=RPC_TIMEOUT_S)
                batches.append(response.batch_size)

        await asyncio.gather(*(loop(c) for c in range(clients)))
        return time.perf_counter() - begin, batches
    finally:
        await channel.close()


def _throughput(
    targets: dict[str, tuple[str, str]], requests: list[bytes], clients: int, seconds: float
) -> dict[str, tuple[float, list[int]]]:
    """requests/s and response batch sizes per target (address, method): a short warm-up each, then
    two rounds in A B B A order with seconds/2 each, so drift on a shared machine cancels."""
    names = list(targets)
    for name in names:
        asyncio.run(_concurrent_rate(*targets[name], requests, clients, min(0.5, seconds / 4)))
    elapsed = dict.fromkeys(names, 0.0)
    batches: dict[str, list[int]] = {name: [] for name in names}
    for name in names + names[::-1]:
        took, sizes = asyncio.run(_concurrent_rate(*targets[name], requests, clients, seconds / 2))
        elapsed[name] += took
        batches[name] += sizes
    return {name: (len(batches[name]) / max(elapsed[name], 1e-9), batches[name]) for name in names}


def _batched_rate(
    search: Callable[[np.ndarray], object], queries: np.ndarray, batch: int, seconds: float
) -> float:
    """Queries/s of search(queries [batch, d]) called back to back on one thread."""
    search(queries[:batch])
    done = 0
    begin = time.perf_counter()
    for i in range(MAX_CALLS):
        if time.perf_counter() >= begin + seconds:
            break
        start = (i * batch) % len(queries)
        chunk = queries[start : start + batch]
        search(chunk)
        done += len(chunk)
    return done / (time.perf_counter() - begin)


# --- the benchmark ----------------------------------------------------------------------------


def bench(
    *,
    n: int = 1_000_000,
    dim: int = 384,
    factory: str = "IVF4096,PQ48",
    queries: int = 1000,
    seconds: float = 5.0,
    clients: int = 32,
    rerank: int = 0,
    nprobe: int = 0,
    recall_target: float = 0.95,
    seed: int = 0,
    work_dir: Path | None = None,
    raw_dtype: str = "float32",
    progress: bool = True,
) -> tuple[list[tuple[str, ...]], dict]:
    """Ingest n synthetic embeddings into one real shard, train and rebuild its index, then measure
    served recall@10, single-query latency and concurrent throughput against two floors measured in
    the same run: FAISS in-process on the shard's own index (same nprobe and re-rank), and a bare
    gRPC echo server answering the same request with a same-shaped response.

    Returns table rows (measurement, value, goal) and a JSON-able summary. rerank/nprobe 0 use the
    shard's defaults (the collection's re-rank depth, the nprobe for recall_target)."""
    if n < 2 * 500 + 1 or queries < 1 or clients < 1 or seconds <= 0:
        raise ValueError(
            "need n > 1000 (the coordinator holds 500 vectors out), queries, clients, seconds > 0"
        )
    config = CollectionConfig(
        name=COLLECTION,
        dim=dim,
        factory=factory,
        train_sample=min(n, TRAIN_SAMPLE_MAX),
        raw_dtype=raw_dtype,
        recall_target=recall_target,
        # The bench trains the collection itself and times it: the shard's own trainer (shard 0 trains a
        # collection that reaches its threshold) must not train it too, on the same cores, meanwhile.
        train_threshold=n + 1,
    )
    depth = rerank or config.rerank_depth(K)
    begin = time.perf_counter()
    clusters = default_clusters(n)
    data = clustered_vectors(n + queries, dim, seed, clusters)
    base, query_vectors = data[:n], data[n:]
    log.info("generated %d + %d vectors x %d (%d clusters) in %.1fs",
             n, queries, dim, clusters, time.perf_counter() - begin)  # fmt: skip

    if work_dir is None:
        root = Path(tempfile.mkdtemp(prefix="semsearch-bench-"))
    else:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="bench-", dir=work_dir))  # a fresh shard every run
    shard = ShardProcess(0, 1, root / "shard", collections=[config])
    echo: ManagedProcess | None = None
    channel: grpc.Channel | None = None
    echo_channel: grpc.Channel | None = None
    try:
        shard.start()
        channel = grpc.insecure_channel(shard.address, options=CHANNEL_OPTIONS)
        stub = indexer_pb2_grpc.IndexerStub(channel)

        # Ingest: one client, one request in flight, the next request built while the shard works
        # on the previous one; in order, so slot i (the index's id) holds row i (item id f"v{i}").
        log.info("ingesting %d vectors, %d per Upsert", n, UPSERT_BATCH)
        begin = time.perf_counter()
        pending = None
        with tqdm(total=n, unit="vec", unit_scale=True, desc="upsert", disable=not progress) as bar:
            for start in range(0, n, UPSERT_BATCH):
                end = min(start + UPSERT_BATCH, n)
                request = _upsert_request(base, start, end)
                if pending is not None:
                    bar.update(pending.result().count)
                pending = stub.Upsert.future(request, timeout=RPC_TIMEOUT_S)
            if pending is not None:
                bar.update(pending.result().count)
        ingest_seconds = time.perf_counter() - begin
        add_rate = n / ingest_seconds
        log.info("ingested in %.1fs: %.0f vectors/s", ingest_seconds, add_rate)

        log.info("training %s on up to %d vectors", factory, config.train_sample)
        report = train_collection([channel], config, seed=seed)
        installed = time.perf_counter()
        # Includes up to 0.2 s of wait_for_rebuilds' polling interval; waits for the bench's template
        # to serve (a shard that trained on its own or compacted meanwhile swaps in another first).
        wait_for_rebuilds([channel], COLLECTION, report["template_id"], timeout_s=4 * 3600)
        rebuild_seconds = time.perf_counter() - installed
        stats = _collection_stats(stub)
        if stats.count != n or stats.index != factory:
            raise RuntimeError(
                f"shard holds {stats.count} vectors in index {stats.index!r}, expected {n} in {factory}"
            )
        log.info("trained in %.1fs (+%.1fs recall table), rebuilt in %.1fs",
                 report["train_seconds"], report["table_seconds"], rebuild_seconds)  # fmt: skip

        # Exact top-10 of the held-out queries over the base.
        _, truth = faiss.knn(query_vectors, base, K, metric=faiss.METRIC_INNER_PRODUCT)

        # Served recall, batched requests.
        found, served_nprobe, generation = [], 0, 0
        for start in range(0, queries, RECALL_BATCH):
            request = _search_request(
                query_vectors[start : start + RECALL_BATCH],
                nprobe=nprobe,
                recall_target=recall_target,
                rerank=rerank,
            )
            response = stub.Search(request, timeout=RPC_TIMEOUT_S)
            found.append(_ids_to_rows(response))
            served_nprobe, generation = response.nprobe, response.generation
        recall = search_ops.recall_at_k(np.concatenate(found), truth, K)

        # The shard's own index, from the snapshot it writes after the swap (Snapshot waits for it).
        stub.Snapshot(indexer_pb2.SnapshotRequest(), timeout=RPC_TIMEOUT_S)
        (coll_dir,) = (root / "shard" / "collections").glob(f"{COLLECTION}-*")
        snap = coll_dir / (coll_dir / "CURRENT").read_text().strip()
        manifest = json.loads((snap / "manifest.json").read_text())
        if not manifest["trained"] or manifest["generation"] != generation:
            raise RuntimeError(
                f"snapshot {snap.name} does not hold the served index (generation {generation})"
            )
        if json.loads((snap / "ids.json").read_text()) != [f"v{i}" for i in range(n)]:
            raise RuntimeError("slots do not follow insertion order; cannot map the index to the base")
        index = faiss.read_index(str(snap / "index.faiss"))
        # The shard's search path: an id selector over the live slots (here all) and exact re-ranking.
        params = search_ops.search_params(index, search_ops.bitmap(np.ones(n, dtype=bool)), served_nprobe)
        code_size = int(faiss.extract_index_ivf(index).code_size)
        # Re-rank against what the shard stores (float16 raw vectors are rounded the same way).
        raw = base if raw_dtype == "float32" else base.astype(raw_dtype)

        def inprocess(q: np.ndarray) -> np.ndarray:
            """Slots [m, K] of queries [m, d]: the shard's FAISS search + exact re-rank."""
            _, candidates = index.search(q, depth, params=params)
            fetch = lambda s: np.asarray(raw[s], dtype=np.float32)  # noqa: E731
            return search_ops.rerank(q, candidates, fetch, K, 1 << 30)[1]

        recall_inprocess = search_ops.recall_at_k(inprocess(query_vectors), truth, K)

        # One real response is the echo's answer: same hits, ids, scores, metadata.
        single = [
            _search_request(
                query_vectors[i : i + 1], nprobe=nprobe, recall_target=recall_target, rerank=rerank
            )
            for i in range(queries)
        ]
        echo_response = stub.Search(single[0], timeout=RPC_TIMEOUT_S).SerializeToString()
        echo, echo_address = echo_server.start(root, echo_response, parse_shard_search=True)
        echo_channel = grpc.insecure_channel(echo_address, options=CHANNEL_OPTIONS)
        echo_call = echo_channel.unary_unary(
            echo_server.METHOD,
            request_serializer=indexer_pb2.ShardSearchRequest.SerializeToString,
            response_deserializer=indexer_pb2.ShardSearchResponse.FromString,
        )

        log.info("single-client latency: shard, echo, in-process (%.1fs)", seconds)
        latencies = _single_client_latencies(
            {
                "shard": lambda i: stub.Search(single[i], timeout=RPC_TIMEOUT_S),
                "echo": lambda i: echo_call(single[i], timeout=RPC_TIMEOUT_S),
                "inprocess": lambda i: inprocess(query_vectors[i : i + 1]),
            },
            queries,
            seconds,
        )
        log.info("throughput: %d clients, shard and echo (%.1fs each)", clients, seconds)
        serialized = [r.SerializeToString() for r in single]
        rates = _throughput(
            {"shard": (shard.address, SHARD_SEARCH), "echo": (echo_address, echo_server.METHOD)},
            serialized,
            clients,
            seconds,
        )
        # The FAISS share of the shard's throughput: the same work on batches of the size the shard
        # coalesced, back to back in-process.
        coalesced = rates["shard"][1]
        floor_batch = max(1, min(queries, round(float(np.mean(coalesced))) if coalesced else 1))
        inprocess_qps = _batched_rate(inprocess, query_vectors, floor_batch, seconds)
        stats = _collection_stats(stub)
        shard_rss = _rss_anon_mb(shard.process.pid if shard.process else None)
    finally:
        for ch in (channel, echo_channel):
            if ch is not None:
                ch.close()
        if echo is not None:
            echo.stop()
        shard.stop()
        if work_dir is None:
            shutil.rmtree(root, ignore_errors=True)

    p50 = {name: _percentile_ms(t, 50) for name, t in latencies.items()}
    p99 = {name: _percentile_ms(t, 99) for name, t in latencies.items()}
    p50_ratio = p50["shard"] / (p50["inprocess"] + p50["echo"])
    qps, batches = rates["shard"]
    echo_qps = rates["echo"][0]
    qps_ratio = qps / echo_qps
    batch_mean = float(np.mean(batches)) if batches else 0.0
    # Ceiling when the bare gRPC work and the FAISS work of each request share one core.
    serial_floor = 1.0 / (1.0 / echo_qps + 1.0 / inprocess_qps)
    bytes_per_vector = stats.index_bytes / n
    bytes_goal = code_size + 8
    bytes_ratio = bytes_per_vector / bytes_goal
    goals_met = {
        "recall_at_10": recall >= recall_target,
        "p50_ratio": p50_ratio <= GOAL_P50_RATIO,
        "qps_ratio": qps_ratio >= GOAL_QPS_RATIO,
        "qps_ratio_to_floor": qps / serial_floor >= GOAL_FLOOR_RATIO,
        "bytes_per_vector": bytes_ratio <= GOAL_BYTES_RATIO,
    }
    summary = {
        "n": n,
        "dim": dim,
        "clusters": clusters,
        "factory": factory,
        "raw_dtype": raw_dtype,
        "queries": queries,
        "nprobe": served_nprobe,
        "rerank": depth,
        "recall_target": recall_target,
        "nprobe_table": [[int(p), round(float(r), 4)] for p, r in report["depth_table"]],
        "recall_at_10": round(recall, 4),
        "recall_at_10_inprocess": round(recall_inprocess, 4),
        "p50_ms": round(p50["shard"], 3),
        "p99_ms": round(p99["shard"], 3),
        "inprocess_p50_ms": round(p50["inprocess"], 3),
        "inprocess_p99_ms": round(p99["inprocess"], 3),
        "echo_p50_ms": round(p50["echo"], 3),
        "echo_p99_ms": round(p99["echo"], 3),
        "latency_samples": len(latencies["shard"]),
        "p50_ratio": round(p50_ratio, 3),
        "clients": clients,
        "client_channels": "one shared channel",
        "qps": round(qps, 1),
        "echo_qps": round(echo_qps, 1),
        "qps_ratio": round(qps_ratio, 3),
        "inprocess_qps": round(inprocess_qps, 1),
        "inprocess_qps_batch": floor_batch,
        "serial_floor_qps": round(serial_floor, 1),
        "qps_ratio_to_floor": round(qps / serial_floor, 3),
        "batch_size_mean": round(batch_mean, 2),
        "bytes_per_vector": round(bytes_per_vector, 2),
        "bytes_per_vector_goal": bytes_goal,
        "bytes_per_vector_ratio": round(bytes_ratio, 3),
        "shard_rss_anon_mb": None if shard_rss is None else round(shard_rss, 1),
        "add_rate_vectors_per_s": round(add_rate, 1),
        "train_vectors": report["train_vectors"],
        "train_seconds": round(report["train_seconds"], 2),
        "train_table_seconds": round(report["table_seconds"], 2),
        "rebuild_seconds": round(rebuild_seconds, 2),
        "rebuild_rate_vectors_per_s": round(n / rebuild_seconds, 1),
        "seconds_per_measurement": seconds,
        "goals": {
            "recall_at_10_min": recall_target,
            "p50_ratio_max": GOAL_P50_RATIO,
            "qps_ratio_min": GOAL_QPS_RATIO,
            "qps_ratio_to_floor_min": GOAL_FLOOR_RATIO,
            "bytes_per_vector_ratio_max": GOAL_BYTES_RATIO,
        },
        "goals_met": goals_met,
    }

    def goal(key: str, text: str) -> str:
        return f"{text}: {'met' if goals_met[key] else 'MISSED'}"

    rows = [
        ("vectors", f"{n:,} x {dim} {raw_dtype}, {clusters} clusters, {queries} held-out queries", ""),
        ("index", f"{factory}, nprobe {served_nprobe}, re-rank {depth}", ""),
        ("add rate (Upsert, 2,000 per request)", f"{add_rate:,.0f} vectors/s", ""),
        (
            "train (k-means + PQ)",
            f"{report['train_seconds']:.1f} s on {report['train_vectors']:,} vectors",
            "",
        ),
        ("rebuild", f"{rebuild_seconds:.1f} s ({n / rebuild_seconds:,.0f} vectors/s)", ""),
        ("recall@10 served", f"{recall:.4f}", goal("recall_at_10", f">= {recall_target}")),
        ("recall@10 in-process", f"{recall_inprocess:.4f}", ""),
        ("shard Search p50 / p99", f"{p50['shard']:.3f} / {p99['shard']:.3f} ms", ""),
        ("echo p50 / p99", f"{p50['echo']:.3f} / {p99['echo']:.3f} ms", ""),
        ("in-process FAISS p50 / p99", f"{p50['inprocess']:.3f} / {p99['inprocess']:.3f} ms", ""),
        (
            "p50 ratio shard / (in-process + echo)",
            f"{p50_ratio:.3f}",
            goal("p50_ratio", f"<= {GOAL_P50_RATIO}"),
        ),
        (f"shard qps ({clients} clients)", f"{qps:,.0f}", ""),
        (f"echo qps ({clients} clients)", f"{echo_qps:,.0f}", ""),
        ("qps ratio shard / echo", f"{qps_ratio:.3f}", goal("qps_ratio", f">= {GOAL_QPS_RATIO}")),
        ("mean coalesced batch (concurrent)", f"{batch_mean:.1f} queries", ""),
        (f"in-process FAISS qps (batches of {floor_batch})", f"{inprocess_qps:,.0f}", ""),
        (
            "qps ratio shard / serial floor (echo + FAISS on one core)",
            f"{qps / serial_floor:.3f}",
            goal("qps_ratio_to_floor", f">= {GOAL_FLOOR_RATIO}"),
        ),
        (
            "index bytes per vector",
            f"{bytes_per_vector:.1f} (reference {bytes_goal} = {code_size} code + 8 id)",
            goal("bytes_per_vector", f"<= {GOAL_BYTES_RATIO}x"),
        ),
    ]
    return rows, summary
