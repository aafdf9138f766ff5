"""`semsearch indexer up|train|repair-log`: the index shards."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("semsearch")


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
    from services.indexer.coordinator import replaced_by

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
            done = [c.serving_template_id == report.template_id for c in stats]
            replaced = replaced_by(stats, report.template_id)
            if replaced:  # a newer training installed another template: this one will never serve
                bar.close()
                log.error("template %s of %s was replaced by %s before it served", report.template_id,
                          args.collection, replaced)  # fmt: skip
                return 1
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


def register(sub) -> None:
    """Add this group's commands to the top-level subparsers."""
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
