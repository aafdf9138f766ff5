"""Checks of public request fields that every path shares."""

from __future__ import annotations

import numpy as np

from semsearch.core.errors import InvalidArgument

MAX_ID_BYTES = 512
MAX_PAYLOAD_BYTES = 64 * 1024
# Text items keep this much of their text as their payload.
MAX_TEXT_PAYLOAD_CHARS = 4_000


def decode_vector(values, data: bytes) -> np.ndarray:
    """A public Vector's float32 values from `values` or from `data` (little-endian float32 bytes);
    ValueError in the public API's terms when it is malformed."""
    if data:
        if len(values):
            raise ValueError("set values or data, not both")
        if len(data) % 4:
            raise ValueError(
                f"data is {len(data)} bytes, not whole little-endian float32 values (4 bytes each)"
            )
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    return np.fromiter(values, dtype=np.float32, count=len(values))


def check_vector(vector: np.ndarray, dim: int, field_name: str) -> np.ndarray:
    """float32 [dim], finite and not all zeros."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != dim:
        raise InvalidArgument(f"expected {dim} values, got {vector.shape[0]}", field_name)
    if not np.isfinite(vector).all():
        raise InvalidArgument("contains NaN or Inf", field_name)
    if not vector.any():
        raise InvalidArgument("is all zeros", field_name)
    return vector
