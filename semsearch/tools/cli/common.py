"""What the command groups share: tables, the stack's home, gateway addresses and client options."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from pathlib import Path


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows under headers, columns aligned; a row of another width is a bug, never silently cut."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(headers)} headers")
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def repository_of(args: argparse.Namespace) -> Path:
    from services.embedder.config import EmbedderSettings

    return Path(args.repository) if args.repository else EmbedderSettings.from_env().model_repository


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def stack_home() -> Path:
    from services.embedder.config import state_dir

    return state_dir()


def stack_file() -> Path:
    return stack_home() / "stack.json"


def gateway_address(args: argparse.Namespace) -> str:
    import os

    from semsearch.tools.stack import StackState

    if getattr(args, "gateway", None):
        return args.gateway
    if os.environ.get("SEMSEARCH_GATEWAY"):
        return os.environ["SEMSEARCH_GATEWAY"]
    state = StackState.load(stack_file())
    if state is None:
        raise SystemExit("no gateway: run `semsearch up` or pass --gateway HOST:PORT")
    return state.gateway


def gateway_client(args: argparse.Namespace, timeout_s: float = 30.0):
    from semsearch.client import SemsearchClient

    tls_ca = getattr(args, "tls_ca", None)
    return SemsearchClient(gateway_address(args), api_key=args.api_key, timeout_s=timeout_s, tls_ca=tls_ca)


def repository_arg(p: argparse.ArgumentParser) -> None:
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


def gateway_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway", help="HOST:PORT (default $SEMSEARCH_GATEWAY or the local stack)")
    p.add_argument("--api-key", help="sent as x-api-key metadata when the gateway requires one")
    p.add_argument("--tls-ca", metavar="PEM", help="CA certificate of a TLS gateway (default: plaintext)")
