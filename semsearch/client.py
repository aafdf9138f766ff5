"""Python client SDK of the public semsearch API (the CLI uses it too)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from semsearch.v1 import common_pb2, search_pb2, search_pb2_grpc

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


def sample_from_chunks(
    chunks: Sequence[search_pb2.SampleItemsChunk],
) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """A SampleItems stream's chunks as ids, vectors [m, dim] float32 and metadata."""
    ids = [i for chunk in chunks for i in chunk.ids]
    metadata = [dict(m.values) for chunk in chunks for m in chunk.metadata]
    vectors = [np.frombuffer(c.vectors, dtype="<f4").reshape(len(c.ids), c.dim) for c in chunks]
    dim = vectors[0].shape[1] if vectors else 0
    return ids, np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32), metadata


class QueryError(grpc.RpcError):
    """One query of a search_batch that failed: `code()` and `details()` as a failed call's."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self._code = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
        self._message = message

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message


@dataclass(frozen=True)
class Item:
    """An item to upsert: an id plus exactly one of image bytes, text or vector."""

    id: str
    image: bytes | None = None
    text: str | None = None
    vector: Sequence[float] | None = None
    metadata: dict[str, str] | None = None
    # Kept with the item (at most 64 KB); by default a thumbnail of an image or the start of a text.
    payload: bytes | None = None

    def message(self) -> search_pb2.UpsertItem:
        item = search_pb2.UpsertItem(id=self.id, metadata=self.metadata or {}, payload=self.payload or b"")
        if self.image is not None:
            item.image = self.image
        elif self.text is not None:
            item.text = self.text
        elif self.vector is not None:
            item.vector.data = np.ascontiguousarray(self.vector, dtype="<f4").tobytes()
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
            # Each client its own connection (gRPC shares one per target in a process by default): a
            # process with several clients spreads them over the gateway's workers.
            ("grpc.use_local_subchannel_pool", 1),
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
        include_payloads: bool = False,
        filter: str = "",
        exact: bool = False,
        timeout_s: float | None = None,
    ) -> search_pb2.SearchResponse:
        """The k items most similar to one query (an image, a text, a vector or a stored item's id).
        filter: only items whose indexed fields match, e.g. 'label = "Bag"', 'label in ["Bag", "Sandal"]
        and price < 50', 'not (split = "test")'; exact: score every item (slow; for checking recall)."""
        request = self.search_request(
            collection, image=image, text=text, vector=vector, id=id, k=k, recall_target=recall_target,
            nprobe=nprobe, min_coverage=min_coverage, no_cache=no_cache, include_payloads=include_payloads,
            filter=filter, exact=exact,
        )  # fmt: skip
        return self.stub.Search(request, timeout=timeout_s or self.timeout_s, metadata=self.metadata)

    def search_batch(
        self, queries: Sequence[search_pb2.SearchRequest], timeout_s: float | None = None
    ) -> list[search_pb2.SearchResponse | grpc.RpcError]:
        """Many searches in one call (build each with `search_request`), run concurrently by the gateway;
        one entry per query, in order: its response, or an error with its own code and details (a bad
        query fails alone)."""
        response = self.stub.SearchBatch(
            search_pb2.SearchBatchRequest(queries=queries), timeout=timeout_s or self.timeout_s,
            metadata=self.metadata,
        )  # fmt: skip
        return [r.response if r.code == 0 else QueryError(r.code, r.message) for r in response.results]

    @staticmethod
    def search_request(
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
        include_payloads: bool = False,
        filter: str = "",
        exact: bool = False,
    ) -> search_pb2.SearchRequest:
        """A SearchRequest with the same arguments as `search` (for `search_batch`)."""
        request = search_pb2.SearchRequest(
            collection=collection,
            k=k,
            recall_target=recall_target,
            nprobe=nprobe,
            no_cache=no_cache,
            include_payloads=include_payloads,
            filter=filter,
            exact=exact,
        )
        if min_coverage is not None:
            request.min_coverage = min_coverage
        if image is not None:
            request.image = image
        elif text is not None:
            request.text = text
        elif vector is not None:
            request.vector.data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
        elif id is not None:
            request.id = id
        return request

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
        self,
        collection: str,
        ids: Sequence[str],
        include_vectors: bool = False,
        include_payloads: bool = False,
    ) -> search_pb2.GetResponse:
        request = search_pb2.GetRequest(
            collection=collection,
            ids=list(ids),
            include_vectors=include_vectors,
            include_payloads=include_payloads,
        )
        return self.stub.Get(request, timeout=self.timeout_s, metadata=self.metadata)

    def collections(self) -> list[search_pb2.CollectionInfo]:
        response = self.stub.ListCollections(
            search_pb2.ListCollectionsRequest(), timeout=self.timeout_s, metadata=self.metadata
        )
        return list(response.collections)

    def create_collection(
        self,
        name: str,
        *,
        dim: int = 0,
        metric: str = "cosine",
        model: str = "",
        index: str = "ivf_pq",
        exact_until: int = 0,
        factory: str = "",
        raw_dtype: str = "",
        recall_target: float = 0.0,
        fields: dict[str, str] | Sequence[tuple[str, str]] | None = None,
        thumbnails: bool | None = None,
    ) -> search_pb2.CollectionInfo:
        """Create a collection (the same settings again is a no-op; other settings: ALREADY_EXISTS).
        metric: cosine | inner_product | l2; model: "" (vectors only), "efficientnet_lite0" (images) or
        "minilm_l6" (texts), dim 0 = the model's; index: ivf_pq | hnsw | exact; fields: indexed metadata
        fields and their types (string | number), as a dict or (name, type) pairs."""
        spec = common_pb2.CollectionSpec(
            name=name,
            dim=dim,
            metric=_enum(common_pb2.Metric, metric),
            model=model,
            index=common_pb2.IndexSpec(
                kind=_enum(common_pb2.IndexKind, index), exact_until=exact_until, factory=factory
            ),
            raw_dtype=raw_dtype,
            recall_target=recall_target,
            fields=[
                common_pb2.FieldSpec(name=n, type=_enum(common_pb2.FieldType, t))
                for n, t in (fields.items() if isinstance(fields, dict) else fields or ())
            ],
        )
        if thumbnails is not None:
            spec.thumbnails = thumbnails
        request = search_pb2.CreateCollectionRequest(spec=spec)
        return self.stub.CreateCollection(request, timeout=self.timeout_s * 2, metadata=self.metadata)

    def drop_collection(self, name: str) -> None:
        """Drop a collection and its data on every shard."""
        request = search_pb2.DropCollectionRequest(name=name)
        self.stub.DropCollection(request, timeout=self.timeout_s * 4, metadata=self.metadata)

    def sample_items(
        self, collection: str, n: int, seed: int = 0, timeout_s: float = 300.0
    ) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
        """A uniform random sample of up to n items: ids, vectors [m, dim] and metadata."""
        request = search_pb2.SampleItemsRequest(collection=collection, n=n, seed=seed)
        return sample_from_chunks(
            list(self.stub.SampleItems(request, timeout=timeout_s, metadata=self.metadata))
        )

    def describe_collection(self, name: str) -> search_pb2.CollectionInfo:
        request = search_pb2.DescribeCollectionRequest(name=name)
        return self.stub.DescribeCollection(request, timeout=self.timeout_s, metadata=self.metadata)


def _enum(enum, name: str) -> int:
    """A proto enum value from a readable name ("l2", "inner_product", "hnsw", "string")."""
    try:
        return enum.Value(name.upper())
    except ValueError:
        names = ", ".join(
            v.name.lower() for v in enum.DESCRIPTOR.values if not v.name.endswith("UNSPECIFIED")
        )
        raise ValueError(f"{name!r}: one of {names}") from None
