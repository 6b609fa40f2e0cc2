"""Overload refused in the HTTP protocol: an infer request that arrives while the server holds
``max_in_flight`` requests is answered 503 as soon as its headers are parsed.

Under 10x overload most requests are refused, and through ASGI each refusal still costs a
scope, a request cycle, a task and two ``send`` calls. :func:`refusing_protocol` gives a
subclass of uvicorn's httptools protocol (passed as ``uvicorn.Config(http=...)``) that writes
the same answer as :func:`overload_refusal` gives the app's own shortcut straight to the
transport: same status, body, ``Retry-After``, ``X-Request-ID`` and uvicorn's default headers
(``date``), counted under the same outcome. The request's body, whatever chunks it comes in,
is dropped as the parser reads it, and the connection stays usable: the next request on it
is parsed and served as usual.

Anything unusual goes the ordinary way (uvicorn builds the cycle and the app answers, with
the same refusal when it still applies): an earlier request on the connection not answered
yet (pipelining), a write buffer the client is not draining, an upgrade, an access log, a
path with ``%`` escapes or in absolute form, user middleware on the app, tracing, draining.
A refused request that announced ``Expect: 100-continue`` (whose body may never come), or
whose client did not ask to keep the connection, has it closed after the 503.

This subclasses uvicorn internals that are not a public API: ``HttpToolsProtocol``'s parser
callbacks (``on_message_begin``, ``on_headers_complete``, ``on_body``,
``on_message_complete``), its attributes ``parser``, ``url``, ``headers``, ``cycle``,
``pipeline``, ``flow``, ``transport``, ``access_log``, ``expect_100_continue``,
``server_state.default_headers`` and its ``on_response_complete()``. :data:`REQUIRED`
lists them; :func:`refusing_protocol` checks them and falls back to uvicorn's own protocol
(with a warning) when uvicorn changes, and the tests fail loudly in that case.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .errors import HTTPError, log_error

if TYPE_CHECKING:
    from .infer import InferRoute

__all__ = [
    "INFER_PATH",
    "REQUIRED",
    "REQUIRED_ATTRIBUTES",
    "RefusingHttpToolsProtocol",
    "missing_uvicorn_hooks",
    "overload_refusal",
    "refusing_protocol",
]

log = logging.getLogger("inferline.server")

#: The infer route's path: ``/v2/models/{model}[/versions/{version}]/infer``.
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")

#: What the protocol uses of uvicorn's ``HttpToolsProtocol``: methods (with their
#: parameters after ``self``), checked by :func:`missing_uvicorn_hooks` ...
REQUIRED: dict[str, tuple[str, ...]] = {
    "on_message_begin": (),
    "on_headers_complete": (),
    "on_body": ("body",),
    "on_message_complete": (),
    "on_response_complete": (),
}
#: ... and attributes of a connected instance (``flow.write_paused`` and
#: ``server_state.default_headers`` too), checked by the tests on a live connection.
REQUIRED_ATTRIBUTES = (
    "parser",
    "url",
    "headers",
    "cycle",
    "pipeline",
    "flow",
    "transport",
    "access_log",
    "expect_100_continue",
    "server_state",
)

_STATUS_LINE = b"HTTP/1.1 503 Service Unavailable\r\n"


def overload_refusal(
    route: InferRoute, name: str, headers: list[tuple[bytes, bytes]], path: str
) -> tuple[HTTPError, bytes, str] | None:
    """The 503 for an infer request of model ``name`` that arrives while the server holds
    ``max_in_flight`` requests, its encoded body and the request's id, counted as the route
    counts a refusal; None when the request is to be let in (or the route must answer it
    itself: while draining, or when requests are traced).

    The error and its body are built once per in-flight count (:meth:`.Admission.refusal`)
    and the model's label comes from a cache, so the refusal that overload makes most of
    costs little.
    """
    if route.state.draining or route._tracing is not None:
        return None
    refusal = route.admission.refusal()
    if refusal is None:
        return None
    err, body = refusal
    rid = route.request_id(headers)
    if log.isEnabledFor(logging.DEBUG):
        log_error("POST", path, rid, err)
    route.outcomes.refused(route.admission.served_label(name), err, rid)
    return err, body, rid


def missing_uvicorn_hooks() -> list[str]:
    """What :data:`REQUIRED` names that uvicorn's ``HttpToolsProtocol`` lacks or takes
    differently, or a constructor that changed (empty when the subclass is safe to use)."""
    missing = []
    for method, params in REQUIRED.items():
        fn = getattr(HttpToolsProtocol, method, None)
        if fn is None or tuple(inspect.signature(fn).parameters)[1:] != params:
            missing.append(f"HttpToolsProtocol.{method}({', '.join(params)})")
    init = tuple(inspect.signature(HttpToolsProtocol.__init__).parameters)[1:4]
    if init != ("config", "server_state", "app_state"):
        missing.append("HttpToolsProtocol(config, server_state, app_state)")
    return missing


def refusing_protocol(app: Any) -> type[RefusingHttpToolsProtocol] | None:
    """The protocol class for ``uvicorn.Config(http=...)`` that refuses ``app``'s overload as
    soon as the headers arrive; None (use uvicorn's own) when ``app`` has no infer route
    (``app.infer_handler``, as :func:`.create_app` builds it) or when uvicorn's protocol is
    not the one this was written against (logged)."""
    route: InferRoute | None = getattr(app, "infer_handler", None)
    if route is None:
        return None
    missing = missing_uvicorn_hooks()
    if missing:
        log.warning(
            "uvicorn's HttpToolsProtocol changed (%s): overload is refused by the app instead",
            ", ".join(missing),
        )
        return None
    return type(
        "RefusingHttpToolsProtocol", (RefusingHttpToolsProtocol,), {"app_": app, "route_": route}
    )


class RefusingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering infer requests 503 when their headers arrive
    while the server holds ``max_in_flight`` requests. :func:`refusing_protocol` makes the
    subclass bound to an app; only the event loop's thread uses a protocol."""

    app_: Any  # the Starlette app (its user_middleware)
    route_: InferRoute  # its infer route (admission, outcomes, ids, Retry-After)
    # From a refused request's headers to its end its body is dropped; then the connection
    # is closed when the client did not ask to keep it.
    _discarding = False
    _close_at_end = False

    def on_message_begin(self) -> None:
        self._discarding = False
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if not self._refuse():
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._discarding:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._discarding:
            super().on_message_complete()
            return
        # The refused request is read to its end: count it, arm keep-alive (or close).
        self._discarding = False
        if self._close_at_end:
            self.transport.close()
        self.on_response_complete()

    def _refuse(self) -> bool:
        """Writes the 503 and returns True when this request is refused here."""
        route = self.route_
        if (
            self.parser.get_method() != b"POST"
            or route.admission.refusal() is None  # the common case: let in, at this cost
            or self.app_.user_middleware
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.pipeline
            or self.flow.write_paused
            or self.transport.is_closing()
            or self.access_log
            or self.parser.should_upgrade()
        ):
            return False
        url: bytes = self.url
        raw_path = url.partition(b"?")[0]
        if not raw_path.startswith(b"/") or b"%" in raw_path or not raw_path.isascii():
            return False
        path = raw_path.decode("ascii")
        match = INFER_PATH.fullmatch(path)
        if match is None:
            return False
        refused = overload_refusal(route, match.group(1), self.headers, path)
        if refused is None:
            return False
        _, body, rid = refused
        # Expect: 100-continue: the client may withhold the body it announced, so the
        # connection is closed at once rather than waiting for it.
        expecting = self.expect_100_continue
        keep_alive = (
            not expecting
            and self.parser.get_http_version() == "1.1"
            and self.parser.should_keep_alive()
        )
        head = [_STATUS_LINE]
        for k, v in self.server_state.default_headers:
            head += [k, b": ", v, b"\r\n"]
        head += [
            b"content-type: application/json\r\nx-request-id: ",
            rid.encode(),
            b"\r\nretry-after: ",
            route.retry_after,
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n\r\n" if keep_alive else b"\r\nconnection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        self._discarding = True
        self._close_at_end = not keep_alive
        if expecting:
            self.transport.close()
        return True
