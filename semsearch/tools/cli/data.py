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
    from semsearch.tools.ingest import create_collection_for, dataset_items, folder_items, ingest, npy_items

    dim = 0
    if args.dataset:
        total, items = dataset_items(args.dataset, args.limit)
        source = args.dataset
    elif args.npy:
        total, dim, items = npy_items(Path(args.npy), Path(args.ids) if args.ids else None, args.limit)
        source = str(Path(args.npy).resolve())
    else:
        total, items = folder_items(Path(args.folder), args.limit)
        source = str(Path(args.folder).resolve())
    state_file = stack_home() / f"ingest-{args.collection}-{source.replace('/', '_')}.json"
    if args.restart:
        state_file.unlink(missing_ok=True)
    with gateway_client(args) as client:
        if args.create:
            if args.dataset:
                create_collection_for(client, args.collection, args.dataset)
            elif args.npy:
                client.create_collection(args.collection, dim=dim, metric=args.metric)
            else:
                raise SystemExit(
                    "--create with --folder: create the collection first (semsearch collections create)"
                )
        report = ingest(client, args.collection, source, total, items, state_file=state_file,
                        batch_size=args.batch)  # fmt: skip
    print(
        f"{report.succeeded} ingested, {report.failed} failed, {report.skipped} skipped (already done) "
        f"in {report.seconds:.1f}s ({report.items_per_s:.0f} items/s)"
    )
    for reason, count in report.reasons.most_common(10):
        print(f"  {count} x {reason}")
    return 0 if report.failed == 0 else 1


def _collection_row(info) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def cmd_collections_list(args: argparse.Namespace) -> int:
    with gateway_client(args) as client:
        infos = client.collections()
    if args.json:
        print(json.dumps([_collection_row(i) for i in infos]))
        return 0
    rows = [
        (i.name, i.dim, i.spec.model or "-", common_metric(i.spec.metric), i.count, i.index, i.state,
         f"{i.shards_answered}/{i.shards_total}")
        for i in infos
    ]  # fmt: skip
    print(table(["name", "dim", "model", "metric", "items", "index", "state", "shards"], rows))
    return 0


def cmd_collections_describe(args: argparse.Namespace) -> int:
    with gateway_client(args) as client:
        info = client.describe_collection(args.name)
    row = _collection_row(info)
    if args.json:
        print(json.dumps(row))
        return 0
    spec = row["spec"]
    print(table(["setting", "value"], [(k, json.dumps(v) if isinstance(v, dict | list) else v)
                                        for k, v in spec.items()]))  # fmt: skip
    print(
        f"\n{info.count} items, index {info.index} ({info.state}), model version {info.model_version or '-'}"
        f"\nanswers {', '.join(info.query_kinds)} queries; stores {', '.join(info.item_kinds)} items"
    )
    rows = [
        (s.shard, s.count, s.rows, f"{s.disk_bytes / 2**20:.1f}", f"{s.memory_bytes / 2**20:.1f}",
         s.generation, f"{s.rebuild_progress:.0%}" if s.rebuilding else "no",
         f"{s.drift:.2f}" if s.drift else "-",
         f"{s.estimated_recall:.3f} ({s.recall_samples})" if s.recall_samples else "-")
        for s in info.shards
    ]  # fmt: skip
    headers = [
        "shard",
        "items",
        "rows",
        "disk MB",
        "memory MB",
        "generation",
        "rebuilding",
        "drift",
        "recall",
    ]
    print(table(headers, rows))
    return 0


def _field_arg(text: str) -> tuple[str, str]:
    name, colon, kind = text.partition(":")
    if not colon or not name or not kind:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:TYPE, e.g. label:string")
    return name, kind


def cmd_collections_create(args: argparse.Namespace) -> int:
    fields = args.field or None  # (name, type) pairs: a field typed twice reaches the gateway's check
    with gateway_client(args) as client:
        info = client.create_collection(
            args.name, dim=args.dim, metric=args.metric, model=args.model, index=args.index,
            exact_until=args.exact_until, factory=args.factory, raw_dtype=args.raw_dtype or "",
            recall_target=args.recall_target, fields=fields,
            thumbnails=None if args.thumbnails is None else args.thumbnails == "on",
        )  # fmt: skip
    print(
        json.dumps(_collection_row(info))
        if args.json
        else f"collection {info.name}: {info.dim}-d, {info.state}"
    )
    return 0


def cmd_collections_drop(args: argparse.Namespace) -> int:
    with gateway_client(args) as client:
        client.drop_collection(args.name)
    print(f"dropped {args.name}")
    return 0


def common_metric(value: int) -> str:
    from semsearch.v1 import common_pb2

    return common_pb2.Metric.Name(value or common_pb2.COSINE).lower()


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
        response = client.search(
            args.collection,
            k=args.k,
            filter=args.filter,
            recall_target=args.recall_target,
            exact=args.exact,
            **query,
        )
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
    for info in response.shard_info:
        depth = f", {info.depth:.1f} lists/ef" if info.plan == "index" else ""
        took = f"{info.seconds * 1000:.1f}ms"
        print(f"  shard {info.shard}: {info.plan}{depth}, {info.matched} items allowed, {took}")
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
    source.add_argument("--npy", metavar="FILE", help="vectors, a float32 [n, dim] .npy file")
    p.add_argument("--ids", metavar="FILE", help="with --npy: one id a line (default: <file>-<row>)")
    p.add_argument(
        "--create",
        action="store_true",
        help="create the collection first (a data set's model and fields; with --npy, vectors of its dim)",
    )
    p.add_argument("--metric", default="cosine", choices=["cosine", "inner_product", "l2"],
                   help="with --create --npy (default cosine)")  # fmt: skip
    p.add_argument("--limit", type=int, help="at most this many items")
    p.add_argument("--batch", type=int, default=64, help="items per request (default 64)")
    p.add_argument("--restart", action="store_true", help="ignore saved progress")
    gateway_arg(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "search",
        help="search a collection by image, text, stored id or vector",
        description="Search through the gateway. --filter keeps only items whose indexed metadata "
        'fields match: label = "Bag"; label != "Bag"; label in ["Bag", "Sandal"]; price >= 10 and '
        'price < 50; not (split = "test"); and, or, not, parentheses (&&, ||, ! also work). '
        "String fields take = != in; number fields also < <= > >=.",
    )
    p.add_argument("--collection", required=True)
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", metavar="FILE")
    query.add_argument("--text")
    query.add_argument("--id", help="more like this stored item")
    query.add_argument("--vector-file", metavar="FILE", help="whitespace-separated floats")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--filter", default="", metavar="EXPR", help="e.g. 'label = \"Bag\"' (see above)")
    p.add_argument(
        "--recall-target", type=float, default=0.0, help="recall@10 wanted (default: the collection's)"
    )
    p.add_argument(
        "--exact", action="store_true", help="score every item (slow; shows what the index misses)"
    )
    p.add_argument("--json", action="store_true", help="the response as JSON")
    gateway_arg(p)
    p.set_defaults(func=cmd_search)

    collections = sub.add_parser("collections", help="create, drop, describe and list collections")
    csub = collections.add_subparsers(dest="collections_command", required=True, metavar="ACTION")
    p = csub.add_parser("list", help="every collection: dim, model, metric, items, index state, shards")
    p.add_argument("--json", action="store_true", help="one JSON list")
    gateway_arg(p)
    p.set_defaults(func=cmd_collections_list)
    p = csub.add_parser("describe", help="a collection's settings and its counts, disk and memory per shard")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="one JSON object")
    gateway_arg(p)
    p.set_defaults(func=cmd_collections_describe)
    p = csub.add_parser(
        "create",
        help="create a collection on every shard (the same settings again: nothing happens)",
        description="Create a collection. With --model (efficientnet_lite0 for images, minilm_l6 for "
        "texts) images or texts are embedded by the gateway and --dim defaults to the model's; "
        "without, it holds vectors you send. Searched exactly until --exact-until vectors, then "
        "through an IVF-PQ index (memory-lean) or an HNSW graph (low latency), built once.",
    )
    p.add_argument("name", help="1-64 letters, digits, - or _")
    p.add_argument("--dim", type=int, default=0, help="vector dimension (default: the model's)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "inner_product", "l2"])
    p.add_argument("--model", default="", help="efficientnet_lite0 | minilm_l6 | (none: vectors only)")
    p.add_argument("--index", default="ivf_pq", choices=["ivf_pq", "hnsw", "exact"])
    p.add_argument("--exact-until", type=int, default=0, help="vectors before the index is built (50,000)")
    p.add_argument("--factory", default="", help="advanced: a FAISS factory string")
    p.add_argument(
        "--raw-dtype", choices=["float32", "float16"], help="raw vectors on disk (float32; float16: half)"
    )
    p.add_argument("--recall-target", type=float, default=0.0, help="default recall@10 target (0.95)")
    p.add_argument(
        "--field",
        action="append",
        type=_field_arg,
        metavar="NAME:TYPE",
        help="a metadata field indexed for filters, TYPE string or number (repeatable)",
    )
    p.add_argument("--thumbnails", choices=["on", "off"], help="keep thumbnails (default: on for images)")
    p.add_argument("--json", action="store_true", help="the new collection as JSON")
    gateway_arg(p)
    p.set_defaults(func=cmd_collections_create)
    p = csub.add_parser("drop", help="drop a collection and delete its data on every shard")
    p.add_argument("name")
    gateway_arg(p)
    p.set_defaults(func=cmd_collections_drop)
