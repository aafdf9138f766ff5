"""Write-ahead log records of a collection: upserts (ids, metadata, vectors, payloads) and deletes (ids).

Records never name slots: replaying them after a snapshot assigns the same slots again in log order,
and a compaction may renumber slots without touching the log."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

_UPSERT, _DELETE = b"U", b"D"
_SIZE = struct.Struct("<I")


@dataclass(frozen=True)
class Upsert:
    ids: list[str]
    metadata: list[str | None]  # JSON objects, encoded once at validation
    vectors: np.ndarray  # float32 [n, dim]
    payloads: list[bytes | None]  # thumbnails, texts


@dataclass(frozen=True)
class Delete:
    ids: list[str]


def encode(record: Upsert | Delete) -> bytes:
    if isinstance(record, Delete):
        return _DELETE + json.dumps({"ids": record.ids}).encode()
    sizes = [-1 if p is None else len(p) for p in record.payloads]
    header = json.dumps({"ids": record.ids, "metadata": record.metadata, "payloads": sizes}).encode()
    vectors = np.ascontiguousarray(record.vectors, "<f4").tobytes()
    return b"".join([_UPSERT, _SIZE.pack(len(header)), header, vectors, *(p for p in record.payloads if p)])


def decode(payload: bytes, dim: int) -> Upsert | Delete:
    kind = payload[:1]
    if kind == _DELETE:
        return Delete(json.loads(payload[1:])["ids"])
    if kind == _UPSERT:
        (size,) = _SIZE.unpack_from(payload, 1)
        header = json.loads(payload[5 : 5 + size])
        n = len(header["ids"])
        start = 5 + size
        end = start + n * dim * 4
        vectors = np.frombuffer(payload[start:end], dtype="<f4").reshape(n, dim)
        payloads: list[bytes | None] = []
        for length in header["payloads"]:
            if length < 0:
                payloads.append(None)
            else:
                payloads.append(payload[end : end + length])
                end += length
        return Upsert(header["ids"], header["metadata"], vectors, payloads)
    raise ValueError(f"unknown log record kind {kind!r}")
