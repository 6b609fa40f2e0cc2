"""The Open Inference Protocol (KServe v2 REST) as a Starlette app over an inferline Engine.

Routes (``{v}`` is a version number or an alias): ``POST /v2/models/{m}[/versions/{v}]/infer``
(JSON or binary tensor data; :mod:`.infer`), and health, metadata, configuration, Triton's
statistics, repository control and ``/metrics`` (:mod:`.admin`). Errors and their statuses
are in :mod:`.errors`. Every response carries ``X-Request-ID`` (the client's, when it sent a
sane one).

This module builds the app: the route table, the lifespan that starts and stops the engine,
the handlers of unknown routes and unhandled errors, and a shortcut that sends the infer
route's requests past Starlette's router.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .admin import AdminRoutes
from .admission import DEFAULT_MAX_BODY_BYTES_IN_FLIGHT, DEFAULT_MAX_ROWS_PER_REQUEST, Admission
from .errors import encode_error
from .fast_refusal import INFER_PATH, overload_refusal
from .infer import InferRoute
from .outcomes import Outcomes
from .requests import RequestIds
from .state import ServerState

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_BODY_BYTES_IN_FLIGHT",
    "DEFAULT_MAX_JSON_BYTES",
    "DEFAULT_MAX_ROWS_PER_REQUEST",
    "ServerState",
    "create_app",
]

log = logging.getLogger("inferline.server")

DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_MAX_JSON_BYTES = 16 << 20


def create_app(
    engine: Any,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    retry_after_s: int = 1,
    server_name: str = "inferline",
    drain_timeout: float = 30.0,
    manage_engine: bool = True,
    state: ServerState | None = None,
    disconnect_check_delay_s: float = 0.005,
    max_in_flight: int | None = None,
    max_body_bytes_in_flight: int = DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
    max_rows_per_request: int = DEFAULT_MAX_ROWS_PER_REQUEST,
    log_interval_s: float = 10.0,
    repository_api: bool = True,
    strict_readiness: bool = False,
) -> Starlette:
    """A Starlette app serving ``engine`` over the Open Inference Protocol (KServe v2 REST).

    ``max_body_bytes`` bounds a request body (after decompression), ``max_json_bytes`` its
    JSON part (JSON tensors cost about ten times their size to parse; binary data does not):
    larger requests get 413. ``retry_after_s`` is the ``Retry-After`` of 503 answers.

    With ``manage_engine`` (the default) the app's lifespan starts an engine that has not been
    started and stops it (draining up to ``drain_timeout`` seconds) at shutdown. Mounted inside
    another Starlette or FastAPI app, the sub-app's lifespan does not run: start and stop the
    engine in the host app's lifespan instead. ``state`` lets ``serve`` share the draining
    flag and in-flight count; the app's is also at ``app.state.inferline``.

    A client that disconnects has its queued work cancelled; the server starts watching for
    the disconnect once a request has taken ``disconnect_check_delay_s`` (default 5 ms; 0
    watches from the start, at a cost of several microseconds of event-loop time per request).

    Admission (:mod:`.admission`): beyond ``max_in_flight`` inference requests in the
    server (default: what the served models' queues hold, at least two batches each) a request is
    answered 503 before its body is read; beyond ``max_body_bytes_in_flight`` bytes of
    request bodies held at once, 503; a request of more than ``max_rows_per_request`` rows,
    413. Refusals, timeouts and disconnects are counted in
    ``inferline_http_requests_total{model,outcome}`` and summarised in the log once every
    ``log_interval_s`` seconds (:mod:`.outcomes`). ``repository_api=False`` turns the
    repository load and unload routes off (403).

    ``/v2/health/ready`` counts only the models that loaded (one broken model leaves the
    others' server ready, and ``/v2/repository/index`` says why it is UNAVAILABLE);
    ``strict_readiness=True`` requires every model to serve. Either way a not-ready answer
    is 400, the protocol's "false", with ``{"error": why}``.
    """
    state = state or ServerState()
    ids = RequestIds()
    retry_after = str(max(0, int(retry_after_s))).encode()
    admission = Admission(
        engine,
        max_in_flight=max_in_flight,
        max_body_bytes_in_flight=max_body_bytes_in_flight,
        max_rows_per_request=max_rows_per_request,
    )
    outcomes = Outcomes(log_interval_s)
    infer = InferRoute(
        engine,
        state=state,
        request_ids=ids,
        admission=admission,
        outcomes=outcomes,
        max_body_bytes=max_body_bytes,
        max_json_bytes=max_json_bytes,
        retry_after=retry_after,
        disconnect_check_delay_s=disconnect_check_delay_s,
    )
    a = AdminRoutes(
        engine,
        state=state,
        request_ids=ids,
        retry_after=retry_after,
        server_name=server_name,
        last_inference=infer.last_inference,
        outcomes=outcomes,
        repository_api=repository_api,
        strict_readiness=strict_readiness,
    )
    m = "/v2/models/{model}"
    mv = "/v2/models/{model}/versions/{version}"
    routes = [
        Route(m + "/infer", infer, methods=["POST"]),
        Route(mv + "/infer", infer, methods=["POST"]),
        Route("/v2/health/live", a.live, methods=["GET"]),
        Route("/v2/health/ready", a.ready, methods=["GET"]),
        Route("/v2", a.server_metadata, methods=["GET"]),
        Route("/v2/models/stats", a.model_stats, methods=["GET"]),
        Route(m + "/stats", a.model_stats, methods=["GET"]),
        Route(mv + "/stats", a.model_stats, methods=["GET"]),
        Route(m + "/ready", a.model_ready, methods=["GET"]),
        Route(mv + "/ready", a.model_ready, methods=["GET"]),
        Route(m + "/config", a.model_config, methods=["GET"]),
        Route(mv + "/config", a.model_config, methods=["GET"]),
        Route(m, a.model_metadata, methods=["GET"]),
        Route(mv, a.model_metadata, methods=["GET"]),
        Route("/v2/repository/index", a.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", a.repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", a.repository_unload, methods=["POST"]),
        Route("/metrics", a.metrics, methods=["GET"]),
    ]
    lifespan = _lifespan(
        engine, state, outcomes, manage_engine=manage_engine, drain_timeout=drain_timeout
    )
    app = _InferlineStarlette(routes=routes, lifespan=lifespan)
    app.infer_handler = infer
    app.admin_routes = a
    app.state.inferline = state
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _not_allowed)
    app.add_exception_handler(Exception, _internal_error)
    return app


def _lifespan(
    engine: Any,
    state: ServerState,
    outcomes: Outcomes,
    *,
    manage_engine: bool,
    drain_timeout: float,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """Starts the engine if it was not started (and ``manage_engine``) and the log summary;
    at shutdown turns readiness false and stops the engine it started, draining up to
    ``drain_timeout``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started = False
        if manage_engine and engine.state == "created":
            await engine.start()
            started = True
        summary = asyncio.get_running_loop().create_task(outcomes.run())
        try:
            yield
        finally:
            state.not_ready = True
            try:
                if started and engine.state != "stopped":
                    await engine.stop(drain_timeout=drain_timeout)
            finally:
                summary.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await summary

    return lifespan


class _InferlineStarlette(Starlette):
    """Starlette with a shortcut for the hot route.

    ``POST .../infer`` goes straight to the infer handler, skipping the router and the
    exception middlewares (the handler answers every error itself), which saves several
    microseconds per request on the event loop. Anything else, and everything once user
    middleware is added, goes through Starlette as usual.
    """

    infer_handler: InferRoute | None = None
    # The gRPC server (.grpc) answers with the same route objects: one admission, one count.
    admin_routes: AdminRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and self.infer_handler is not None
            and not self.user_middleware
        ):
            match = INFER_PATH.fullmatch(_route_path(scope))
            if match is not None:
                refusal = _overloaded_answer(self.infer_handler, match.group(1), scope)
                if refusal is not None:
                    await send(refusal[0])
                    await send(refusal[1])
                    return
                scope["app"] = self
                params = {"model": match.group(1)}
                if match.group(2) is not None:
                    params["version"] = match.group(2)
                scope["path_params"] = params
                await self.infer_handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _overloaded_answer(
    route: InferRoute, name: str, scope: Scope
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The ASGI messages of the 503 (with Retry-After and the JSON error) for an infer
    request that arrives while the server holds ``max_in_flight`` requests, else None
    (:func:`.fast_refusal.overload_refusal`; under ``serve`` the HTTP protocol answers most
    of them before they reach the app)."""
    refused = overload_refusal(route, name, scope["headers"], scope.get("path", ""))
    if refused is None:
        return None
    _, body, rid = refused
    headers = [
        (b"content-type", b"application/json"),
        (b"x-request-id", rid.encode()),
        (b"retry-after", route.retry_after),
        (b"content-length", str(len(body)).encode()),
    ]
    start = {"type": "http.response.start", "status": 503, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (``root_path``), as Starlette's router sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


async def _not_found(request: Request, exc: Exception) -> Response:
    return Response(
        encode_error(f"no route for {request.method} {request.url.path[:200]}"),
        404,
        media_type="application/json",
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    allow = (getattr(exc, "headers", None) or {}).get("Allow", "")
    message = f"method {request.method} is not allowed on {request.url.path[:200]}"
    if allow:
        message += f"; use {' or '.join(m.strip() for m in allow.split(','))}"
    headers = {"allow": allow} if allow else None
    return Response(encode_error(message), 405, headers=headers, media_type="application/json")


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path[:200])
    return Response(
        encode_error(f"internal error: {type(exc).__name__}"), 500, media_type="application/json"
    )
