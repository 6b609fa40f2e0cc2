"""A middleware for Ray's HTTP proxy: a request that gets no answer from a replica is answered
503 with ``Retry-After``, instead of the proxy's bare 500 or no answer at all.

Two ways a request routed to a replica ends unanswered:

- The replica dies with the request in flight (killed, out of memory, its node lost). Ray's
  proxy has no response to forward and returns from the request without starting one, and its
  HTTP server would answer 500.
- The proxy's router loses the request while it re-routes it away from a replica that died
  (seen with Ray 2.60 when a replica is killed under load: the request never reaches another
  replica and the client waits forever). Ray's own bound, ``http_options.request_timeout_s``, is
  off by default. This middleware bounds the wait for the start of an answer itself:
  ``INFERLINE_RAY_ANSWER_TIMEOUT_S`` seconds (default 120; ``0`` turns the bound off), after
  which the request is cancelled in the proxy and answered 503.

Either way the request may or may not have been computed, but it was not answered, and an
inference is safe to send again: 503 with ``Retry-After`` says so, as inferline's own server
does for every refusal. Responses the replica started are never touched, however long they
take to finish.

Install it in the proxy through Ray's callback variable, set where Ray starts (``serve run``,
``ray start`` or the process calling ``ray.init``), with the timeout beside it if the default
does not suit: ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=inferline.ray:proxy_middlewares``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..server.errors import encode_error

__all__ = ["ANSWER_TIMEOUT_ENV", "ReplicaLossAsUnavailable", "proxy_middlewares"]

log = logging.getLogger("inferline.ray")

RETRY_AFTER_S = 1
ANSWER_TIMEOUT_ENV = "INFERLINE_RAY_ANSWER_TIMEOUT_S"
DEFAULT_ANSWER_TIMEOUT_S = 120.0


class ReplicaLossAsUnavailable:
    """ASGI middleware: an HTTP request that ends without a response, or whose response has
    not started within ``answer_timeout_s`` (``None``: no bound), is answered 503 with
    ``Retry-After`` and ``{"error": ...}`` (see the module's docs)."""

    def __init__(
        self,
        app: ASGIApp,
        retry_after_s: int = RETRY_AFTER_S,
        answer_timeout_s: float | None = DEFAULT_ANSWER_TIMEOUT_S,
    ) -> None:
        if answer_timeout_s is not None and not answer_timeout_s > 0:
            raise ValueError(
                f"answer_timeout_s must be a positive number of seconds or None, "
                f"got {answer_timeout_s!r}"
            )
        self.app = app
        self.retry_after = str(max(0, int(retry_after_s))).encode()
        self.answer_timeout_s = answer_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        if self.answer_timeout_s is None:
            await self.app(scope, receive, watching_send)
            timed_out = False
        else:
            timed_out = await self._run_bounded(scope, receive, watching_send, started)
        if started.is_set():
            return
        path = str(scope.get("path", ""))[:200]
        if timed_out:
            log.warning("no answer for %s within %gs; answering 503", path, self.answer_timeout_s)
            message = (
                f"no replica answered {path} within {self.answer_timeout_s:g}s; retry the request"
            )
        else:
            log.warning("no answer from the replica for %s; answering 503", path)
            message = f"the replica serving {path} stopped before answering; retry the request"
        body = encode_error(message)
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

    async def _run_bounded(
        self, scope: Scope, receive: Receive, send: Send, started: asyncio.Event
    ) -> bool:
        """Runs the proxy's handling of the request until it returns, or until no response
        has started after ``answer_timeout_s``; then cancels it (the proxy cancels the
        request in its router) and says True."""
        handling = asyncio.ensure_future(self.app(scope, receive, send))
        start = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait(
                (handling, start),
                timeout=self.answer_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not handling.done() and not started.is_set():
                handling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handling
                return not started.is_set()
            # Answered or answering: the rest of the response streams without a bound.
            await handling
            return False
        except asyncio.CancelledError:
            handling.cancel()
            raise
        finally:
            start.cancel()


def _answer_timeout_from_env() -> float | None:
    raw = os.environ.get(ANSWER_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_ANSWER_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(
            f"{ANSWER_TIMEOUT_ENV} must be a number of seconds (0 for no bound), got {raw!r}"
        ) from None
    if value < 0 or value != value:
        raise ValueError(f"{ANSWER_TIMEOUT_ENV} must be >= 0 seconds, got {raw!r}")
    return value or None


def proxy_middlewares() -> list[Any]:
    """The middlewares for ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``; reads
    ``INFERLINE_RAY_ANSWER_TIMEOUT_S``."""
    return [Middleware(ReplicaLossAsUnavailable, answer_timeout_s=_answer_timeout_from_env())]
