"""The spans of a traced request (imported only when tracing is on; see the package's doc).

Stage spans are made after the request is answered, from the stamps the native core took
(``_core.Stamps``, filled only for requests submitted with ``submit_traced``), with explicit
start and end times: the core's clock is CLOCK_MONOTONIC (``time.monotonic_ns``), converted
to the epoch by the offset between ``time.time_ns()`` and ``time.monotonic_ns()`` read when the
spans are made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .. import __version__, _core
from ..engine.inputs import convert
from ..engine.rows import expire
from ..engine.versions import ServedVersion

__all__ = ["Tracing", "request_span"]

T = TypeVar("T")

# Context key under which a server span (HTTP, gRPC) says it is the request's span: the engine
# then hangs its stage spans on it instead of starting a span of its own.
_REQUEST_SPAN = otel_context.create_key("inferline.request_span")

_ASGIHeaders = Iterable[tuple[bytes, bytes]]


class _ASGIGetter(Getter[_ASGIHeaders]):
    """Reads propagation headers (``traceparent``, ``tracestate``, ...) from ASGI's
    ``scope["headers"]`` (lower-case byte names)."""

    def get(self, carrier: _ASGIHeaders, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier if k == name]
        return found or None

    def keys(self, carrier: _ASGIHeaders) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


class _MetadataGetter(Getter[Iterable[tuple[str, Any]]]):
    """Reads propagation keys from gRPC invocation metadata (``(key, value)`` pairs)."""

    def get(self, carrier: Iterable[tuple[str, Any]], key: str) -> list[str] | None:
        key = key.lower()
        found = [v for k, v in carrier if k.lower() == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Iterable[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_asgi_getter = _ASGIGetter()
_metadata_getter = _MetadataGetter()


def request_span() -> Span | None:
    """The current request's server span, when a traced server request is being handled."""
    span = otel_context.get_value(_REQUEST_SPAN)
    return span if isinstance(span, Span) else None


class Tracing:
    """One engine's tracer. Used on the engine's event loop."""

    def __init__(self) -> None:
        self.tracer = trace.get_tracer("inferline", __version__)

    # -- in the engine ------------------------------------------------------------------------
    async def infer(
        self,
        loop: asyncio.AbstractEventLoop,
        v: ServedVersion,
        x: Any,
        priority: int,
        timeout: float | None,
    ) -> Any:
        """``engine.infer`` with tracing on (priority and timeout already checked): queue and
        compute spans under the request's server span, or under an INTERNAL span of its own
        when a span is current; no span and no stamps when no trace is active."""
        ctx = otel_context.get_current()  # read once: this runs for every request
        # Only _serving sets the key, always to a Span (no isinstance on the hot path).
        parent: Span | None = ctx.get(_REQUEST_SPAN)  # type: ignore[assignment]
        own: Span | None = None
        if parent is None and trace.get_current_span(ctx).get_span_context().is_valid:
            own = self.tracer.start_span(
                f"inferline.infer {v.name}",
                kind=SpanKind.INTERNAL,
                attributes={"inferline.model": v.name, "inferline.version": v.version},
            )
            parent = own
        stamps = _core.Stamps() if parent is not None and parent.is_recording() else None
        try:
            result = await _submit_and_wait(loop, v, x, priority, timeout, stamps)
        except BaseException as e:
            if own is not None:
                own.record_exception(e)
                own.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
            raise
        finally:
            if stamps is not None and stamps.filled:
                assert parent is not None
                self.stage_spans(parent, stamps)
            if own is not None:
                own.end()
        return result

    async def request(
        self,
        op: str,
        v: ServedVersion,
        call: Awaitable[T],
        *,
        items: Any = None,
        cached: bool = False,
    ) -> T:
        """``await call`` (an engine request that takes no stamps of its own: ``infer_batch``
        (``op="infer_batch"``), a model with stages, a cached answer) as one request span.

        Under a server span (HTTP, gRPC) or an enclosing request span, that span is the
        request's and nothing is added. Otherwise, when a span is current, an INTERNAL span
        ``inferline.{op} {model}`` is started and made the request span while ``call`` runs, so
        the ``queue`` and ``compute`` spans of what it sends through ``infer``'s path (a cache
        miss, a model without stages asked ``with_parameters``) hang under it; a call with no
        such path (the rows of ``infer_batch`` and of a pipeline go to the core without
        stamps) has the span alone. ``items``: the request's items, counted into
        ``inferline.rows``. ``cached``: the version answers from its result cache, and the
        request span says ``inferline.cache_hit`` (true until :meth:`on_miss`'s wrapper runs).
        No trace active: ``call`` alone."""
        ctx = otel_context.get_current()
        parent: Span | None = ctx.get(_REQUEST_SPAN)  # type: ignore[assignment]
        if parent is not None:
            if cached and parent.is_recording():
                parent.set_attribute("inferline.cache_hit", True)
            return await call
        if not trace.get_current_span(ctx).get_span_context().is_valid:
            return await call
        attributes: dict[str, Any] = {"inferline.model": v.name, "inferline.version": v.version}
        if items is not None:
            attributes["inferline.rows"] = _count(items)
        if cached:
            attributes["inferline.cache_hit"] = True
        span = self.tracer.start_span(
            f"inferline.{op} {v.name}", kind=SpanKind.INTERNAL, attributes=attributes
        )
        with _serving(span):
            return await call

    def on_miss(self, send: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """``send`` (what a result cache calls for what it does not hold: ``engine.infer`` or
        the rows' submit) marking the current request span ``inferline.cache_hit = false``
        when it runs."""

        async def missed(*args: Any, **kwargs: Any) -> T:
            span = request_span()
            if span is not None and span.is_recording():
                span.set_attribute("inferline.cache_hit", False)
            return await send(*args, **kwargs)

        return missed

    def stage_spans(self, parent: Span, stamps: _core.Stamps) -> None:
        """``queue`` and ``compute`` under ``parent``, as far as the request got."""
        offset = time.time_ns() - time.monotonic_ns()
        ctx = trace.set_span_in_context(parent)
        if stamps.t_dispatch:
            queue = self.tracer.start_span(
                "queue", context=ctx, start_time=stamps.t_enqueue + offset
            )
            queue.end(end_time=stamps.t_dispatch + offset)
        if stamps.t_compute_end:
            compute = self.tracer.start_span(
                "compute",
                context=ctx,
                start_time=stamps.t_compute_start + offset,
                attributes={
                    "inferline.batch_size": stamps.batch_size,
                    "inferline.instance": stamps.instance,
                },
            )
            compute.end(end_time=stamps.t_compute_end + offset)

    # -- in the servers -----------------------------------------------------------------------
    async def http(
        self,
        serve: Callable[[Any, Any, Any], Awaitable[None]],
        scope: Any,
        receive: Any,
        send: Any,
    ) -> None:
        """Runs the ASGI infer handler ``serve`` inside the request's SERVER span, whose parent
        is the caller's ``traceparent`` (if any); the span ends once the answer is sent."""
        headers = scope["headers"]
        model = scope["path_params"]["model"]
        route = "/v2/models/{model}" + (
            "/versions/{version}/infer" if "version" in scope["path_params"] else "/infer"
        )
        span = self.tracer.start_span(
            f"POST {route}",
            context=propagate.extract(headers, getter=_asgi_getter),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "POST",
                "http.route": route,
                "url.path": scope.get("path", ""),
                "inferline.model": model,
            },
        )
        status = 0

        async def traced_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status >= 500:  # a server span's error: 5xx only (HTTP conventions)
                    span.set_status(Status(StatusCode.ERROR))
            await send(message)

        with _serving(span):
            await serve(scope, receive, traced_send)

    def encoder(self, encode: Callable[..., T]) -> Callable[..., T]:
        """``encode`` (the response encoder) run inside a ``serialise`` span of the current
        request span."""

        def traced_encode(*args: Any, **kwargs: Any) -> T:
            parent = request_span()
            if parent is None or not parent.is_recording():
                return encode(*args, **kwargs)
            with self.tracer.start_as_current_span(
                "serialise", context=trace.set_span_in_context(parent)
            ):
                return encode(*args, **kwargs)

        return traced_encode

    async def grpc(
        self,
        method: str,
        metadata: Iterable[tuple[str, Any]] | None,
        model: str,
        call: Callable[[], Awaitable[T]],
    ) -> T:
        """Runs ``call()`` (a gRPC handler's work) inside the RPC's SERVER span, whose parent
        is the ``traceparent`` of the invocation metadata (if any). ``method``: the full RPC
        name, e.g. ``inference.GRPCInferenceService/ModelInfer``."""
        service, _, name = method.rpartition("/")
        span = self.tracer.start_span(
            method,
            context=propagate.extract(list(metadata or ()), getter=_metadata_getter),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": name,
                "inferline.model": model,
            },
        )
        with _serving(span):
            return await call()

    def rpc_handler(
        self, method: str, handler: Callable[[Any, Any], Awaitable[T]]
    ) -> Callable[[Any, Any], Awaitable[T]]:
        """The unary gRPC ``handler(request, context)`` run by :meth:`grpc` (metadata from
        ``context.invocation_metadata()``, the model from ``request.model_name``)."""

        async def traced(request: Any, context: Any) -> T:
            return await self.grpc(
                method,
                context.invocation_metadata(),
                getattr(request, "model_name", ""),
                lambda: handler(request, context),
            )

        return traced


def _count(items: Any) -> int:
    """Items in a request: the leading dimension of an array (or of a dict's first array),
    or the length of a list."""
    if isinstance(items, dict):
        items = next(iter(items.values()), ())
    shape = getattr(items, "shape", None)
    if shape:
        return int(shape[0])
    try:
        return len(items)
    except TypeError:
        return 1


@contextmanager
def _serving(span: Span) -> Iterator[None]:
    """``span`` current as the request's span while the block runs; an exception that leaves
    the block marks it as an error; the span ends with the block."""
    ctx = otel_context.set_value(_REQUEST_SPAN, span, trace.set_span_in_context(span))
    token = otel_context.attach(ctx)
    try:
        yield
    except BaseException as e:
        span.record_exception(e)
        span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))
        raise
    finally:
        otel_context.detach(token)
        span.end()


async def _submit_and_wait(
    loop: asyncio.AbstractEventLoop,
    v: ServedVersion,
    x: Any,
    priority: int,
    timeout: float | None,
    stamps: _core.Stamps | None,
) -> Any:
    # engine.infer's submit and wait, with the stamps attached when there are any.
    fut = loop.create_future()
    sched = v.sched
    if stamps is None:
        h = sched.submit(x, priority, timeout, fut)
        if h is None:
            h = sched.submit(convert(v.name, v.inputs, x), priority, timeout, fut, converted=True)
    else:
        h = sched.submit_traced(x, priority, timeout, fut, stamps)
        if h is None:
            x = convert(v.name, v.inputs, x)
            h = sched.submit_traced(x, priority, timeout, fut, stamps, converted=True)
    timer = (
        None
        if timeout is None
        else loop.call_later(timeout, expire, fut, v, sched.cancel, h, timeout)
    )
    try:
        return await fut
    except asyncio.CancelledError:
        sched.cancel(h, False)
        raise
    finally:
        if timer is not None:
            timer.cancel()
