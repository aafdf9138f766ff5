"""`semsearch ingest|search`: write and search through the gateway."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from semsearch.tools.cli.common import (
    gateway_arg,
    gateway_client,
    stack_home,
    table,
)

log = logging.getLogger("semsearch")


def cmd_ingest(args: argparse.Namespace) -> int:
    from semsearch.tools.ingest import dataset_items, folder_items, ingest

    if args.dataset:
        total, items = dataset_items(args.dataset, args.limit)
        source = args.dataset
    else:
        total, items = folder_items(Path(args.folder), args.limit)
        source = str(Path(args.folder).resolve())
    state_file = stack_home() / f"ingest-{args.collection}-{source.replace('/', '_')}.json"
    if args.restart:
        state_file.unlink(missing_ok=True)
    with gateway_client(args) as client:
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
    with gateway_client(args) as client:
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
    print(table(["#", "score", "id", "metadata"], rows))
    timings = ", ".join(f"{t.stage} {t.seconds * 1000:.1f}ms" for t in response.timings)
    print(
        f"shards {response.shards_answered}/{response.shards_queried}, "
        f"generations {dict(response.generations)}, cached {response.cached}; {timings}"
    )
    return 0


def register(sub) -> None:
    """Add this group's commands to the top-level subparsers."""
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
