"""The explorer's async client of the gateway's public API (the same API, key and TLS as any client)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from semsearch.client import RETRY_CONFIG, sample_from_chunks
from semsearch.v1 import search_pb2, search_pb2_grpc


class GatewayError(Exception):
    """A call the gateway refused or could not answer: its status code (name) and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Gateway:
    """The channel is opened on first use, inside the event loop that serves the app (grpc.aio channels
    belong to the loop they were created in)."""

    def __init__(self, address: str, api_key: str | None = None, tls_ca: str | None = None) -> None:
        self.address = address
        self.tls_ca = tls_ca
        self.metadata = (("x-api-key", api_key),) if api_key else ()
        self.channel: grpc.aio.Channel | None = None
        self._stub: search_pb2_grpc.SearchStub | None = None

    @property
    def stub(self) -> search_pb2_grpc.SearchStub:
        if self._stub is None:
            options = [
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.enable_retries", 1),
                ("grpc.service_config", RETRY_CONFIG),
            ]
            if self.tls_ca:
                credentials = grpc.ssl_channel_credentials(root_certificates=Path(self.tls_ca).read_bytes())
                self.channel = grpc.aio.secure_channel(self.address, credentials, options=options)
            else:
                self.channel = grpc.aio.insecure_channel(self.address, options=options)
            self._stub = search_pb2_grpc.SearchStub(self.channel)
        return self._stub

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    async def _call(self, method, request, timeout: float):
        try:
            return await method(request, timeout=timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            raise GatewayError(exc.code().name, exc.details() or exc.code().name) from exc

    async def collections(self, timeout: float = 10.0) -> list[search_pb2.CollectionInfo]:
        response = await self._call(self.stub.ListCollections, search_pb2.ListCollectionsRequest(), timeout)
        return list(response.collections)

    async def describe(self, name: str, timeout: float = 10.0) -> search_pb2.CollectionInfo:
        return await self._call(
            self.stub.DescribeCollection, search_pb2.DescribeCollectionRequest(name=name), timeout
        )

    async def search(
        self, request: search_pb2.SearchRequest, timeout: float = 30.0
    ) -> search_pb2.SearchResponse:
        return await self._call(self.stub.Search, request, timeout)

    async def get(self, collection: str, ids: list[str], timeout: float = 10.0) -> search_pb2.GetResponse:
        request = search_pb2.GetRequest(collection=collection, ids=ids, include_payloads=True)
        return await self._call(self.stub.Get, request, timeout)

    async def sample(
        self, collection: str, n: int, seed: int = 0, timeout: float = 600.0
    ) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
        """A uniform random sample of up to n items: ids, vectors [m, d], metadata."""
        request = search_pb2.SampleItemsRequest(collection=collection, n=n, seed=seed)
        try:
            chunks = [
                c async for c in self.stub.SampleItems(request, timeout=timeout, metadata=self.metadata)
            ]
        except grpc.aio.AioRpcError as exc:
            raise GatewayError(exc.code().name, exc.details() or exc.code().name) from exc
        return sample_from_chunks(chunks)
