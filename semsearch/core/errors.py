"""Domain errors shared by the services; each server's interceptor maps them to gRPC status codes."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; `field` names the request field at fault, when there is one, and `code` the gRPC
    status code (by name, so the core needs no gRPC) every server answers it with."""

    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(ServiceError):
    """The request is malformed (INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    """Unknown collection or item (NOT_FOUND)."""

    code = "NOT_FOUND"


class FailedPrecondition(ServiceError):
    """The request is valid but the state does not allow it now (FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class Unavailable(ServiceError):
    """A dependency is down or still loading (UNAVAILABLE)."""

    code = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    """Not enough answered before the deadline (DEADLINE_EXCEEDED)."""

    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(ServiceError):
    """Too much in flight or too large (RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"


class AlreadyExists(ServiceError):
    """A collection of that name exists with other settings (ALREADY_EXISTS)."""

    code = "ALREADY_EXISTS"
