"""Domain errors of the indexer; the servicer maps each to a gRPC status code."""

from __future__ import annotations


class IndexerError(Exception):
    """Base class; `field` names the request field at fault, when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(IndexerError):
    """The request is malformed (INVALID_ARGUMENT)."""


class NotFound(IndexerError):
    """Unknown collection or item (NOT_FOUND)."""


class FailedPrecondition(IndexerError):
    """The request is valid but the state does not allow it now (FAILED_PRECONDITION)."""
