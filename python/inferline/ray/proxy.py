"""A middleware for Ray's HTTP proxy: a request whose replica died before answering gets 503
with ``Retry-After`` instead of the proxy's bare 500.

When a replica dies with requests in flight (killed, out of memory, its node lost), Ray's
proxy has no response to forward and returns from the request without starting one, and its
HTTP server answers 500. The request may or may not have been computed, but it was not
answered, and an inference is safe to send again: 503 with ``Retry-After`` says so, as
inferline's own server does for every refusal. Responses the replica started are never
touched.

Install it in the proxy through Ray's callback variable, set where Ray starts (``serve run``,
``ray start`` or the process calling ``ray.init``):
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=inferline.ray:proxy_middlewares``.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..server.errors import encode_error

__all__ = ["ReplicaLossAsUnavailable", "proxy_middlewares"]

log = logging.getLogger("inferline.ray")

RETRY_AFTER_S = 1


class ReplicaLossAsUnavailable:
    """ASGI middleware: an HTTP request that ends without a response is answered 503 with
    ``Retry-After`` and ``{"error": ...}`` (see the module's docs)."""

    def __init__(self, app: ASGIApp, retry_after_s: int = RETRY_AFTER_S) -> None:
        self.app = app
        self.retry_after = str(max(0, int(retry_after_s))).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, receive, watching_send)
        if started:
            return
        path = str(scope.get("path", ""))[:200]
        log.warning("no answer from the replica for %s; answering 503", path)
        body = encode_error(
            f"the replica serving {path} stopped before answering; retry the request"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", self.retry_after),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list[Any]:
    """The middlewares for ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``."""
    return [Middleware(ReplicaLossAsUnavailable)]
