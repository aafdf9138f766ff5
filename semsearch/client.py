"""Python client SDK of the public semsearch API (the CLI uses it too)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from semsearch.v1 import search_pb2, search_pb2_grpc

# Reads are retried on UNAVAILABLE (a gateway restarting, a shard below the requested coverage for a
# moment) with exponential back-off, about 3 s in all; writes are not (the caller decides).
RETRY_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "semsearch.v1.Search", "method": m}
                    for m in ("Search", "Get", "ListCollections")
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "1.6s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True)
class Item:
    """An item to upsert: an id plus exactly one of image bytes, text or vector."""

    id: str
    image: bytes | None = None
    text: str | None = None
    vector: Sequence[float] | None = None
    metadata: dict[str, str] | None = None

    def message(self) -> search_pb2.UpsertItem:
        item = search_pb2.UpsertItem(id=self.id, metadata=self.metadata or {})
        if self.image is not None:
            item.image = self.image
        elif self.text is not None:
            item.text = self.text
        elif self.vector is not None:
            item.vector.values.extend(np.asarray(self.vector, dtype=np.float32).tolist())
        return item


class SemsearchClient:
    """Synchronous client; raises grpc.RpcError with the server's status code and message."""

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        tls_ca: str | Path | None = None,
    ) -> None:
        """`tls_ca`: a PEM file of the CA that signed the gateway's certificate (TLS); None: plaintext."""
        options = [
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", RETRY_CONFIG),
        ]
        if tls_ca is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self.channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = search_pb2_grpc.SearchStub(self.channel)
        self.metadata = (("x-api-key", api_key),) if api_key else ()
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SemsearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def search(
        self,
        collection: str,
        *,
        image: bytes | None = None,
        text: str | None = None,
        vector: Sequence[float] | None = None,
        id: str | None = None,
        k: int = 10,
        recall_target: float = 0.0,
        nprobe: int = 0,
        min_coverage: float | None = None,
        no_cache: bool = False,
        timeout_s: float | None = None,
    ) -> search_pb2.SearchResponse:
        request = search_pb2.SearchRequest(
            collection=collection, k=k, recall_target=recall_target, nprobe=nprobe, no_cache=no_cache
        )
        if min_coverage is not None:
            request.min_coverage = min_coverage
        if image is not None:
            request.image = image
        elif text is not None:
            request.text = text
        elif vector is not None:
            request.vector.values.extend(np.asarray(vector, dtype=np.float32).tolist())
        elif id is not None:
            request.id = id
        return self.stub.Search(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)

    def upsert(self, collection: str, items: Sequence[Item]) -> search_pb2.UpsertResponse:
        request = search_pb2.UpsertRequest(collection=collection, items=[i.message() for i in items])
        return self.stub.Upsert(request, timeout=self.timeout_s * 4, metadata=self.metadata)

    def upsert_stream(
        self, collection: str, batches: Iterable[Sequence[Item]]
    ) -> Iterator[search_pb2.UpsertResponse]:
        """Bulk ingest: one response per batch, in order; the server applies backpressure."""
        requests = (
            search_pb2.UpsertRequest(collection=collection, items=[i.message() for i in batch])
            for batch in batches
        )
        return self.stub.UpsertStream(requests, metadata=self.metadata)

    def delete(self, collection: str, ids: Sequence[str]) -> search_pb2.DeleteResponse:
        return self.stub.Delete(
            search_pb2.DeleteRequest(collection=collection, ids=list(ids)),
            timeout=self.timeout_s,
            metadata=self.metadata,
        )

    def get(
        self, collection: str, ids: Sequence[str], include_vectors: bool = False
    ) -> search_pb2.GetResponse:
        request = search_pb2.GetRequest(collection=collection, ids=list(ids), include_vectors=include_vectors)
        return self.stub.Get(request, timeout=self.timeout_s, metadata=self.metadata)

    def collections(self) -> list[search_pb2.CollectionInfo]:
        response = self.stub.ListCollections(
            search_pb2.ListCollectionsRequest(), timeout=self.timeout_s, metadata=self.metadata
        )
        return list(response.collections)
