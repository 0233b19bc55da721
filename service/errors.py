"""What the service answers when it does not rank: one set of errors and messages for every face.

Each error knows its HTTP status; the HTTP routes send it as JSON, Gradio and MCP show its message.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses or cannot serve; the message names the field and the limit."""

    status = 500
    kind = "Internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.recorded = False  # counted and logged once, by whichever layer saw it first


class InvalidInput(ServiceError):
    """A field is missing, malformed or outside its range (422)."""

    status, kind = 422, "Validation"


class TooLarge(ServiceError):
    """The request is over a size or cost limit (413)."""

    status, kind = 413, "Validation"


class Unauthorized(ServiceError):
    """No key, or the wrong one, while ``RERANK_API_KEY`` is set (401)."""

    status, kind = 401, "Unauthorized"

    def __init__(self, message: str = "missing or wrong API key: send 'Authorization: Bearer <key>'") -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Overloaded(ServiceError):
    """Too much work in flight already (429, retry after a second)."""

    status, kind = 429, "Overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Unavailable(ServiceError):
    """A backend the request needs (the retrieval Space, the index) cannot answer now (503)."""

    status, kind = 503, "Unavailable"


class ClientGone(ServiceError):
    """The client went away; its work was cancelled (499, never seen by that client)."""

    status, kind = 499, "Cancelled"
