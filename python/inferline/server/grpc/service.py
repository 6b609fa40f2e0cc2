"""The Open Inference Protocol over gRPC: Triton's ``inference.GRPCInferenceService`` on
``grpc.aio``, answering with the HTTP app's own parts.

ModelStreamInfer (a bidirectional stream of ModelInfer requests, answered as they complete,
a refusal as the answer's ``error_message``) is in :mod:`.stream`.

The handlers share the HTTP app's admission (one in-flight bound for both transports), its
request checks, its engine call, its outcome counts and its statistics; only the message
forms differ (:mod:`.tensors`). Errors carry the HTTP path's messages with these codes:

=====================================  =========================================================
HTTP                                   gRPC
=====================================  =========================================================
400 bad request, 413 too many rows     INVALID_ARGUMENT
403 repository API off                 PERMISSION_DENIED
404 unknown model or version           NOT_FOUND
503 queue full, not ready, draining    UNAVAILABLE, trailing metadata ``retry-after`` (seconds)
504 the request's timeout passed       DEADLINE_EXCEEDED
500 the model failed (or a bug)        INTERNAL
=====================================  =========================================================

A call's gRPC deadline is its request's timeout: the engine call is submitted with the
smaller of the time the deadline leaves and the ``timeout`` parameter, so the core drops an
item still queued when the client gives up, and the RPC ends DEADLINE_EXCEEDED. An RPC that
the client cancels has its handler cancelled, which cancels the engine call: queued work is
dropped. Messages are bounded by the server's body limit (``max_body_bytes``) both ways; a
larger one is refused by gRPC itself (RESOURCE_EXHAUSTED).

The parameters a model's stages report (``{"truncated": true}``) go in the response's
``parameters`` map, as over HTTP. Answers are counted under
``inferline_grpc_requests_total{model,outcome}`` with the HTTP counter's outcome names
(``timeout``: the ``timeout`` parameter or the call's deadline passed; ``disconnected``:
the client cancelled), apart from ``inferline_http_requests_total``; the
in-flight bound is the HTTP app's, shared.

The service is registered by hand under the protocol's name with generic handlers: our
generated messages live in the ``inferline.v2`` proto package so that they never collide with
tritonclient's ``inference`` package in one process, and method paths are all the wire sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from ...observability import traced_rpc
from ..admin import AdminRoutes, model_config_doc, model_metadata_doc
from ..errors import HTTPError, ProtocolError
from ..infer import InferRoute
from ..outcomes import Outcomes
from ..protocol import InferRequest
from ..requests import version_arg
from . import kserve_v2_pb2 as pb
from .stream import model_stream_infer
from .tensors import encode_response, raw_request, request_header

__all__ = ["SERVICE_NAME", "InferenceService", "deadline_timeout", "start_grpc_server"]

log = logging.getLogger("inferline.server")

#: The service's name on the wire (method paths are ``/inference.GRPCInferenceService/M``).
SERVICE_NAME = "inference.GRPCInferenceService"

_CODE = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

_Handler = Callable[[Any, Any], Awaitable[Any]]


def deadline_timeout(req: InferRequest, remaining: float | None) -> None:
    """Sets ``req``'s timeout to the smaller of its ``timeout`` parameter and ``remaining``,
    the seconds the call's gRPC deadline leaves (``None``: no deadline). Raises a 504
    :class:`HTTPError` when the deadline has passed already."""
    if remaining is None:
        return
    us = int(remaining * 1_000_000)
    if us < 1:
        raise HTTPError(504, "the call's deadline passed before the request reached the model")
    if not req.timeout_us or us < req.timeout_us:
        req.timeout_us = us


class InferenceService:
    """The RPCs, over the HTTP app's infer route and admin routes; ``outcomes`` counts the
    inference answers (a new :class:`~..outcomes.Outcomes` with the HTTP one's log interval
    when not given)."""

    def __init__(
        self, route: InferRoute, admin: AdminRoutes, outcomes: Outcomes | None = None
    ) -> None:
        self.route = route
        self.admin = admin
        self.outcomes = outcomes or Outcomes(route.outcomes.interval_s, transport="grpc")
        self.retry_after = route.retry_after.decode()
        self.summary: asyncio.Task[None] | None = None  # set by start_grpc_server
        # OpenTelemetry: a serialise span around the encoding when the engine traces.
        tracing = getattr(route.engine, "_tracing", None)
        self._encode = encode_response if tracing is None else tracing.encoder(encode_response)

    async def _abort(self, context: Any, err: HTTPError) -> None:
        """Ends the RPC with the error's code and message (raises)."""
        code = _CODE.get(err.status, grpc.StatusCode.INTERNAL)
        meta = (("retry-after", self.retry_after),) if err.retry_after else ()
        await context.abort(code, err.message, trailing_metadata=meta)

    # -- inference ---------------------------------------------------------------------------
    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        """One inference request, checked, admitted and computed as over HTTP."""
        try:
            return await self.infer_one(request, context)
        except HTTPError as e:
            await self._abort(context, e)

    async def infer_one(
        self,
        request: pb.ModelInferRequest,
        context: Any,
        into: pb.ModelInferResponse | None = None,
    ) -> pb.ModelInferResponse:
        """The answer to one request (of a ModelInfer call or a ModelStreamInfer stream),
        counted under the outcomes; raises the counted :class:`HTTPError` that refuses it
        (500 for a bug), or ``CancelledError`` when the call is cancelled (the engine drops
        the work). ``context``: the call's, for its deadline. ``into``: an empty message to
        write the answer into (see :func:`.tensors.encode_response`)."""
        route = self.route
        outcomes = self.outcomes
        admission = route.admission
        name = request.model_name
        label = ""  # the model's name once the engine has said it serves it
        entered = False
        reserved = 0
        try:
            try:
                route.admit()
                entered = True
                version = version_arg(request.model_version)
                info = route.lookup(name, version)
                label = name
                size = request.ByteSize()
                admission.reserve_body(size)  # 503 past max_body_bytes_in_flight
                reserved = size
                plain = raw_request(request, info)
                if plain is not None and plain[1] <= info.max_queue_size:
                    req, rows = plain
                    admission.check_rows(info.name, rows)  # what route.check has left
                    raw = True
                else:  # the full checks, and their messages
                    header, tail, raw = request_header(request)
                    route.check(info, header)
                    req = header.tensors(tail)
                deadline_timeout(req, context.time_remaining())
                params: dict[str, Any] = {}  # what a model's stages report, e.g. truncated
                outputs, datatypes = await route.compute(
                    name, version, info, req, parameters=params
                )
                response: pb.ModelInferResponse = self._encode(
                    name,
                    info.version,
                    req,
                    outputs,
                    datatypes,
                    raw=raw,
                    parameters=params,
                    into=into,
                )
                outcomes.success(name)
                return response
            except ProtocolError as e:
                raise HTTPError(e.status, e.message) from None
        except HTTPError as e:
            outcomes.refused(label or route.label(name), e, self._request_id(request))
            raise
        except asyncio.CancelledError:  # the client gave up: the engine dropped the work
            rid = self._request_id(request)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:  # at its deadline: counted as a 504
                outcomes.refused(label, HTTPError(504, "the call's deadline passed"), rid)
            else:
                outcomes.disconnected(label, rid)
            raise
        except Exception as e:  # a bug: answer INTERNAL and keep serving
            rid = self._request_id(request)
            log.exception("request %s: unhandled error in gRPC ModelInfer", rid)
            err = HTTPError(500, f"internal error: {type(e).__name__}")
            outcomes.refused(label, err, rid)
            raise err from None
        finally:
            if entered:
                admission.leave()
            admission.release_body(reserved)

    def _request_id(self, request: pb.ModelInferRequest) -> str:
        """The request's id for the log: its ``id`` when sane, else a new one. Only the
        answers that are logged need one, so only they make one."""
        return self.route.request_id([(b"x-request-id", request.id.encode())] if request.id else [])

    async def model_stream_infer(self, requests: Any, context: Any) -> None:
        """A stream of inference requests, each as a ModelInfer call, answered as they
        complete (see :mod:`.stream`)."""
        await model_stream_infer(self, requests, context)

    # -- health and metadata -----------------------------------------------------------------
    async def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.admin.readiness() is None)

    async def model_ready(self, request: Any, context: Any) -> Any:
        try:
            why = self.admin.model_readiness(request.name, request.version or None)
        except HTTPError as e:
            await self._abort(context, e)
        return pb.ModelReadyResponse(ready=why is None)

    async def server_metadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(**self.admin.server_metadata_doc())

    async def _info(self, request: Any, context: Any) -> Any:
        """The info of the model version the request names (or ends the RPC)."""
        try:
            return self.admin.info(request.name, request.version or None)
        except HTTPError as e:
            await self._abort(context, e)

    async def model_metadata(self, request: Any, context: Any) -> Any:
        info = await self._info(request, context)
        return pb.ModelMetadataResponse(**model_metadata_doc(info))

    async def model_config(self, request: Any, context: Any) -> Any:
        info = await self._info(request, context)
        doc = model_config_doc(info)
        for t in (*doc["input"], *doc["output"]):
            t["data_type"] = pb.DataType.Value(t["data_type"])
        doc["dynamic_batching"] = {"priority_levels": info.priority_levels}
        doc["version_policy"] = {"specific": {"versions": [int(v) for v in info.versions]}}
        return pb.ModelConfigResponse(config=pb.ModelConfig(**doc))

    # -- statistics and repository -------------------------------------------------------------
    async def model_statistics(self, request: Any, context: Any) -> Any:
        try:
            stats = self.admin.stats(request.name or None, request.version or None)
        except HTTPError as e:
            await self._abort(context, e)
        known = set(pb.ModelStatistics.DESCRIPTOR.fields_by_name)
        return pb.ModelStatisticsResponse(
            model_stats=[
                pb.ModelStatistics(**{k: v for k, v in s.items() if k in known}) for s in stats
            ]
        )

    async def repository_index(self, request: Any, context: Any) -> Any:
        models = self.admin.index(request.ready)
        return pb.RepositoryIndexResponse(models=models)

    async def repository_model_load(self, request: Any, context: Any) -> Any:
        await self._control(request, context, "load")
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: Any, context: Any) -> Any:
        await self._control(request, context, "unload")
        return pb.RepositoryModelUnloadResponse()

    async def _control(self, request: Any, context: Any, action: str) -> None:
        params = {}
        for key, p in request.parameters.items():
            which = p.WhichOneof("parameter_choice")
            params[key] = None if which is None else getattr(p, which)
        try:
            await self.admin.control(request.model_name, action, params)
        except HTTPError as e:
            await self._abort(context, e)

    # -- registration ----------------------------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        """The service's generic handler, under :data:`SERVICE_NAME`."""
        methods: dict[str, tuple[_Handler, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            # OpenTelemetry: the RPC's server span when the engine traces, else model_infer.
            "ModelInfer": (
                traced_rpc(self.route.engine, f"{SERVICE_NAME}/ModelInfer", self.model_infer),
                pb.ModelInferRequest,
            ),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.repository_model_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (
                self.repository_model_unload,
                pb.RepositoryModelUnloadRequest,
            ),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=message.FromString,
                response_serializer=_serialize,
            )
            for name, (fn, message) in methods.items()
        }
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer,
            request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=_serialize,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


async def start_grpc_server(app: Any, host: str, port: int) -> tuple[Any, int]:
    """Starts a ``grpc.aio`` server for ``app`` (from :func:`..app.create_app`) on the
    running loop, bound to ``host:port`` (0: any free port); returns it and its port.

    Messages are bounded by the app's ``max_body_bytes`` both ways. The answers are counted
    apart from HTTP's and exported on the app's ``/metrics`` (``admin.grpc_outcomes``), with
    a log summary per interval until the server stops. Stop it with
    ``await server.stop(grace)``.
    """
    route = app.infer_handler
    admin = app.admin_routes
    if route is None or admin is None:
        raise ValueError("app must come from inferline.server.create_app")
    limit = route.max_body_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # A second server on the same port must fail, not share it silently.
            ("grpc.so_reuseport", 0),
        ]
    )
    service = InferenceService(route, admin)
    server.add_generic_rpc_handlers((service.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise OSError(f"gRPC could not bind {address}: {e}") from None
    if not bound:
        raise OSError(f"gRPC could not bind {address}")
    await server.start()
    admin.grpc_outcomes = service.outcomes
    # Held by the service, which the server holds: a task nobody references may be collected.
    service.summary = asyncio.get_running_loop().create_task(_summarise(server, service.outcomes))
    return server, int(bound)


async def _summarise(server: Any, outcomes: Outcomes) -> None:
    """The outcomes' log summary every interval while ``server`` runs, and a last one."""
    summary = asyncio.ensure_future(outcomes.run())
    try:
        await server.wait_for_termination()
    finally:
        summary.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await summary
