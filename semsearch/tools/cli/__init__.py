"""The `semsearch` command line: the local stack, the services, data, measurements (`--help` on each)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from semsearch.core.log import setup_logging
from semsearch.tools.cli import data, embedder, indexer, measure, stack

log = logging.getLogger("semsearch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semsearch",
        description="Semantic search over images and texts: Triton-hosted ONNX embedders, "
        "a sharded FAISS index and a gRPC gateway.",
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (stack, data, embedder, indexer, measure):
        group.register(sub)
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
    except (FileNotFoundError, RuntimeError, ValueError) as exc:  # bad input, named by the raiser
        log.error("%s", exc)
        return 1
    except Exception as exc:
        import grpc

        if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
            log.error("%s: %s", exc.code().name, exc.details())
            return 1
        raise
