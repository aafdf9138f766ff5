"""A bare grpc.aio server that answers every call with fixed bytes: the gRPC floor in benchmarks.

Run as `python -m semsearch.tools.echo PORT RESPONSE_FILE [--parse-shard-search]`; the method is
/semsearch.bench.Echo/Call. With --parse-shard-search each request is parsed as a ShardSearchRequest,
as a shard would, so the floor includes the same deserialisation work."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc

from semsearch.procs import ManagedProcess, free_port, port_open
from semsearch.rpc import server_options
from semsearch.v1 import indexer_pb2

METHOD = "/semsearch.bench.Echo/Call"


def serve(port: int, response: bytes, parse_shard_search: bool = False) -> None:
    async def call(request, context) -> bytes:
        return response

    async def main() -> None:
        server = grpc.aio.server(options=server_options(64 * 1024 * 1024))
        parse = indexer_pb2.ShardSearchRequest.FromString if parse_shard_search else None
        handler = grpc.method_handlers_generic_handler(
            "semsearch.bench.Echo",
            {"Call": grpc.unary_unary_rpc_method_handler(call, request_deserializer=parse)},
        )
        server.add_generic_rpc_handlers((handler,))
        if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
            raise RuntimeError(f"cannot bind 127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def start(
    directory: Path, response: bytes, *, parse_shard_search: bool = False
) -> tuple[ManagedProcess, str]:
    """The echo server in its own process (it must not share the client's GIL); (process, address)."""
    path = directory / "echo_response.bin"
    path.write_bytes(response)
    port = free_port()
    argv = [sys.executable, "-m", "semsearch.tools.echo", str(port), str(path)]
    if parse_shard_search:
        argv.append("--parse-shard-search")
    process = ManagedProcess("bench echo server", argv, log_path=directory / "echo.log")
    process.start(lambda: port_open("127.0.0.1", port), timeout=60)
    return process, f"127.0.0.1:{port}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("response_file", type=Path)
    parser.add_argument("--parse-shard-search", action="store_true")
    args = parser.parse_args()
    serve(args.port, args.response_file.read_bytes(), args.parse_shard_search)
