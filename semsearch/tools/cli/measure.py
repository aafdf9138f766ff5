"""`semsearch eval` and `semsearch bench`: quality and speed measurements."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from semsearch.tools.cli.common import (
    gateway_client,
    repository_arg,
    repository_of,
    table,
    triton_arg,
)

log = logging.getLogger("semsearch")


def print_report(report: dict, *, as_json: bool) -> None:
    """A metric/value table (to stderr with --json) and, with --json, the report as the last line."""
    rows = [(key, f"{value:.4f}" if isinstance(value, float) else value) for key, value in report.items()]
    print(table(["metric", "value"], rows), file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(report))


def cmd_eval_gateway(args: argparse.Namespace) -> int:
    from semsearch.datasets import fashion_mnist
    from semsearch.tools.evaluate import evaluate_gateway

    train, test = len(fashion_mnist("train").labels), len(fashion_mnist("test").labels)
    ids = [f"fmnist-train-{i}" for i in range(train)] + [f"fmnist-test-{i}" for i in range(test)]
    if args.limit:
        ids = ids[: args.limit]
    query_ids = ids[-args.queries :]
    with gateway_client(args, timeout_s=120) as client:
        report = evaluate_gateway(client, "images", ids, query_ids)
    print_report(report, as_json=args.json)
    return 0


def cmd_eval_embedder(args: argparse.Namespace) -> int:
    from semsearch.tools.embedder_eval import evaluate
    from services.embedder.config import triton_url_from_env
    from services.embedder.triton import running_triton

    repository = repository_of(args)
    with running_triton(args.triton_url or triton_url_from_env(), repository) as url:
        report = evaluate(url, repository, limit=args.limit)
    print_report(report, as_json=args.json)
    return 0


def cmd_eval_search(args: argparse.Namespace) -> int:
    from semsearch.tools.eval_search import evaluate_search

    rows, summary = evaluate_search(
        repository_of(args), n=args.n, dim=args.dim, new=args.new, queries=args.queries, seed=args.seed,
        new_seed=args.new_seed, shards=args.shards, sample_rate=args.sample_rate,
        exact_filter_max=args.exact_filter_max,
    )  # fmt: skip
    out = sys.stderr if args.json else sys.stdout
    print(table(["searches", "recall@10", "p50 ms", "p99 ms", "lists/query", "plans"], rows), file=out)
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_bench_embedder(args: argparse.Namespace) -> int:
    from semsearch.tools.bench.embedder import bench
    from services.embedder.config import triton_url_from_env
    from services.embedder.triton import running_triton

    repository = repository_of(args)
    with running_triton(args.triton_url or triton_url_from_env(), repository) as url:
        rows, summary = bench(
            url, repository, seconds=args.seconds, rounds=args.rounds, clients=args.clients, batch=args.batch
        )
    print(table(["model", "engine", "setup", "items/s (median)"], rows))
    print(json.dumps(summary))
    return 0


def cmd_bench_indexer(args: argparse.Namespace) -> int:
    from semsearch.tools.bench.indexer import bench

    rows, summary = bench(
        n=args.n,
        dim=args.dim,
        factory=args.factory,
        queries=args.queries,
        seconds=args.seconds,
        clients=args.clients,
        nprobe=args.nprobe,
        rerank=args.rerank,
        recall_target=args.recall_target,
        raw_dtype=args.raw_dtype,
    )
    print(table(["measurement", "value", "goal"], rows))
    print(json.dumps(summary))
    return 0


def cmd_bench_gateway(args: argparse.Namespace) -> int:
    from semsearch.tools.bench.gateway import bench

    rows, summary = bench(
        repository_of(args),
        images=args.images,
        texts=args.texts,
        seconds=args.seconds,
        clients=args.clients,
        shards=args.shards,
    )
    cpu = ["CPU ms/query: gateway", "shards", "triton", "redis", "stack", "load generator"]
    print(
        table(
            ["query", "p50 ms (1 client)", "p99 ms (1 client)", f"QPS ({args.clients} clients)", *cpu], rows
        )
    )
    goals = [
        ("vector QPS / one shard called directly", summary["vector_qps_ratio_to_shard"], ">= 0.6"),
        (
            "CPU ms per vector query, all stack processes",
            summary["cpu_ms_per_vector_query"],
            "half of before",
        ),
        ("text QPS / Triton's own texts/s", summary["text_qps_ratio_to_triton"], ">= 0.8"),
        ("image QPS / Triton's own images/s", summary["image_qps_ratio_to_triton"], ">= 0.8"),
        ("cache hit p50 / (echo p50 + Redis GET p50)", summary["cache_hit_p50_ratio"], "<= 1.3"),
        (
            f"vector QPS, {summary['gateway_workers_scaled']} gateway workers / 1",
            summary["vector_qps_workers_ratio"],
            "report (scaling)",
        ),
    ]
    print(table(["ratio", "value", "goal"], goals))
    print(json.dumps(summary))
    return 0


def cmd_bench_peers(args: argparse.Namespace) -> int:
    from semsearch.tools.bench.peers import bench

    rows, summary = bench(
        repository_of(args), n=args.n, queries=args.queries, recall_target=args.recall_target,
        rounds=args.rounds, seconds=args.seconds, clients=args.clients, shards=args.shards,
    )  # fmt: skip
    print(table(["measurement", "semsearch", "chroma", "ratio"], rows))
    print(json.dumps(summary))
    return 0


def cmd_bench_explorer(args: argparse.Namespace) -> int:
    from semsearch.tools.bench.explorer import bench

    rows, summary = bench(repository_of(args), small=args.small, large=args.large, searches=args.searches)
    print(table(["measurement", "value", "goal"], rows))
    print(json.dumps(summary))
    return 0


def cmd_bench_payloads(args: argparse.Namespace) -> int:
    from semsearch.tools.bench.payloads import bench

    rows, summary = bench(n=args.n, memory_n=args.memory_n, gets=args.gets)
    print(table(["measurement", "shard", "store in-process", "ratio / goal"], rows))
    print(json.dumps(summary))
    return 0


def cmd_eval_crossmodal(args: argparse.Namespace) -> int:
    from semsearch.tools.eval_crossmodal import evaluate_crossmodal

    rows, summary = evaluate_crossmodal(repository_of(args), shards=args.shards, latency_queries=args.queries)
    out = sys.stderr if args.json else sys.stdout
    print(table(["set", "query", "relevant", "P@10", "P@100"], rows), file=out)
    means = [
        (
            key,
            s["precision_at_10"],
            s["min_precision_at_10"],
            s["random"],
            s["precision_at_100"],
            s["ceiling_at_100"],
        )
        for key, s in ((k, summary[k]) for k in ("fashion_mnist", "noto_emoji"))
    ]
    print(
        table(["set", "mean P@10", "lowest P@10", "random", "mean P@100", "P@100 ceiling"], means), file=out
    )
    latency = summary["latency"]
    print(
        table(
            ["text queries", "p50 ms", "embed stage p50 ms"],
            [
                (
                    "on images (bridge)",
                    latency["text_on_images_p50_ms"],
                    latency["embed_text_on_images_p50_ms"],
                ),
                ("on texts (MiniLM)", latency["text_on_texts_p50_ms"], latency["embed_text_on_texts_p50_ms"]),
                ("ratio (goal <= 1.2)", latency["p50_ratio"], latency["embed_p50_ratio"]),
            ],
        ),
        file=out,
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level subparsers."""
    evaluate = sub.add_parser(
        "eval",
        help="measure quality (default: the Fashion-MNIST collection served through the gateway)",
        description="Without a target: search the ingested Fashion-MNIST `images` collection "
        "through the gateway by id and compare with exact in-process search over the stored "
        "vectors (precision@10 by label for both, recall@10 of served vs exact). Needs the "
        "data set ingested (semsearch demo, or semsearch ingest --dataset fashion-mnist).",
    )
    evaluate.add_argument("--json", action="store_true", help="print the table to stderr, JSON to stdout")
    evaluate.add_argument("--queries", type=int, default=1000, help="query items (default 1000)")
    evaluate.add_argument("--limit", type=int, help="only the first N ingested items (partial ingests)")
    evaluate.add_argument("--gateway", help="HOST:PORT (default $SEMSEARCH_GATEWAY or the local stack)")
    evaluate.add_argument("--api-key")
    evaluate.add_argument("--tls-ca", metavar="PEM", help="CA certificate of a TLS gateway")
    evaluate.set_defaults(func=cmd_eval_gateway)
    evsub = evaluate.add_subparsers(dest="eval_command", required=False, metavar="TARGET")
    p = evsub.add_parser(
        "embedder",
        help="precision@10 of served image embeddings on Fashion-MNIST, parity with onnxruntime",
        description="Embed the 10,000 Fashion-MNIST test images through Triton, report "
        "leave-one-out precision@10 of exact cosine search (and the raw-pixel and random "
        "baselines), and the max abs difference between Triton and in-process onnxruntime.",
    )
    p.add_argument("--json", action="store_true", help="print the table to stderr, JSON to stdout")
    p.add_argument("--limit", type=int, default=10_000, help="number of test images (default all)")
    repository_arg(p)
    triton_arg(p)
    p.set_defaults(func=cmd_eval_embedder)

    p = evsub.add_parser(
        "search",
        help="filtered recall by selectivity, recall on a new kind of data, the recall monitor",
        description="On a private stack: ingest N clustered vectors (one kind), let shard 0 train, "
        "then measure through the gateway against numpy exact search: recall@10 and p50 of "
        "filters keeping 0.1%%, 1%%, 10%%, 50%% of the items; a fixed nprobe as chosen today (the "
        "smallest reaching 0.95) against each query's own depth; recall after adding vectors of "
        "another kind and querying them; the recall monitor's estimate against the measured "
        "recall. Prints a table (stderr with --json) and, last, one JSON object.",
    )
    p.add_argument("--json", action="store_true", help="print the table to stderr, JSON to stdout")
    p.add_argument("--n", type=int, default=200_000, help="vectors of the first kind (default 200,000)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--new", type=int, default=10_000, help="vectors of another kind added later (10,000)")
    p.add_argument("--queries", type=int, default=200, help="held-out queries of each kind (default 200)")
    p.add_argument("--seed", type=int, default=1, help="the first kind's generator seed")
    p.add_argument("--new-seed", type=int, default=2, help="the other kind's generator seed")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument(
        "--sample-rate",
        type=float,
        default=0.25,
        help="share of searches the monitor re-runs (stack default 0.01)",
    )
    p.add_argument("--exact-filter-max", type=int, help="the shards' SEMSEARCH_INDEXER_EXACT_FILTER_MAX")
    repository_arg(p)
    p.set_defaults(func=cmd_eval_search)

    p = evsub.add_parser(
        "crossmodal",
        help="words for pictures: category words as text queries on image collections",
        description="On a private stack: ingest the 10,000 Fashion-MNIST test images and the Noto "
        "emoji (drawn from Debian's font, labelled by Unicode subgroup), send category words as text "
        "queries (answered through the words-for-pictures bridge) and report precision@10 and @100 "
        "per word against the labels; then the same words on the images and on a text collection, "
        "p50 of the search and of the embedding stage. Prints a table (stderr with --json) and, "
        "last, one JSON object.",
    )
    p.add_argument("--json", action="store_true", help="print the table to stderr, JSON to stdout")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--queries", type=int, default=200, help="words timed on each collection (default 200)")
    repository_arg(p)
    p.set_defaults(func=cmd_eval_crossmodal)

    bench = sub.add_parser("bench", help="measure speed against the raw engines")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="TARGET")
    p = bsub.add_parser(
        "embedder",
        help="images/s and texts/s through Triton vs in-process onnxruntime",
        description="Measure, in one run, throughput through Triton (several concurrent "
        "clients, fixed batch) and in-process onnxruntime with the same thread budget; prints "
        "a table and, as the last line, a JSON object with the ratios.",
    )
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median kept (default 3)")
    p.add_argument("--clients", type=int, default=4, help="concurrent Triton clients (default 4)")
    p.add_argument("--batch", type=int, default=32, help="items per request (default 32)")
    repository_arg(p)
    triton_arg(p)
    p.set_defaults(func=cmd_bench_embedder)

    p = bsub.add_parser(
        "indexer",
        help="recall, latency and QPS of a shard vs in-process FAISS and a bare gRPC echo",
        description="Generate N clustered vectors that mimic text embeddings, ingest them into a "
        "real shard over gRPC, train and rebuild, then measure in one run: recall@10 vs exact "
        "search, single-client p50 vs (in-process FAISS p50 + echo p50), 32-client QPS vs the echo "
        "server's, and bytes per vector. Prints a table and, last, one JSON object.",
    )
    p.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--factory", default="IVF4096,PQ48", help="FAISS factory string")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--seconds", type=float, default=5.0, help="time per latency/QPS measurement")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients for QPS")
    p.add_argument("--nprobe", type=int, default=0, help="0: from --recall-target")
    p.add_argument("--rerank", type=int, default=0, help="re-rank depth, 0: the collection default")
    p.add_argument("--recall-target", type=float, default=0.95)
    p.add_argument("--raw-dtype", choices=["float32", "float16"], default="float32")
    p.set_defaults(func=cmd_bench_indexer)

    p = bsub.add_parser(
        "gateway",
        help="end-to-end latency and QPS per query kind through the gateway, with floors",
        description="Start a private local stack, load images and texts, then measure in one run: "
        "p50/p99 with one client and QPS with many for vector, id, text and image queries "
        "(caches off), the result-cache hit path, a bare gRPC echo, Redis GET and a shard "
        "called directly. Prints a table and, last, one JSON object with the ratios.",
    )
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--shards", type=int, default=2)
    repository_arg(p)
    p.set_defaults(func=cmd_bench_gateway)

    p = bsub.add_parser(
        "peers",
        help="the served stack against a Chroma server on the same vectors, side by side",
        description="Load the same clustered 384-d vectors into a private stack (through the "
        "gateway) and a Chroma server (`chroma run`, HNSW, HTTP client, from .venv-peers made by "
        "scripts/setup.sh); set each to its first search depth whose recall@10 reaches the target; "
        "then alternate rounds of 1-client latency and --clients-client throughput. Prints a table "
        "and, last, one JSON object with p50_ratio_to_chroma and qps8_ratio_to_chroma.",
    )
    p.add_argument("--n", type=int, default=200_000, help="vectors (default 200,000)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries (default 1,000)")
    p.add_argument("--recall-target", type=float, default=0.95, help="recall@10 both must reach")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (default 3)")
    p.add_argument("--seconds", type=float, default=5.0, help="time per measurement (default 5)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients for QPS (default 8)")
    p.add_argument("--shards", type=int, default=2)
    repository_arg(p)
    p.set_defaults(func=cmd_bench_peers)

    p = bsub.add_parser(
        "payloads",
        help="the SQLite payload store through a shard vs in-process: upsert, Get, memory, snapshots",
        description="Upsert N items with 0 B, 1 KB and 8 KB payloads (and 200-byte metadata) into "
        "a real shard over gRPC and straight into the payload store in-process, then compare "
        "upsert rate and Get p50, time snapshots after ingest and after one more write (which "
        "must not depend on payload size), and measure resident memory per item at --memory-n "
        "items against 1.3x the store's on-disk bytes plus the index bytes per item. Prints a "
        "table and, last, one JSON object.",
    )
    p.add_argument("--n", type=int, default=100_000, help="items per payload size (default 100,000)")
    p.add_argument("--memory-n", type=int, default=1_000_000, help="items for the memory run (default 1M)")
    p.add_argument("--gets", type=int, default=2000, help="single-id Get requests timed (default 2000)")
    p.set_defaults(func=cmd_bench_payloads)

    p = bsub.add_parser(
        "explorer",
        help="the web app's cost: page load, search round trip vs the SDK, map computation, map bytes",
        description="On a private stack with the explorer: page load in headless Chromium (fresh "
        "profile, then warm cache); p50 of a search through the page's API against the same kind of "
        "search through the SDK; the time to compute maps of --small and --large points (sampling, "
        "PCA, UMAP, quality) and the map's bytes per point. Prints a table and, last, one JSON object.",
    )
    p.add_argument("--small", type=int, default=10_000, help="points of the smaller map (default 10,000)")
    p.add_argument("--large", type=int, default=50_000, help="points of the larger map (default 50,000)")
    p.add_argument("--searches", type=int, default=200, help="searches timed each way (default 200)")
    repository_arg(p)
    p.set_defaults(func=cmd_bench_explorer)
