"""The Open Inference Protocol (KServe v2 REST) as a Starlette app over an inferline Engine.

Routes (``{v}`` is a version number or an alias):

* ``GET  /v2/health/live``, ``/v2/health/ready``: 200 or 400 (the protocol's "false"), no body
* ``GET  /v2``: server metadata and extensions
* ``GET  /v2/models/{m}[/versions/{v}]``: model metadata; ``.../ready``; ``.../config``
* ``POST /v2/models/{m}[/versions/{v}]/infer``: JSON or binary tensor data
* ``GET  /v2/models[/{m}[/versions/{v}]]/stats``: Triton's statistics extension
* ``POST /v2/repository/index``, ``/v2/repository/models/{m}/load``, ``.../unload``
* ``GET  /metrics``: Prometheus text format

Errors are ``{"error": "..."}`` with 400 (bad request), 404 (unknown model or version), 413
(body too large), 415 (unsupported Content-Encoding), 503 + ``Retry-After`` (queue full, model
not ready, server draining), 504 (deadline passed) and 500 only when the model itself fails.
Every response carries ``X-Request-ID`` (the client's, when it sent a sane one).

The infer route is a plain ASGI callable rather than a Starlette endpoint: it reads the body
with a bound, runs the engine call in a task that is cancelled when the client disconnects,
and writes the response itself. That keeps the per-request work on the event loop small.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import (
    DeadlineExceeded,
    EngineStopped,
    InferlineError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    QueueFullError,
)
from ..types import datatype_of
from .protocol import (
    InferRequest,
    ProtocolError,
    encode_error,
    encode_infer_response,
    parse_infer_request,
)

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_JSON_BYTES", "ServerState", "create_app"]

log = logging.getLogger("inferline.server")

DEFAULT_MAX_BODY_BYTES = 64 << 20
DEFAULT_MAX_JSON_BYTES = 16 << 20


EXTENSIONS = [
    "binary_tensor_data",
    "schedule_policy",
    "parameters",
    "statistics",
    "model_repository",
    "model_configuration",
]

# X-Request-ID values we echo: printable ASCII without separators that could break a log line.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


def _server_version() -> str:
    try:
        from importlib.metadata import version

        return version("inferline")
    except Exception:  # not installed (running from the source tree)
        return "0.0.0+source"


@dataclass
class ServerState:
    """Flags shared by the app and whoever runs it (``serve`` sets them on SIGTERM).

    ``not_ready`` turns readiness (``/v2/health/ready`` and per-model ``ready``) false while
    inference requests are still accepted: the grace period in which a load balancer notices.
    ``draining`` also makes new inference requests answer 503 with ``Retry-After`` at once.
    """

    not_ready: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return not (self.not_ready or self.draining)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, retry_after: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class _ClientGone(Exception):
    """The client disconnected; there is nobody to answer."""


def _engine_error(exc: Exception) -> _HTTPError:
    """HTTP status for an engine error (see the module docstring)."""
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, ModelNotFound):
        return _HTTPError(404, msg)
    if isinstance(exc, (QueueFullError, ModelNotReady, EngineStopped)):
        return _HTTPError(503, msg, retry_after=True)
    if isinstance(exc, DeadlineExceeded):
        return _HTTPError(504, msg)
    if isinstance(exc, InvalidInput):
        return _HTTPError(400, msg)
    if isinstance(exc, ModelError):
        return _HTTPError(500, msg)
    return _HTTPError(500, f"internal error: {type(exc).__name__}")


def _version_arg(raw: str | None) -> int | str | None:
    if raw is None or raw == "":
        return None
    if raw.isdigit() and raw.isascii() and len(raw) < 19:
        return int(raw)
    return raw


class _App:
    """Holds the engine and settings; its methods are the routes."""

    def __init__(
        self,
        engine: Any,
        *,
        max_body_bytes: int,
        max_json_bytes: int,
        retry_after_s: int,
        server_name: str,
        state: ServerState,
        drain_timeout: float,
        manage_engine: bool,
        disconnect_check_delay_s: float,
    ) -> None:
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
        if not isinstance(max_json_bytes, int) or max_json_bytes < 1:
            raise ValueError(f"max_json_bytes must be a positive int, got {max_json_bytes!r}")
        self.engine = engine
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = min(max_json_bytes, max_body_bytes)
        self.retry_after = str(max(0, int(retry_after_s))).encode()
        self.server_name = server_name
        self.state = state
        self.drain_timeout = drain_timeout
        self.manage_engine = manage_engine
        if not disconnect_check_delay_s >= 0:
            raise ValueError(
                f"disconnect_check_delay_s must be >= 0, got {disconnect_check_delay_s!r}"
            )
        self.disconnect_check_delay = float(disconnect_check_delay_s)
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._started_engine = False
        self.last_inference: dict[tuple[str, int], int] = {}

    # -- request ids and responses ----------------------------------------------------------
    def request_id(self, headers: list[tuple[bytes, bytes]]) -> str:
        for k, v in headers:
            if k == b"x-request-id":
                try:
                    text = v.decode("ascii")
                except UnicodeDecodeError:
                    break
                if _REQUEST_ID_RE.fullmatch(text):
                    return text
                break
        return f"{self._id_prefix}-{next(self._ids)}"

    def error_headers(self, rid: str, err: _HTTPError) -> list[tuple[bytes, bytes]]:
        h = [(b"content-type", b"application/json"), (b"x-request-id", rid.encode())]
        if err.retry_after:
            h.append((b"retry-after", self.retry_after))
        return h

    def json_response(
        self, request: Request, status: int, doc: Any, rid: str | None = None
    ) -> Response:
        rid = rid or self.request_id(request.scope["headers"])
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Response(body, status, headers={"x-request-id": rid}, media_type="application/json")

    def error_response(self, request: Request, err: _HTTPError, rid: str | None = None) -> Response:
        rid = rid or self.request_id(request.scope["headers"])
        self.log_error(request.method, request.url.path, rid, err)
        headers = {"x-request-id": rid}
        if err.retry_after:
            headers["retry-after"] = self.retry_after.decode()
        return Response(
            encode_error(err.message), err.status, headers=headers, media_type="application/json"
        )

    def empty(self, request: Request, status: int) -> Response:
        return Response(
            b"", status, headers={"x-request-id": self.request_id(request.scope["headers"])}
        )

    @staticmethod
    def log_error(method: str, path: str, rid: str, err: _HTTPError) -> None:
        level = logging.WARNING if err.status >= 500 else logging.INFO
        log.log(
            level,
            "request %s: %s %s -> %d: %s",
            rid,
            method,
            path[:200],
            err.status,
            err.message[:500],
            extra={"request_id": rid, "status": err.status},
        )

    # -- lifespan ------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.manage_engine and getattr(self.engine, "state", None) == "created":
            await self.engine.start()
            self._started_engine = True
        try:
            yield
        finally:
            self.state.not_ready = True
            if self._started_engine and getattr(self.engine, "state", None) != "stopped":
                await self.engine.stop(drain_timeout=self.drain_timeout)

    # -- health and metadata ------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return self.empty(request, 200)

    async def ready(self, request: Request) -> Response:
        ok = self.state.ready and bool(self.engine.ready)
        return self.empty(request, 200 if ok else 400)

    async def server_metadata(self, request: Request) -> Response:
        return self.json_response(
            request,
            200,
            {"name": self.server_name, "version": _server_version(), "extensions": EXTENSIONS},
        )

    def info(self, request: Request) -> Any:
        name = request.path_params["model"]
        version = _version_arg(request.path_params.get("version"))
        try:
            return self.engine.model_info(name, version)
        except ModelNotFound as e:
            raise _HTTPError(404, str(e)) from None
        except InferlineError as e:
            raise _engine_error(e) from None

    async def model_metadata(self, request: Request) -> Response:
        try:
            info = self.info(request)
        except _HTTPError as e:
            return self.error_response(request, e)
        return self.json_response(
            request,
            200,
            {
                "name": info.name,
                "versions": [str(v) for v in info.versions],
                "platform": info.platform,
                "inputs": [s.to_dict() for s in info.inputs],
                "outputs": [s.to_dict() for s in info.outputs],
            },
        )

    async def model_ready(self, request: Request) -> Response:
        try:
            info = self.info(request)
        except _HTTPError as e:
            return self.error_response(request, e)
        ok = info.state == "ready" and self.state.ready
        if request.path_params.get("version") is None:
            ok = ok and bool(getattr(info, "default", True))
        return self.empty(request, 200 if ok else 400)

    async def model_config(self, request: Request) -> Response:
        """A Triton-style model configuration, enough for tools such as perf_analyzer."""
        try:
            info = self.info(request)
        except _HTTPError as e:
            return self.error_response(request, e)

        def tensors(specs: list[Any]) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "data_type": "TYPE_" + _TRITON_TYPE.get(s.datatype, s.datatype),
                    "dims": list(s.shape),
                }
                for s in specs
            ]

        return self.json_response(
            request,
            200,
            {
                "name": info.name,
                "platform": info.platform,
                "backend": info.platform,
                "max_batch_size": info.max_batch_size,
                "input": tensors(info.inputs),
                "output": tensors(info.outputs),
                "dynamic_batching": {},
                "version_policy": {"specific": {"versions": [str(v) for v in info.versions]}},
            },
        )

    # -- statistics -----------------------------------------------------------------------------
    async def model_stats(self, request: Request) -> Response:
        name = request.path_params.get("model")
        version = _version_arg(request.path_params.get("version"))
        try:
            if name is None:
                infos = list(self.engine.models())
            elif version is None:
                infos = [i for i in self.engine.models() if i.name == name]
                if not infos:
                    self.engine.model_info(name)  # raises ModelNotFound with a good message
            else:
                infos = [self.engine.model_info(name, version)]
            stats = [
                _triton_stats(
                    i.name,
                    i.version,
                    self.engine.stats(i.name, i.version),
                    self.last_inference.get((i.name, i.version), 0),
                )
                for i in infos
            ]
        except ModelNotFound as e:
            return self.error_response(request, _HTTPError(404, str(e)))
        except InferlineError as e:
            return self.error_response(request, _engine_error(e))
        return self.json_response(request, 200, {"model_stats": stats})

    # -- repository ----------------------------------------------------------------------------
    async def _small_json(self, request: Request) -> dict[str, Any]:
        """Body of a control request: empty or a JSON object, at most 1 MiB."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > 1 << 20:
                raise _HTTPError(413, "request body is larger than 1 MiB")
        if not body.strip():
            return {}
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise _HTTPError(400, "request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise _HTTPError(400, "request body must be a JSON object")
        params = doc.get("parameters", {})
        if not isinstance(params, dict):
            raise _HTTPError(400, "'parameters' must be a JSON object")
        return doc

    async def repository_index(self, request: Request) -> Response:
        try:
            doc = await self._small_json(request)
            ready_only = doc.get("ready", False)
            if not isinstance(ready_only, bool):
                raise _HTTPError(400, "'ready' must be a boolean")
        except _HTTPError as e:
            return self.error_response(request, e)
        index_fn = getattr(self.engine, "repository_index", None)
        if index_fn is not None:
            entries = [dict(entry) for entry in index_fn()]
        else:
            entries = [
                {"name": i.name, "version": i.version, "state": i.state, "reason": i.reason}
                for i in self.engine.models()
            ]
        out = []
        for entry in entries:
            state = str(entry.get("state", "")).upper()
            if ready_only and state != "READY":
                continue
            item = {"name": entry["name"], "state": state, "reason": entry.get("reason") or ""}
            if entry.get("version") not in (None, ""):
                item["version"] = str(entry["version"])
            out.append(item)
        return self.json_response(request, 200, out)

    async def repository_load(self, request: Request) -> Response:
        return await self.repository_control(request, "load")

    async def repository_unload(self, request: Request) -> Response:
        return await self.repository_control(request, "unload")

    async def repository_control(self, request: Request, action: str) -> Response:
        name = request.path_params["model"]
        try:
            doc = await self._small_json(request)
            params = doc.get("parameters", {})
            version = params.get("version")
            if isinstance(version, str) and version.isdigit() and version.isascii():
                version = int(version)
            if version is not None and (type(version) is not int or version < 1):
                raise _HTTPError(400, "'version' parameter must be a positive integer")
            if "config" in params or any(str(k).startswith("file:") for k in params):
                raise _HTTPError(
                    400, "loading a model from a config or files in the request is not supported"
                )
            fn = getattr(self.engine, action, None)
            if fn is None:
                raise _HTTPError(400, f"this engine does not support {action}")
            try:
                await fn(name, version)
            except ModelNotFound as e:
                raise _HTTPError(404, str(e)) from None
            except EngineStopped as e:
                raise _HTTPError(503, str(e), retry_after=True) from None
            except InferlineError as e:  # the load failed (the old version keeps serving)
                raise _HTTPError(400, str(e) or type(e).__name__) from None
            except (ValueError, KeyError, OSError) as e:
                raise _HTTPError(400, f"{action} of model {name!r} failed: {e}") from None
        except _HTTPError as e:
            return self.error_response(request, e)
        return self.empty(request, 200)

    # -- metrics ---------------------------------------------------------------------------------
    async def metrics(self, request: Request) -> Response:
        body, content_type = _metrics_text(self.engine)
        return Response(body, 200, headers={"content-type": content_type})

    # -- inference (raw ASGI) --------------------------------------------------------------------
    async def infer(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        rid = self.request_id(headers)
        params = scope["path_params"]
        name: str = params["model"]
        version = _version_arg(params.get("version"))
        try:
            if self.state.draining:
                raise _HTTPError(503, "the server is draining and takes no new requests", True)
            body, header_length = await self._read_body(headers, receive)
            try:
                req = parse_infer_request(body, header_length, max_json_bytes=self.max_json_bytes)
            except ProtocolError as e:
                raise _HTTPError(e.status, e.message) from None
            status, out_headers, out_body = await self._infer(name, version, req, receive)
            out_headers.append((b"x-request-id", rid.encode()))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request %s: infer %s -> 200", rid, name, extra={"request_id": rid})
        except _HTTPError as e:
            self.log_error("POST", scope.get("path", ""), rid, e)
            status, out_headers, out_body = (
                e.status,
                self.error_headers(rid, e),
                encode_error(e.message),
            )
        except _ClientGone:
            log.info(
                "request %s: client disconnected; its queued work was cancelled",
                rid,
                extra={"request_id": rid},
            )
            return
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("request %s: unhandled error in infer", rid)
            err = _HTTPError(500, f"internal error: {type(e).__name__}")
            status, out_headers = 500, self.error_headers(rid, err)
            out_body = encode_error(err.message)
        out_headers.append((b"content-length", str(len(out_body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})

    async def _read_body(
        self, headers: list[tuple[bytes, bytes]], receive: Receive
    ) -> tuple[bytes, bytes | None]:
        limit = self.max_body_bytes
        header_length: bytes | None = None
        encoding = b""
        for k, v in headers:
            if k == b"content-length":
                if not v.strip().isdigit():
                    raise _HTTPError(400, "Content-Length is not a number")
                if int(v) > limit:
                    raise _HTTPError(413, f"request body is {int(v)} bytes; the limit is {limit}")
            elif k == b"inference-header-content-length":
                header_length = v
            elif k == b"content-encoding":
                encoding = v.strip().lower()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise _HTTPError(413, f"request body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if encoding and encoding != b"identity":
            body = self._decompress(body, encoding)
        return body, header_length

    def _decompress(self, body: bytes, encoding: bytes) -> bytes:
        if encoding == b"gzip":
            wbits = 16 + zlib.MAX_WBITS
        elif encoding == b"deflate":
            wbits = (
                zlib.MAX_WBITS
                if body[:1]
                in (b"\x08", b"\x18", b"\x28", b"\x38", b"\x48", b"\x58", b"\x68", b"\x78")
                else -zlib.MAX_WBITS
            )
        else:
            raise _HTTPError(
                415,
                f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not supported; "
                "use gzip, deflate or none",
            )
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, self.max_body_bytes + 1)
        except zlib.error as e:
            raise _HTTPError(
                400, f"request body is not valid {encoding.decode()} data: {e}"
            ) from None
        if len(out) > self.max_body_bytes or d.unconsumed_tail:
            raise _HTTPError(
                413,
                f"decompressed request body exceeds the limit of {self.max_body_bytes} bytes",
            )
        if not d.eof:
            raise _HTTPError(400, f"request body is truncated {encoding.decode()} data")
        return out

    async def _infer(
        self, name: str, version: int | str | None, req: InferRequest, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        engine = self.engine
        try:
            info = engine.model_info(name, version)
        except InferlineError as e:
            raise _engine_error(e) from None
        inputs = _check_inputs(info, req)
        out_types = {s.name: s.datatype for s in info.outputs}
        if req.outputs is not None and out_types:
            for o in req.outputs:
                if o.name not in out_types:
                    raise _HTTPError(
                        400,
                        f"model {name!r} has no output {o.name!r}; its outputs are "
                        f"{sorted(out_types)}",
                    )
        # Schedule-policy priority: 0 (or none) is the default level, 1 the highest, as in
        # Triton; the engine's levels count from 0, the highest and its default.
        priority = 0 if not req.priority else req.priority - 1
        timeout = req.timeout_s
        # Pin the version metadata named, so a swap between the two calls cannot mix them.
        pinned = version if version is not None else info.version
        n_rows = next(iter(inputs.values())).shape[0]
        if n_rows == 1:
            # One item: engine.infer directly, which skips infer_batch's per-row tasks.
            call = _infer_one(engine, name, info, inputs, pinned, priority, timeout)
        else:
            call = engine.infer_batch(
                name, inputs, version=pinned, priority=priority, timeout=timeout
            )
        try:
            outputs = await _cancel_on_disconnect(call, receive, self.disconnect_check_delay)
        except InferlineError as e:
            raise _engine_error(e) from None
        except (_ClientGone, asyncio.CancelledError):
            raise
        except Exception as e:  # an engine bug: log it, answer 500, keep serving
            log.exception("engine failed on model %r", name)
            raise _HTTPError(500, f"internal error: {type(e).__name__}") from None
        self.last_inference[(name, info.version)] = int(time.time() * 1000)
        datatypes = {}
        for k, arr in outputs.items():
            dt = out_types.get(k)
            if dt is None:
                try:
                    dt = datatype_of(arr.dtype)
                except ValueError:
                    raise _HTTPError(
                        500,
                        f"model {name!r} returned output {k!r} of dtype "
                        f"{arr.dtype}, which the protocol cannot carry",
                    ) from None
            datatypes[k] = dt
        if req.outputs is not None:
            missing = [o.name for o in req.outputs if o.name not in outputs]
            if missing:
                raise _HTTPError(400, f"model {name!r} did not produce outputs {missing}")
        encoded = encode_infer_response(
            model_name=name,
            model_version=info.version,
            request_id=req.id,
            outputs=outputs,
            datatypes=datatypes,
            requested=req.outputs,
            binary_data_output=req.binary_data_output,
        )
        headers = [(b"content-type", encoded.content_type.encode())]
        if encoded.header_length is not None:
            headers.append(
                (b"inference-header-content-length", str(encoded.header_length).encode())
            )
        return 200, headers, encoded.body


_TRITON_TYPE = {"BYTES": "STRING"}


def _check_inputs(info: Any, req: InferRequest) -> dict[str, np.ndarray]:
    """Inputs checked against the model's signature, with a leading batch dimension N >= 1."""
    specs = {s.name: s for s in info.inputs}
    got = set(req.inputs)
    if got != set(specs):
        missing = sorted(set(specs) - got)
        extra = sorted(got - set(specs))
        raise _HTTPError(
            400,
            f"model {info.name!r} takes inputs {sorted(specs)}; missing {missing}, "
            f"unexpected {extra}",
        )
    n: int | None = None
    for name, arr in req.inputs.items():
        spec = specs[name]
        given = req.datatypes[name]
        if given != spec.datatype:
            raise _HTTPError(
                400,
                f"input {name!r} has datatype {given}; model {info.name!r} expects {spec.datatype}",
            )
        want = [-1, *spec.shape]
        if arr.ndim != len(want) or tuple(arr.shape[1:]) != tuple(spec.shape):
            raise _HTTPError(
                400,
                f"input {name!r} has shape {list(arr.shape)}; model {info.name!r} expects "
                f"{want} (-1: the batch dimension)",
            )
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise _HTTPError(
                400,
                f"inputs disagree on the batch dimension: {name!r} has {arr.shape[0]}, others {n}",
            )
    if n == 0:
        raise _HTTPError(400, "the batch dimension is 0: nothing to infer")
    return req.inputs


async def _infer_one(
    engine: Any,
    name: str,
    info: Any,
    inputs: dict[str, np.ndarray],
    version: int | str,
    priority: int,
    timeout: float | None,
) -> dict[str, np.ndarray]:
    """``infer_batch`` for a batch of one, through ``engine.infer``: the same answer with
    the leading dimension of 1 put back, without a task per row."""
    if len(inputs) == 1:
        item: Any = next(iter(inputs.values()))[0]
    else:
        item = {k: a[0] for k, a in inputs.items()}
    out = await engine.infer(name, item, version=version, priority=priority, timeout=timeout)
    if isinstance(out, dict):
        return {k: np.asarray(v)[None] for k, v in out.items()}
    out_name = info.outputs[0].name if info.outputs else "output"
    return {out_name: np.asarray(out)[None]}


async def _cancel_on_disconnect(call: Awaitable[Any], receive: Receive, delay: float) -> Any:
    """Awaits ``call``; if the client disconnects first, cancels it (the engine then drops the
    queued work) and raises ``_ClientGone``.

    ``call`` runs in the current task. A watcher task waiting on ``receive`` cancels this
    task on ``http.disconnect``; it is started only once the request has taken ``delay``
    seconds, because creating, running and cancelling it costs about as much event-loop time
    as the rest of a small request, and work that finishes within ``delay`` is not worth
    cancelling. A client that hangs up is thus noticed at most ``delay`` late.
    """
    current = asyncio.current_task()
    assert current is not None
    loop = asyncio.get_running_loop()
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                current.cancel()
                return

    def start() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = None
    if delay > 0:
        timer = loop.call_later(delay, start)
    else:
        start()
    try:
        return await call
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (server shutdown): let it propagate
        uncancel = getattr(current, "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        raise _ClientGone() from None
    finally:
        if timer is not None:
            timer.cancel()
        if watcher is not None:
            watcher.cancel()


def _duration(count: Any, seconds: Any) -> dict[str, int]:
    return {"count": int(count or 0), "ns": round(float(seconds or 0.0) * 1e9)}


def _triton_stats(
    name: str, version: Any, s: Mapping[str, Any], last_inference_ms: int
) -> dict[str, Any]:
    """Engine stats in the shape of Triton's statistics extension.

    * ``inference_count``: successful items (each row of a request counts, as in Triton);
      ``execution_count``: batches the model ran.
    * ``success``/``fail``: counts from the request outcomes; their durations split the
      end-to-end histogram's total in proportion, as the engine keeps one histogram for all
      outcomes.
    * ``queue``: the queue-wait histogram; ``compute_infer``: the compute histogram (per
      batch). ``compute_input``/``compute_output`` are 0: the engine gathers and scatters rows
      inside its compute stage.
    * ``batch_stats``: one entry per batch size when the engine reports counts per size
      (``batch_sizes``: {size: count}); the engine's batch-size histogram is under
      ``inferline`` with the percentiles, queue depth and in-flight count.
    * ``last_inference``: when this server last answered the model successfully (ms since
      the epoch), 0 if never.
    """
    requests = s.get("requests", {}) or {}
    success = int(requests.get("success", 0))
    fail = sum(int(v) for k, v in requests.items() if k != "success")
    req_h = s.get("request", {}) or {}
    total = success + fail
    req_sum = float(req_h.get("sum", 0.0))
    succ_s = req_sum * success / total if total else 0.0
    q = s.get("queue_wait", {}) or {}
    c = s.get("compute", {}) or {}
    batches = int(s.get("batches", 0) or 0)
    batch_stats = []
    for size, count in sorted((s.get("batch_sizes") or {}).items()):
        batch_stats.append(
            {
                "batch_size": int(size),
                "compute_input": _duration(count, 0),
                "compute_infer": _duration(count, 0),
                "compute_output": _duration(count, 0),
            }
        )
    return {
        "name": name,
        "version": str(version),
        "last_inference": int(last_inference_ms),
        "inference_count": success,
        "execution_count": batches,
        "inference_stats": {
            "success": _duration(success, succ_s),
            "fail": _duration(fail, req_sum - succ_s if total else 0.0),
            "queue": _duration(q.get("count", 0), q.get("sum", 0.0)),
            "compute_input": _duration(c.get("count", 0), 0),
            "compute_infer": _duration(c.get("count", 0), c.get("sum", 0.0)),
            "compute_output": _duration(c.get("count", 0), 0),
            "cache_hit": _duration(0, 0),
        },
        "batch_stats": batch_stats,
        "inferline": {
            "requests": {k: int(v) for k, v in requests.items()},
            "queue_depth": int(s.get("queue_depth", 0) or 0),
            "in_flight": int(s.get("in_flight", 0) or 0),
            **{h: dict(s.get(h) or {}) for h in ("queue_wait", "compute", "request", "batch_size")},
        },
    }


def _metrics_text(engine: Any) -> tuple[bytes, str]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST

    registry = CollectorRegistry(auto_describe=False)
    try:
        from ..metrics import collector
    except ImportError:
        registry.register(_FallbackCollector(engine))
    else:
        registry.register(collector(engine))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _FallbackCollector:
    """Counters and gauges from ``engine.stats`` for when ``inferline.metrics`` is absent."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        req = CounterMetricFamily(
            "inferline_requests", "Requests by outcome", labels=["model", "version", "outcome"]
        )
        batches = CounterMetricFamily(
            "inferline_batches", "Batches computed", labels=["model", "version"]
        )
        depth = GaugeMetricFamily(
            "inferline_queue_depth", "Items waiting", labels=["model", "version"]
        )
        flight = GaugeMetricFamily(
            "inferline_in_flight", "Items accepted and not answered", labels=["model", "version"]
        )
        for info in self.engine.models():
            try:
                s = self.engine.stats(info.name, info.version)
            except InferlineError:
                continue
            labels = [info.name, str(info.version)]
            for outcome, n in (s.get("requests") or {}).items():
                req.add_metric([*labels, str(outcome)], float(n))
            batches.add_metric(labels, float(s.get("batches", 0)))
            depth.add_metric(labels, float(s.get("queue_depth", 0)))
            flight.add_metric(labels, float(s.get("in_flight", 0)))
        yield from (req, batches, depth, flight)


class _ASGIRoute:
    """Adapter so a bound ``infer(scope, receive, send)`` is an ASGI app for ``Route``."""

    def __init__(self, fn: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.fn = fn

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.fn(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (``root_path``), as Starlette's router sees it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] == "/":
        return path[len(root) :]
    return path


_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


class _InferlineStarlette(Starlette):
    """Starlette with a shortcut for the hot route.

    ``POST .../infer`` goes straight to the infer handler, skipping the router and the
    exception middlewares (the handler answers every error itself), which saves several
    microseconds per request on the event loop. Anything else, and everything once user
    middleware is added, goes through Starlette as usual.
    """

    infer_handler: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and self.infer_handler is not None
            and not self.user_middleware
        ):
            match = _INFER_PATH.fullmatch(_route_path(scope))
            if match is not None:
                scope["app"] = self
                params = {"model": match.group(1)}
                if match.group(2) is not None:
                    params["version"] = match.group(2)
                scope["path_params"] = params
                await self.infer_handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


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
    """
    state = state or ServerState()
    a = _App(
        engine,
        max_body_bytes=max_body_bytes,
        max_json_bytes=max_json_bytes,
        retry_after_s=retry_after_s,
        server_name=server_name,
        state=state,
        drain_timeout=drain_timeout,
        manage_engine=manage_engine,
        disconnect_check_delay_s=disconnect_check_delay_s,
    )
    infer = _ASGIRoute(a.infer)
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
    app = _InferlineStarlette(routes=routes, lifespan=a.lifespan)
    app.infer_handler = a.infer
    app.state.inferline = state
    app.add_exception_handler(404, _not_found)
    app.add_exception_handler(405, _not_allowed)
    app.add_exception_handler(Exception, _internal_error)
    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return Response(
        encode_error(f"no route for {request.method} {request.url.path[:200]}"),
        404,
        media_type="application/json",
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return Response(
        encode_error(f"method {request.method} is not allowed on {request.url.path[:200]}"),
        405,
        media_type="application/json",
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path[:200])
    return Response(
        encode_error(f"internal error: {type(exc).__name__}"), 500, media_type="application/json"
    )
