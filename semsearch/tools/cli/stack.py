"""`semsearch up|down|status|restart|demo`: the supervised local stack."""

from __future__ import annotations

import argparse
import json
import logging

from semsearch.tools.cli.common import (
    repository_arg,
    repository_of,
    stack_file,
    stack_home,
    table,
)

log = logging.getLogger("semsearch")


def cmd_up(args: argparse.Namespace) -> int:
    from semsearch.tools.supervisor import StartFailed, up
    from services.embedder.export import export_models, repository_is_current

    repository = repository_of(args)
    if not repository_is_current(repository):
        export_models(repository)
    try:
        outcome, notes = up(
            stack_home(), repository, shards=args.shards, port=args.port,
            with_prometheus=args.with_prometheus, with_explorer=not args.no_explorer,
        )  # fmt: skip
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
    from semsearch.tools.stack import StackState, status_of
    from semsearch.tools.supervisor import ask

    state = StackState.load(stack_file())
    supervisor = ask(stack_home(), {"cmd": "status"})
    if state is None or supervisor is None:
        print(json.dumps({"running": False}) if as_json else "not running (semsearch up starts it)")
        return 1
    rows = status_of(state, supervisor)
    metrics = {"gateway": f"http://127.0.0.1:{state.gateway_metrics}/metrics",
               "triton": f"http://127.0.0.1:{state.triton_metrics}/metrics"}  # fmt: skip
    metrics |= {f"shard-{i}": f"http://127.0.0.1:{p}/metrics" for i, p in enumerate(state.shard_metrics)}
    if as_json:
        report = {"running": True, "gateway": state.gateway, "explorer": state.explorer or None,
                  "parts": rows, "metrics": metrics, "prometheus": state.prometheus or None}  # fmt: skip
        print(json.dumps(report))
        return 0
    print(table(["part", "address", "state", "restarts", "why"],
                 [(r["part"], r["address"], r["state"], r["restarts"], r["why"]) for r in rows]))  # fmt: skip
    gateway = rows[0]
    print(f"shard coverage the gateway can offer now: {gateway['coverage']}")
    print("metrics: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    if state.prometheus:
        print(f"prometheus: {state.prometheus} (rules from deploy/prometheus/rules.yml)")
    if state.explorer:
        print(f"explorer: {state.explorer} (open it in a browser)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from semsearch.tools.supervisor import down

    stopped = down(stack_home())
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing running")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _print_status(as_json=args.json)


def cmd_restart(args: argparse.Namespace) -> int:
    from semsearch.tools.supervisor import ask

    part = f"shard-{args.number}" if args.part == "shard" else args.part
    if args.part == "shard" and args.number is None:
        raise SystemExit("semsearch restart shard N: give the shard's number")
    reply = ask(stack_home(), {"cmd": "restart", "part": part}, timeout=600)
    if reply is None:
        print("not running (semsearch up starts it)")
        return 1
    print(reply.get("message") or reply.get("error"))
    return 0 if "message" in reply else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from semsearch.tools.demo import run_demo

    return run_demo(repository_of(args), stack_home(), limit=args.limit, shards=args.shards)


def register(sub) -> None:
    """Add this group's commands to the top-level subparsers."""
    p = sub.add_parser(
        "up",
        help="start the local stack (Triton, Redis, shards, gateway, explorer) in the background",
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
    p.add_argument("--no-explorer", action="store_true", help="do not run the explorer (the web app)")
    repository_arg(p)
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
    p.add_argument("part", choices=["shard", "gateway", "triton", "redis", "prometheus", "explorer"])
    p.add_argument("number", type=int, nargs="?", help="the shard's number (for `shard`)")
    p.set_defaults(func=cmd_restart)
    p = sub.add_parser(
        "demo",
        help="start the local stack, ingest Fashion-MNIST and the fortunes, show searches",
        description="Export the models if needed, start the local stack (or reuse a running "
        "one), ingest the 70,000 Fashion-MNIST images and ~15,000 fortunes (resumable), run "
        "searches by image, by id and by text, and show where the metrics are. The stack keeps "
        "running afterwards; `semsearch down` stops it.",
    )
    repository_arg(p)
    p.add_argument("--limit", type=int, help="ingest at most this many items per data set")
    p.add_argument("--shards", type=int, default=2, help="indexer shards (default 2)")
    p.set_defaults(func=cmd_demo)
