"""Errors the server answers with: their types, their HTTP statuses, their bodies and logs.

Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model or version), 413
(body too large), 415 (unsupported Content-Encoding), 503 + ``Retry-After`` (queue full, model
not ready, server draining), 504 (deadline passed) and 500 only when the model itself fails
(or on a bug, whose details stay in the log: the client reads only the exception's type).
"""

from __future__ import annotations

import json
import logging

from starlette.responses import Response

from .. import errors as engine_errors

__all__ = [
    "ClientGone",
    "HTTPError",
    "ProtocolError",
    "encode_error",
    "engine_error",
    "error_headers",
    "error_response",
    "log_error",
]

log = logging.getLogger("inferline.server")


class ProtocolError(Exception):
    """A request that breaks the protocol. ``status`` is the HTTP status (always 4xx)."""

    def __init__(self, status: int, message: str) -> None:
        if not 400 <= status < 500:
            raise ValueError(f"ProtocolError status must be 4xx, got {status}")
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message


# The metrics' outcome label of an answer, by status, where the error does not name one.
_STATUS_OUTCOME = {
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "not_allowed",
    413: "too_large",
    415: "unsupported_encoding",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


class HTTPError(Exception):
    """An answer other than 200: its status, its message, whether ``Retry-After`` goes with
    it (the server's setting gives the value), and the ``outcome`` label it is counted under
    in the metrics (by default one per status: ``bad_request``, ``not_found``, ...)."""

    def __init__(
        self, status: int, message: str, retry_after: bool = False, outcome: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.outcome = outcome or _STATUS_OUTCOME.get(status, f"http_{status}")


class ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


# The status of each engine error, whether Retry-After goes with it, and its outcome label;
# any other exception is a bug (500).
_ENGINE_STATUS: tuple[tuple[type[Exception], int, bool, str], ...] = (
    (engine_errors.ModelNotFound, 404, False, "not_found"),
    (engine_errors.QueueFullError, 503, True, "queue_full"),
    (engine_errors.ModelNotReady, 503, True, "not_ready"),
    (engine_errors.EngineStopped, 503, True, "engine_stopped"),
    (engine_errors.DeadlineExceeded, 504, False, "timeout"),
    (engine_errors.InvalidInput, 400, False, "bad_request"),
    (engine_errors.ModelError, 500, False, "model_error"),
)


def engine_error(exc: Exception) -> HTTPError:
    """The HTTP answer to an exception raised by the engine (see the module docstring)."""
    for kind, status, retry_after, outcome in _ENGINE_STATUS:
        if isinstance(exc, kind):
            return HTTPError(status, str(exc) or type(exc).__name__, retry_after, outcome)
    return HTTPError(500, f"internal error: {type(exc).__name__}")


def encode_error(message: str) -> bytes:
    """The protocol's error body: ``{"error": message}``."""
    return json.dumps({"error": message}).encode("utf-8")


def log_error(method: str, path: str, rid: str, err: HTTPError) -> None:
    """The DEBUG line of one error answer (operators see counts and summaries instead:
    :mod:`.outcomes`)."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    log.debug(
        "request %s: %s %s -> %d: %s",
        rid,
        method,
        path[:200],
        err.status,
        err.message[:500],
        extra={"request_id": rid, "status": err.status},
    )


def error_headers(rid: str, err: HTTPError, retry_after: bytes) -> list[tuple[bytes, bytes]]:
    """Raw ASGI headers of an error answer (for the infer route, which writes its own)."""
    h = [(b"content-type", b"application/json"), (b"x-request-id", rid.encode())]
    if err.retry_after:
        h.append((b"retry-after", retry_after))
    return h


def error_response(
    err: HTTPError, rid: str, method: str, path: str, retry_after: bytes
) -> Response:
    """A logged error answer as a Starlette response."""
    log_error(method, path, rid, err)
    headers = {"x-request-id": rid}
    if err.retry_after:
        headers["retry-after"] = retry_after.decode()
    return Response(
        encode_error(err.message), err.status, headers=headers, media_type="application/json"
    )
