"""A bare grpc.aio server that answers every call with fixed bytes: the gRPC floor in benchmarks.

Run as `python -m semsearch.tools.echo PORT RESPONSE_FILE`; the method is /semsearch.bench.Echo/Call.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from semsearch.rpc import server_options

METHOD = "/semsearch.bench.Echo/Call"


def serve(port: int, response: bytes) -> None:
    async def call(request: bytes, context) -> bytes:
        return response

    async def main() -> None:
        server = grpc.aio.server(options=server_options(64 * 1024 * 1024))
        handler = grpc.method_handlers_generic_handler(
            "semsearch.bench.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
        )
        server.add_generic_rpc_handlers((handler,))
        if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
            raise RuntimeError(f"cannot bind 127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]).read_bytes())
