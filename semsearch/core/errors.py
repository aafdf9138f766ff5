"""Domain errors shared by the services; each server's interceptor maps them to gRPC status codes."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; `field` names the request field at fault, when there is one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(ServiceError):
    """The request is malformed (INVALID_ARGUMENT)."""


class NotFound(ServiceError):
    """Unknown collection or item (NOT_FOUND)."""


class FailedPrecondition(ServiceError):
    """The request is valid but the state does not allow it now (FAILED_PRECONDITION)."""


class Unavailable(ServiceError):
    """A dependency is down or still loading (UNAVAILABLE)."""


class DeadlineExceeded(ServiceError):
    """Not enough answered before the deadline (DEADLINE_EXCEEDED)."""


class ResourceExhausted(ServiceError):
    """Too much in flight or too large (RESOURCE_EXHAUSTED)."""
