"""The hot path: ``POST /v2/models/{m}[/versions/{v}]/infer``, from body to answer.

The route is a plain ASGI app rather than a Starlette endpoint, which keeps the per-request
work on the event loop small. In order, it:

1. reads the body with a bound (``Content-Length`` first, then the bytes received), and
   inflates a gzip or deflate body with the same bound;
2. parses it (:func:`.protocol.parse_infer_request`) and checks the inputs and requested
   outputs against the model's signature;
3. calls the engine (``engine.infer`` for one row, ``engine.infer_batch`` for more) in the
   current task, which is cancelled if the client disconnects (the engine then drops the
   queued work);
4. encodes the outputs (:func:`.responses.encode_infer_response`) and writes the answer.

Every error becomes an :class:`.errors.HTTPError` answered here; a client that hung up gets
no answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable
from typing import Any

import numpy as np
from starlette.types import Receive, Scope, Send

from ..errors import InferlineError
from ..types import datatype_of
from .errors import (
    ClientGone,
    HTTPError,
    ProtocolError,
    encode_error,
    engine_error,
    error_headers,
    log_error,
)
from .protocol import InferRequest, parse_infer_request
from .requests import RequestIds, version_arg
from .responses import EncodedResponse, encode_infer_response
from .state import ServerState

__all__ = ["InferRoute"]

log = logging.getLogger("inferline.server")

_Headers = list[tuple[bytes, bytes]]

# First bytes of a zlib stream (CMF: deflate with a window of 2**8..2**15); anything else
# sent as "deflate" is taken as a raw deflate stream, as browsers and curl may send.
_ZLIB_HEADERS = (b"\x08", b"\x18", b"\x28", b"\x38", b"\x48", b"\x58", b"\x68", b"\x78")


class InferRoute:
    """The infer route as an ASGI app; ``last_inference`` records when each model version
    last answered successfully (ms since the epoch), for the statistics route."""

    def __init__(
        self,
        engine: Any,
        *,
        state: ServerState,
        request_ids: RequestIds,
        max_body_bytes: int,
        max_json_bytes: int,
        retry_after: bytes,
        disconnect_check_delay_s: float,
    ) -> None:
        if not isinstance(max_body_bytes, int) or max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be a positive int, got {max_body_bytes!r}")
        if not isinstance(max_json_bytes, int) or max_json_bytes < 1:
            raise ValueError(f"max_json_bytes must be a positive int, got {max_json_bytes!r}")
        if not disconnect_check_delay_s >= 0:
            raise ValueError(
                f"disconnect_check_delay_s must be >= 0, got {disconnect_check_delay_s!r}"
            )
        self.engine = engine
        self.state = state
        self.request_id = request_ids
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = min(max_json_bytes, max_body_bytes)
        self.retry_after = retry_after
        self.disconnect_check_delay = float(disconnect_check_delay_s)
        self.last_inference: dict[tuple[str, int], int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: _Headers = scope["headers"]
        rid = self.request_id(headers)
        params = scope["path_params"]
        name: str = params["model"]
        version = version_arg(params.get("version"))
        try:
            if self.state.draining:
                raise HTTPError(503, "the server is draining and takes no new requests", True)
            body, header_length = await self._read_body(headers, receive)
            try:
                req = parse_infer_request(body, header_length, max_json_bytes=self.max_json_bytes)
            except ProtocolError as e:
                raise HTTPError(e.status, e.message) from None
            encoded = await self._infer(name, version, req, receive)
            status, out_headers, out_body = 200, encoded.asgi_headers(), encoded.body
            out_headers.append((b"x-request-id", rid.encode()))
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request %s: infer %s -> 200", rid, name, extra={"request_id": rid})
        except HTTPError as e:
            log_error("POST", scope.get("path", ""), rid, e)
            status, out_body = e.status, encode_error(e.message)
            out_headers = error_headers(rid, e, self.retry_after)
        except ClientGone:
            log.info(
                "request %s: client disconnected; its queued work was cancelled",
                rid,
                extra={"request_id": rid},
            )
            return
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("request %s: unhandled error in infer", rid)
            err = HTTPError(500, f"internal error: {type(e).__name__}")
            status, out_body = 500, encode_error(err.message)
            out_headers = error_headers(rid, err, self.retry_after)
        out_headers.append((b"content-length", str(len(out_body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})

    # -- 1. the body -----------------------------------------------------------------------
    async def _read_body(self, headers: _Headers, receive: Receive) -> tuple[bytes, bytes | None]:
        """The (inflated) body and the ``Inference-Header-Content-Length`` header, if any."""
        limit = self.max_body_bytes
        header_length: bytes | None = None
        encoding = b""
        for k, v in headers:
            if k == b"content-length":
                if not v.strip().isdigit():
                    raise HTTPError(400, "Content-Length is not a number")
                if int(v) > limit:
                    raise HTTPError(413, f"request body is {int(v)} bytes; the limit is {limit}")
            elif k == b"inference-header-content-length":
                header_length = v
            elif k == b"content-encoding":
                encoding = v.strip().lower()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise HTTPError(413, f"request body is larger than the limit of {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if encoding and encoding != b"identity":
            body = _decompress(body, encoding, limit)
        return body, header_length

    # -- 2.-4. check, call the engine, encode --------------------------------------------------
    async def _infer(
        self, name: str, version: int | str | None, req: InferRequest, receive: Receive
    ) -> EncodedResponse:
        engine = self.engine
        try:
            info = engine.model_info(name, version)
        except InferlineError as e:
            raise engine_error(e) from None
        inputs = check_inputs(info, req)
        out_types = {s.name: s.datatype for s in info.outputs}
        if req.outputs is not None and out_types:
            for o in req.outputs:
                if o.name not in out_types:
                    raise HTTPError(
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
            raise engine_error(e) from None
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception as e:  # an engine bug: log it, answer 500, keep serving
            log.exception("engine failed on model %r", name)
            raise HTTPError(500, f"internal error: {type(e).__name__}") from None
        self.last_inference[(name, info.version)] = int(time.time() * 1000)
        datatypes = _output_datatypes(name, outputs, out_types)
        if req.outputs is not None:
            missing = [o.name for o in req.outputs if o.name not in outputs]
            if missing:
                raise HTTPError(400, f"model {name!r} did not produce outputs {missing}")
        return encode_infer_response(
            model_name=name,
            model_version=info.version,
            request_id=req.id,
            outputs=outputs,
            datatypes=datatypes,
            requested=req.outputs,
            binary_data_output=req.binary_data_output,
        )


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    """``body`` inflated (gzip or deflate), at most ``limit`` bytes of it."""
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS if body[:1] in _ZLIB_HEADERS else -zlib.MAX_WBITS
    else:
        raise HTTPError(
            415,
            f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not supported; "
            "use gzip, deflate or none",
        )
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise HTTPError(400, f"request body is not valid {encoding.decode()} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise HTTPError(413, f"decompressed request body exceeds the limit of {limit} bytes")
    if not d.eof:
        raise HTTPError(400, f"request body is truncated {encoding.decode()} data")
    return out


def check_inputs(info: Any, req: InferRequest) -> dict[str, np.ndarray]:
    """Inputs checked against the model's signature, with a leading batch dimension N >= 1."""
    specs = {s.name: s for s in info.inputs}
    got = set(req.inputs)
    if got != set(specs):
        missing = sorted(set(specs) - got)
        extra = sorted(got - set(specs))
        raise HTTPError(
            400,
            f"model {info.name!r} takes inputs {sorted(specs)}; missing {missing}, "
            f"unexpected {extra}",
        )
    n: int | None = None
    for name, arr in req.inputs.items():
        spec = specs[name]
        given = req.datatypes[name]
        if given != spec.datatype:
            raise HTTPError(
                400,
                f"input {name!r} has datatype {given}; model {info.name!r} expects {spec.datatype}",
            )
        want = [-1, *spec.shape]
        if arr.ndim != len(want) or tuple(arr.shape[1:]) != tuple(spec.shape):
            raise HTTPError(
                400,
                f"input {name!r} has shape {list(arr.shape)}; model {info.name!r} expects "
                f"{want} (-1: the batch dimension)",
            )
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise HTTPError(
                400,
                f"inputs disagree on the batch dimension: {name!r} has {arr.shape[0]}, others {n}",
            )
    if n == 0:
        raise HTTPError(400, "the batch dimension is 0: nothing to infer")
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
    queued work) and raises ``ClientGone``.

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
        raise ClientGone() from None
    finally:
        if timer is not None:
            timer.cancel()
        if watcher is not None:
            watcher.cancel()


def _output_datatypes(
    name: str, outputs: dict[str, np.ndarray], declared: dict[str, str]
) -> dict[str, str]:
    """Protocol datatype of each output: the declared one, else the array's."""
    datatypes = {}
    for k, arr in outputs.items():
        dt = declared.get(k)
        if dt is None:
            try:
                dt = datatype_of(arr.dtype)
            except ValueError:
                raise HTTPError(
                    500,
                    f"model {name!r} returned output {k!r} of dtype "
                    f"{arr.dtype}, which the protocol cannot carry",
                ) from None
        datatypes[k] = dt
    return datatypes
