"""Write-ahead log records of a collection: upserts (ids, metadata, vectors) and deletes (ids).

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


@dataclass(frozen=True)
class Delete:
    ids: list[str]


def encode(record: Upsert | Delete) -> bytes:
    if isinstance(record, Delete):
        return _DELETE + json.dumps({"ids": record.ids}).encode()
    header = json.dumps({"ids": record.ids, "metadata": record.metadata}).encode()
    return _UPSERT + _SIZE.pack(len(header)) + header + np.ascontiguousarray(record.vectors, "<f4").tobytes()


def decode(payload: bytes, dim: int) -> Upsert | Delete:
    kind = payload[:1]
    if kind == _DELETE:
        return Delete(json.loads(payload[1:])["ids"])
    if kind == _UPSERT:
        (size,) = _SIZE.unpack_from(payload, 1)
        header = json.loads(payload[5 : 5 + size])
        vectors = np.frombuffer(payload[5 + size :], dtype="<f4").reshape(-1, dim)
        return Upsert(header["ids"], header["metadata"], vectors)
    raise ValueError(f"unknown log record kind {kind!r}")
