"""The hot path: ``POST /v2/models/{m}[/versions/{v}]/infer``, from body to answer.

The route is a plain ASGI app rather than a Starlette endpoint, which keeps the per-request
work on the event loop small. Work is refused as early as the request allows
(:mod:`.admission`); in order, the route:

1. refuses at once, before reading anything, while draining or when the server already
   holds ``max_in_flight`` requests (503 + ``Retry-After``);
2. looks the model up (404, or 503 when it is not ready);
3. checks the declared sizes: ``Content-Length`` against ``max_body_bytes`` (413) and
   against the bytes of bodies held at once (503); a JSON body against ``max_json_bytes``;
4. reads the JSON part (all of a JSON body; only the header of a binary one, whose length
   ``Inference-Header-Content-Length`` gives), parses it without converting any tensor data
   (:func:`.protocol.parse_infer_header`), and checks every declared input, shape, row count
   (``max_rows_per_request``: 413), priority and requested output against the model. A
   binary request refused here has its tensor bytes left unread (the HTTP layer discards
   them);
5. reads the rest, converts the data, and calls the engine once for the whole request
   (``engine.infer`` for one row, ``engine.infer_batch`` for more; its rows are admitted
   together or not at all) in the current task, which is cancelled if the client
   disconnects (the engine then drops the queued work);
6. encodes the outputs (:func:`.responses.encode_infer_response`) and writes the answer.

Every error becomes an :class:`.errors.HTTPError` answered here and counted by
:class:`.outcomes.Outcomes`; a client that hung up gets no answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import numpy as np
from starlette.types import Receive, Scope, Send

from ..errors import InferlineError
from ..types import datatype_of
from .admission import Admission
from .body import RequestBody, decompress
from .errors import (
    ClientGone,
    HTTPError,
    ProtocolError,
    encode_error,
    engine_error,
    error_headers,
    log_error,
)
from .outcomes import Outcomes
from .protocol import (
    InferHeader,
    InferRequest,
    check_json_length,
    parse_header_length,
    parse_infer_header,
)
from .requests import RequestIds, version_arg
from .responses import encode_infer_response
from .state import ServerState

__all__ = ["InferRoute"]

log = logging.getLogger("inferline.server")

_Headers = list[tuple[bytes, bytes]]


class InferRoute:
    """The infer route as an ASGI app; ``last_inference`` records when each model version
    last answered successfully (ms since the epoch), for the statistics route."""

    def __init__(
        self,
        engine: Any,
        *,
        state: ServerState,
        request_ids: RequestIds,
        admission: Admission,
        outcomes: Outcomes,
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
        self.admission = admission
        self.outcomes = outcomes
        self.max_body_bytes = max_body_bytes
        self.max_json_bytes = min(max_json_bytes, max_body_bytes)
        self.retry_after = retry_after
        self.disconnect_check_delay = float(disconnect_check_delay_s)
        self.last_inference: dict[tuple[str, int], int] = {}
        # OpenTelemetry (inferline.observability): a SERVER span per request and a serialise
        # span around the encoding when the engine traces, else nothing at all.
        self._tracing: Any = getattr(engine, "_tracing", None)
        self._encode = (
            encode_infer_response
            if self._tracing is None
            else self._tracing.encoder(encode_infer_response)
        )

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function that returns the coroutine: one coroutine frame less per request.
        if self._tracing is not None:
            return self._tracing.http(self._serve, scope, receive, send)  # type: ignore[no-any-return]
        return self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: _Headers = scope["headers"]
        rid = self.request_id(headers)
        params = scope["path_params"]
        name: str = params["model"]
        version = version_arg(params.get("version"))
        admission = self.admission
        body = RequestBody(receive, self.max_body_bytes, admission)
        label = ""  # the model's name once the engine has said it serves it
        entered = False
        try:
            try:
                self.admit()
                entered = True
                info = self.lookup(name, version)
                label = name
                header, tail = await self._read(headers, body, info)
                req = header.tensors(tail)
                parameters: dict[str, Any] = {}  # what a model's stages report, e.g. truncated
                outputs, datatypes = await self.compute(
                    name, version, info, req, receive, parameters
                )
                encoded = self._encode(
                    model_name=name,
                    model_version=info.version,
                    request_id=req.id,
                    outputs=outputs,
                    datatypes=datatypes,
                    requested=req.outputs,
                    binary_data_output=req.binary_data_output,
                    parameters=parameters,
                )
                status, out_headers, out_body = 200, encoded.asgi_headers(), encoded.body
                out_headers.append((b"x-request-id", rid.encode()))
                self.outcomes.success(name)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("request %s: infer %s -> 200", rid, name, extra={"request_id": rid})
            except ProtocolError as e:
                raise HTTPError(e.status, e.message) from None
        except HTTPError as e:
            log_error("POST", scope.get("path", ""), rid, e)
            self.outcomes.refused(label or self.label(name), e, rid)
            status, out_body = e.status, encode_error(e.message)
            out_headers = error_headers(rid, e, self.retry_after)
        except ClientGone:
            self.outcomes.disconnected(label, rid)
            return
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("request %s: unhandled error in infer", rid)
            err = HTTPError(500, f"internal error: {type(e).__name__}")
            self.outcomes.refused(label, err, rid)
            status, out_body = 500, encode_error(err.message)
            out_headers = error_headers(rid, err, self.retry_after)
        finally:
            if entered:
                admission.leave()
            body.release()
        out_headers.append((b"content-length", str(len(out_body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out_body})

    def label(self, name: str) -> str:
        """``name`` when the engine serves a model of that name, else "" (the metrics' label
        set must not grow with what clients send)."""
        try:
            self.engine.model_info(name)
        except Exception:
            return ""
        return name

    def admit(self) -> None:
        """Counts a request in (the caller calls ``admission.leave()``), or refuses it at
        once: 503 while draining or at the in-flight bound."""
        if self.state.draining:
            raise HTTPError(
                503, "the server is draining and takes no new requests", True, "draining"
            )
        self.admission.enter()

    def lookup(self, name: str, version: int | str | None) -> Any:
        """The model version's info: 404 when there is none, 503 when it is not ready."""
        try:
            info = self.engine.model_info(name, version)
        except InferlineError as e:
            raise engine_error(e) from None
        if info.state != "ready":
            raise HTTPError(
                503,
                f"model {name!r} version {info.version} is {info.state}"
                + (f": {info.reason}" if info.reason else ""),
                retry_after=True,
                outcome="not_ready",
            )
        return info

    # -- 3.-5. the body, read no further than the checks allow ------------------------------
    async def _read(
        self, headers: _Headers, body: RequestBody, info: Any
    ) -> tuple[InferHeader, bytes | bytearray | memoryview]:
        """The request's checked header and the binary data after it."""
        limit = self.max_body_bytes
        length: int | None = None
        raw_header_length: bytes | None = None
        encoding = b""
        for k, v in headers:
            if k == b"content-length":
                if not v.strip().isdigit():
                    raise HTTPError(400, "Content-Length is not a number")
                length = int(v)
                if length > limit:
                    raise HTTPError(413, f"request body is {length} bytes; the limit is {limit}")
            elif k == b"inference-header-content-length":
                raw_header_length = v
            elif k == b"content-encoding":
                encoding = v.strip().lower()
        if encoding == b"identity":
            encoding = b""
        if length is not None:
            body.declare(length)
        if encoding or raw_header_length is None:
            if not encoding and length is not None:
                check_json_length(length, self.max_json_bytes)
            data = await body.read_all()
            if encoding:
                data = decompress(data, encoding, limit)
                body.hold(len(data))
            if raw_header_length is None:  # all JSON, the common case
                check_json_length(len(data), self.max_json_bytes)
                text = data if isinstance(data, bytes) else bytes(data)
                header = parse_infer_header(text, binary_length=None)
                self.check(info, header)
                return header, b""
            mv = memoryview(data).cast("B")
            hl = parse_header_length(raw_header_length, len(mv))
            assert hl is not None
            check_json_length(hl, self.max_json_bytes)
            header = parse_infer_header(bytes(mv[:hl]), binary_length=len(mv) - hl)
            self.check(info, header)
            return header, mv[hl:]
        # Binary tensor data: the JSON header first, checked before the tensors are read.
        hl = parse_header_length(raw_header_length, limit if length is None else length)
        assert hl is not None
        check_json_length(hl, self.max_json_bytes)
        text = await body.read_prefix(hl)
        header = parse_infer_header(text, binary_length=None if length is None else length - hl)
        self.check(info, header)
        data = await body.read_all()
        return header, memoryview(data).cast("B")[hl:]

    def check(self, info: Any, header: InferHeader) -> None:
        """Every declared input, shape, row count, priority and requested output against the
        model, before any data is converted."""
        rows = check_declared(info, header)
        self.admission.check_rows(info.name, rows)
        if rows > info.max_queue_size:  # rows are admitted together: a retry could never fit
            raise HTTPError(
                413,
                f"the request has {rows} rows; model {info.name!r} queues at most "
                f"{info.max_queue_size} (max_queue_size): split it",
            )
        if header.priority is not None and header.priority > info.priority_levels:
            raise HTTPError(
                400,
                f"parameter 'priority' is {header.priority}; model {info.name!r} has "
                f"{info.priority_levels} priority level(s): give 1 (the highest) to "
                f"{info.priority_levels}, or 0 for the default",
            )
        if header.outputs is None:
            return
        out_types = {s.name for s in info.outputs}
        if out_types:
            for o in header.outputs:
                if o.name not in out_types:
                    raise HTTPError(
                        400,
                        f"model {info.name!r} has no output {o.name!r}; its outputs are "
                        f"{sorted(out_types)}",
                    )

    # -- 5.-6. call the engine, encode ------------------------------------------------------
    async def compute(
        self,
        name: str,
        version: int | str | None,
        info: Any,
        req: InferRequest,
        receive: Receive | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """A checked request through the engine: the outputs and their protocol datatypes.

        With ``receive`` (HTTP), a client that disconnects cancels the call (``ClientGone``);
        without it (gRPC), cancelling the caller's task does. ``parameters``, when given,
        receives the parameters a model's stages reported (e.g. ``{"truncated": True}``).
        Raises :class:`HTTPError`."""
        # Schedule-policy priority: 0 (or none) is the default level, 1 the highest, as in
        # Triton; the engine's levels count from 0, the highest and its default.
        priority = 0 if not req.priority else req.priority - 1
        # Pin the version metadata named, so a swap between the two calls cannot mix them.
        pinned = version if version is not None else info.version
        watch = None if receive is None else _DisconnectWatch(receive, self.disconnect_check_delay)
        try:
            outputs = await _call_engine(
                self.engine, info, req.inputs, pinned, priority, req.timeout_s, parameters
            )
        except asyncio.CancelledError:
            if watch is None or not watch.gone:
                raise  # cancelled from outside (server shutdown): let it propagate
            uncancel = getattr(watch.task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            raise ClientGone() from None
        except InferlineError as e:
            raise engine_error(e) from None
        except ClientGone:
            raise
        except Exception as e:  # an engine bug: log it, answer 500, keep serving
            log.exception("engine failed on model %r", name)
            raise HTTPError(500, f"internal error: {type(e).__name__}") from None
        finally:
            if watch is not None:
                watch.stop()
        self.last_inference[(name, info.version)] = int(time.time() * 1000)
        datatypes = _output_datatypes(name, outputs, info.outputs)
        if req.outputs is not None:
            missing = [o.name for o in req.outputs if o.name not in outputs]
            if missing:
                raise HTTPError(400, f"model {name!r} did not produce outputs {missing}")
        return outputs, datatypes


def check_declared(info: Any, header: InferHeader) -> int:
    """The declared inputs checked against the model's signature (names, datatypes, shapes
    with a leading batch dimension N >= 1); returns N. Nothing is converted."""
    specs = {s.name: s for s in info.inputs}
    got = {d.name for d in header.inputs}
    if got != set(specs):
        missing = sorted(set(specs) - got)
        extra = sorted(got - set(specs))
        raise HTTPError(
            400,
            f"model {info.name!r} takes inputs {sorted(specs)}; missing {missing}, "
            f"unexpected {extra}",
        )
    n: int | None = None
    for d in header.inputs:
        spec = specs[d.name]
        if d.datatype != spec.datatype:
            raise HTTPError(
                400,
                f"input {d.name!r} has datatype {d.datatype}; model {info.name!r} expects "
                f"{spec.datatype}",
            )
        if len(d.shape) != len(spec.shape) + 1 or tuple(d.shape[1:]) != tuple(spec.shape):
            want = [-1, *spec.shape]
            raise HTTPError(
                400,
                f"input {d.name!r} has shape {list(d.shape)}; model {info.name!r} expects "
                f"{want} (-1: the batch dimension)",
            )
        if n is None:
            n = d.shape[0]
        elif d.shape[0] != n:
            raise HTTPError(
                400,
                f"inputs disagree on the batch dimension: {d.name!r} has {d.shape[0]}, others {n}",
            )
    if not n:
        raise HTTPError(400, "the batch dimension is 0: nothing to infer")
    return n


async def _call_engine(
    engine: Any,
    info: Any,
    inputs: dict[str, np.ndarray],
    version: int | str,
    priority: int,
    timeout: float | None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """The whole request in one engine call (so its rows are admitted together), its
    answer as a dict by output name with the leading batch dimension.

    One row goes through ``engine.infer`` (the same answer for less work, with the leading
    dimension of 1 put back); more through ``engine.infer_batch``, which answers an array
    for a one-output model, or a dict. For a model with stages (a text model takes its BYTES
    input as the stage's items), the stages' merged parameters go into ``parameters``."""
    if parameters is not None and getattr(info, "stages", None):
        return await _call_staged(
            engine, info, inputs, parameters, version=version, priority=priority, timeout=timeout
        )
    item = _single_row(inputs)
    if item is not None:
        one = await engine.infer(
            info.name, item, version=version, priority=priority, timeout=timeout
        )
        return _by_output(info, one, one_row=True)
    out = await engine.infer_batch(
        info.name, inputs, version=version, priority=priority, timeout=timeout
    )
    return _by_output(info, out, one_row=False)


async def _call_staged(
    engine: Any, info: Any, inputs: dict[str, np.ndarray], parameters: dict[str, Any], **kw: Any
) -> dict[str, np.ndarray]:
    """:func:`_call_engine` for a model with stages (``kw``: version, priority, timeout): the
    stages' merged parameters go into ``parameters``."""
    kw["with_parameters"] = True
    item = _single_row(inputs)
    if item is not None:
        one = await engine.infer(info.name, item, **kw)
        parameters.update(one.parameters)
        return _by_output(info, one.output, one_row=True)
    out = await engine.infer_batch(info.name, inputs, **kw)
    parameters.update(out.parameters)
    return _by_output(info, out.output, one_row=False)


def _single_row(inputs: dict[str, np.ndarray]) -> Any:
    """The request's one row as an ``infer`` item (an array, or a dict for several inputs);
    None when it has more rows."""
    first = next(iter(inputs.values()))
    if first.shape[0] != 1:
        return None
    return first[0] if len(inputs) == 1 else {k: a[0] for k, a in inputs.items()}


def _by_output(info: Any, answer: Any, *, one_row: bool) -> dict[str, np.ndarray]:
    """An engine answer (an array for a one-output model, or a dict) as a dict by output
    name with the leading batch dimension (put back for ``one_row``)."""
    if isinstance(answer, dict):
        if not one_row:
            return answer
        return {k: np.asarray(v)[None] for k, v in answer.items()}
    name = info.outputs[0].name if info.outputs else "output"
    return {name: np.asarray(answer)[None] if one_row else np.asarray(answer)}


class _DisconnectWatch:
    """Watches an HTTP request's ``receive`` for ``http.disconnect`` while the current task
    awaits the engine; on a disconnect it cancels the task (the engine then drops the queued
    work) and sets ``gone``, which the task turns into ``ClientGone``.

    Watching starts only once the request has taken ``delay`` seconds: work that finishes
    within ``delay`` is not worth cancelling, and a client that hangs up is thus noticed at
    most ``delay`` late. It needs no Task: ``receive()`` is stepped by hand (as a Task would
    step it) from the done callbacks of the futures it waits on, which costs a third of
    creating, running and cancelling a Task per request. :meth:`stop` closes it.
    """

    __slots__ = ("coro", "gone", "loop", "receive", "task", "timer", "waiting")

    def __init__(self, receive: Receive, delay: float) -> None:
        self.receive = receive
        # current_task() would look the loop up once more: on Python 3.11 each look-up costs
        # a getpid() system call.
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task(self.loop)
        self.gone = False
        self.coro: Any = None  # the receive() being stepped
        self.waiting: Any = None  # the future it waits on
        self.timer: asyncio.Handle | None = None
        if delay > 0:
            self.timer = self.loop.call_later(delay, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self.timer = None
        self.coro = self.receive()
        self._step()

    def _step(self, _: Any = None) -> None:
        coro = self.coro
        if coro is None:
            return
        self.waiting = None
        try:
            awaited = coro.send(None)
        except StopIteration as e:
            self.coro = None
            message = e.value
            if isinstance(message, dict) and message.get("type") == "http.disconnect":
                self.gone = True
                if self.task is not None:
                    self.task.cancel()
            else:  # more of the body, or anything else: keep watching
                self.timer = self.loop.call_soon(self._start)
            return
        except BaseException:  # receive failed: stop watching (the request goes on)
            self.coro = None
            return
        if getattr(awaited, "_asyncio_future_blocking", False):
            awaited._asyncio_future_blocking = False
            self.waiting = awaited
            awaited.add_done_callback(self._step)
        elif awaited is None:  # a bare yield (asyncio.sleep(0)): step again on the next pass
            self.timer = self.loop.call_soon(self._step)
        else:  # not an asyncio awaitable: stop watching
            self.stop()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiting is not None:
            self.waiting.remove_done_callback(self._step)
            self.waiting = None
        coro = self.coro
        if coro is not None:
            self.coro = None
            try:
                coro.close()
            except RuntimeError:  # it awaited again on its way out: leave it
                pass


def _output_datatypes(name: str, outputs: dict[str, np.ndarray], specs: Any) -> dict[str, str]:
    """Protocol datatype of each output: the declared one (``specs``, the model's output
    specs), else the array's."""
    declared = {s.name: s.datatype for s in specs}
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
