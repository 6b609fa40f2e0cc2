"""OpenTelemetry request traces (inferline.observability), read back from the SDK's in-memory
exporter: span parentage, stage order and attributes over HTTP and in process; tracing off
produces nothing and imports nothing.

The process has one global TracerProvider: the module installs an SDK provider once (or adds
its processor to the SDK provider already there) and clears the exporter before each test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
from test_server import ServerThread

import inferline
from inferline import Batching, DeadlineExceeded, TensorSpec, observability
from inferline.server import create_app

otel_trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

ReadableSpan = sdk_trace.ReadableSpan

F4 = [TensorSpec("x", "FP32", (4,))]
Y4 = [TensorSpec("y", "FP32", (4,))]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    exp = InMemorySpanExporter()
    provider = otel_trace.get_tracer_provider()
    if not isinstance(provider, sdk_trace.TracerProvider):
        provider = sdk_trace.TracerProvider()
        otel_trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exp))
    return exp


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def double(x: np.ndarray) -> np.ndarray:
    return x * 2 + 1


class Gate:
    """Holds every model call until released, counting the calls inside (worker threads)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.inside = 0
        self.open = False

    def model(self, x: np.ndarray) -> np.ndarray:
        with self.cond:
            self.inside += 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.open, timeout=30)
        return x * 2 + 1

    def wait_inside(self, n: int) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.inside >= n, timeout=30), (
                f"{n} calls never entered the model"
            )

    def release(self) -> None:
        with self.cond:
            self.open = True
            self.cond.notify_all()


async def start_model(
    engine: inferline.Engine,
    name: str,
    model: Callable[[np.ndarray], np.ndarray],
    *,
    max_batch_size: int = 8,
    instances: int = 1,
) -> None:
    """Registers and starts ``model`` as ``name`` on a running engine (no warm-up)."""
    engine.register(
        name,
        model,
        inputs=F4,
        outputs=Y4,
        batching=Batching(max_batch_size=max_batch_size),
        instances=instances,
        warmup=False,
        start=False,
    )
    await engine.start_version(name, 1)


def wait_for_spans(
    exporter: InMemorySpanExporter, done: Callable[[Sequence[ReadableSpan]], bool]
) -> Sequence[ReadableSpan]:
    """The exported spans once ``done`` says they are all there (a server span ends after
    its answer is sent, so the client may see the answer first)."""
    deadline = time.monotonic() + 30
    while True:
        got = exporter.get_finished_spans()
        if done(got):
            return got
        assert time.monotonic() < deadline, f"spans never complete: {[s.name for s in got]}"
        time.sleep(0.01)


def by_name(got: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    names = [s.name for s in got]
    assert len(names) == len(set(names)), f"duplicate span names: {names}"
    return {s.name: s for s in got}


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.parent.span_id == parent.context.span_id, f"{child.name} not under {parent.name}"
    assert child.context.trace_id == parent.context.trace_id
    assert child.kind == SpanKind.INTERNAL


def times(s: ReadableSpan) -> tuple[int, int]:
    assert s.start_time is not None and s.end_time is not None
    return s.start_time, s.end_time


# ------------------------------------------------------------------------------ HTTP


def test_http_request_with_traceparent_gives_a_server_span_and_stage_children(
    spans: InMemorySpanExporter,
) -> None:
    engine = inferline.Engine(tracing=True)
    engine.register("double", double, inputs=F4, outputs=Y4, batching=Batching(max_batch_size=4))
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    with ServerThread(create_app(engine)) as server:
        spans.clear()  # nothing from start-up (warm-up is not traced anyway)
        r = httpx.post(
            f"http://127.0.0.1:{server.port}/v2/models/double/infer",
            json=body,
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [3, 5, 7, 9]
        got = by_name(wait_for_spans(spans, lambda s: any(x.kind == SpanKind.SERVER for x in s)))
    assert set(got) == {"POST /v2/models/{model}/infer", "queue", "compute", "serialise"}
    server_span = got["POST /v2/models/{model}/infer"]
    assert server_span.kind == SpanKind.SERVER
    # The caller's traceparent is the parent: same trace, remote parent span.
    assert server_span.parent is not None and server_span.parent.is_remote
    assert format(server_span.context.trace_id, "032x") == TRACE_ID
    assert format(server_span.parent.span_id, "016x") == PARENT_ID
    attrs = server_span.attributes or {}
    assert attrs["http.response.status_code"] == 200
    assert attrs["inferline.model"] == "double"
    assert attrs["url.path"] == "/v2/models/double/infer"
    for name in ("queue", "compute", "serialise"):
        assert_child(got[name], server_span)
    compute_attrs = got["compute"].attributes or {}
    assert compute_attrs["inferline.batch_size"] == 1
    assert compute_attrs["inferline.instance"] == 0
    # In time: the request, then queue -> compute -> serialise inside it.
    start, end = times(server_span)
    q0, q1 = times(got["queue"])
    c0, c1 = times(got["compute"])
    s0, s1 = times(got["serialise"])
    assert start <= q0 <= q1 <= c0 <= c1 <= s0 <= s1 <= end


def test_http_error_answer_marks_the_server_span(spans: InMemorySpanExporter) -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise ValueError("this model always fails")

    engine = inferline.Engine(tracing=True)
    engine.register("broken", broken, inputs=F4, outputs=Y4, warmup=False)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    with ServerThread(create_app(engine)) as server:
        r = httpx.post(
            f"http://127.0.0.1:{server.port}/v2/models/broken/infer", json=body, timeout=30
        )
        assert r.status_code == 500
        assert "this model always fails" in r.json()["error"]
        got = by_name(wait_for_spans(spans, lambda s: any(x.kind == SpanKind.SERVER for x in s)))
    server_span = got["POST /v2/models/{model}/infer"]
    assert server_span.parent is None  # no traceparent: a new trace
    assert server_span.status.status_code == StatusCode.ERROR
    assert (server_span.attributes or {})["http.response.status_code"] == 500
    # The batch was computed (and failed): queue and compute, no serialise.
    assert set(got) == {"POST /v2/models/{model}/infer", "queue", "compute"}


# ------------------------------------------------------------------------------ in process


@pytest.mark.asyncio
async def test_in_process_infer_under_an_active_span(spans: InMemorySpanExporter) -> None:
    tracer = otel_trace.get_tracer("test")
    async with inferline.Engine(tracing=True) as engine:
        await start_model(engine, "double", double)
        spans.clear()
        x = np.arange(4, dtype=np.float32)
        with tracer.start_as_current_span("caller"):
            y = await engine.infer("double", x)
        np.testing.assert_array_equal(y, x * 2 + 1)
        # No active span: no span at all, even with tracing on.
        await engine.infer("double", x)
    got = by_name(spans.get_finished_spans())
    assert set(got) == {"caller", "inferline.infer double", "queue", "compute"}
    own = got["inferline.infer double"]
    assert own.kind == SpanKind.INTERNAL
    assert_child(own, got["caller"])
    assert (own.attributes or {})["inferline.model"] == "double"
    assert_child(got["queue"], own)
    assert_child(got["compute"], own)
    o0, o1 = times(own)
    q0, q1 = times(got["queue"])
    c0, c1 = times(got["compute"])
    assert o0 <= q0 <= q1 <= c0 <= c1 <= o1


@pytest.mark.asyncio
async def test_compute_span_carries_the_batch_size(spans: InMemorySpanExporter) -> None:
    gate = Gate()
    tracer = otel_trace.get_tracer("test")
    async with inferline.Engine(tracing=True) as engine:
        await start_model(engine, "gated", gate.model, max_batch_size=8)
        x = np.ones(4, dtype=np.float32)
        with tracer.start_as_current_span("caller"):
            first = asyncio.ensure_future(engine.infer("gated", x))
            await asyncio.to_thread(gate.wait_inside, 1)  # the only instance is now busy
            rest = [asyncio.ensure_future(engine.infer("gated", x)) for _ in range(3)]
            await wait_until(lambda: engine.stats("gated")["queue_depth"] == 3)
            gate.release()
            await asyncio.gather(first, *rest)
    compute = [s for s in spans.get_finished_spans() if s.name == "compute"]
    sizes = sorted((s.attributes or {})["inferline.batch_size"] for s in compute)
    assert sizes == [1, 3, 3, 3]


@pytest.mark.asyncio
async def test_compute_span_names_the_instance(spans: InMemorySpanExporter) -> None:
    gate = Gate()
    tracer = otel_trace.get_tracer("test")
    async with inferline.Engine(tracing=True) as engine:
        await start_model(engine, "gated", gate.model, max_batch_size=1, instances=2)
        x = np.ones(4, dtype=np.float32)
        with tracer.start_as_current_span("caller"):
            calls = [asyncio.ensure_future(engine.infer("gated", x)) for _ in range(2)]
            await asyncio.to_thread(gate.wait_inside, 2)  # one call on each instance
            gate.release()
            await asyncio.gather(*calls)
    compute = [s for s in spans.get_finished_spans() if s.name == "compute"]
    assert sorted((s.attributes or {})["inferline.instance"] for s in compute) == [0, 1]


@pytest.mark.asyncio
async def test_a_request_that_expires_in_the_queue_has_no_compute_span(
    spans: InMemorySpanExporter,
) -> None:
    gate = Gate()
    tracer = otel_trace.get_tracer("test")
    async with inferline.Engine(tracing=True) as engine:
        await start_model(engine, "gated", gate.model, max_batch_size=1)
        x = np.ones(4, dtype=np.float32)
        first = asyncio.ensure_future(engine.infer("gated", x))
        await asyncio.to_thread(gate.wait_inside, 1)
        with tracer.start_as_current_span("caller"):
            with pytest.raises(DeadlineExceeded, match=r"no answer within the 0\.05s timeout"):
                await engine.infer("gated", x, timeout=0.05)
        gate.release()
        await first
    got = by_name(spans.get_finished_spans())
    own = got["inferline.infer gated"]
    assert own.status.status_code == StatusCode.ERROR
    assert "DeadlineExceeded" in (own.status.description or "")
    assert "compute" not in got


async def wait_until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------------------ off


@pytest.mark.asyncio
async def test_tracing_off_makes_no_spans(spans: InMemorySpanExporter) -> None:
    tracer = otel_trace.get_tracer("test")
    async with inferline.Engine(tracing=False) as engine:
        await start_model(engine, "double", double)
        with tracer.start_as_current_span("caller"):
            await engine.infer("double", np.ones(4, dtype=np.float32))
    assert [s.name for s in spans.get_finished_spans()] == ["caller"]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "INFERLINE_OTEL"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


SERVE_ONE = """
    import asyncio, sys
    import numpy as np
    import inferline
    from inferline import TensorSpec

    async def main():
        async with inferline.Engine() as e:
            e.register("m", lambda x: x + 1, inputs=[TensorSpec("x", "FP32", (2,))],
                       outputs=[TensorSpec("y", "FP32", (2,))], start=False)
            await e.start_version("m", 1)
            print((await e.infer("m", np.zeros(2, np.float32))).tolist())
            print("tracing", e._tracing is not None)

    asyncio.run(main())
    print("otel imported", "opentelemetry" in sys.modules)
"""


def test_tracing_off_does_not_import_opentelemetry() -> None:
    done = run_python(SERVE_ONE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[1.0, 1.0]", "tracing False", "otel imported False"]


def test_env_var_switches_tracing_on() -> None:
    done = run_python(SERVE_ONE, INFERLINE_OTEL="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["[1.0, 1.0]", "tracing True", "otel imported True"]


def test_tracing_on_without_opentelemetry_says_what_to_install() -> None:
    done = run_python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        import inferline
        try:
            inferline.Engine(tracing=True)
        except ImportError as e:
            print(e)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "tracing is on" in done.stdout
    assert "pip install 'inferline[otel]'" in done.stdout


def test_tracing_switch_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="tracing must be True, False or None, got 'yes'"):
        inferline.Engine(tracing="yes")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ gRPC hook


def test_grpc_model_infer_with_traceparent_metadata(spans: InMemorySpanExporter) -> None:
    tc_grpc = pytest.importorskip("tritonclient.grpc")
    from test_grpc import Served  # the gRPC tests' harness (needs tritonclient's gRPC client)

    method = "inference.GRPCInferenceService/ModelInfer"
    engine = inferline.Engine(tracing=True)
    engine.register("double", double, inputs=F4, outputs=Y4, batching=Batching(max_batch_size=4))
    with Served(engine) as server:
        spans.clear()
        client = tc_grpc.InferenceServerClient(server.url)
        try:
            x = tc_grpc.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.arange(4, dtype=np.float32)[None])
            result = client.infer(
                "double", [x], headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
            )
            assert result.as_numpy("y").tolist() == [[1, 3, 5, 7]]
        finally:
            client.close()
        got = by_name(wait_for_spans(spans, lambda s: any(x.kind == SpanKind.SERVER for x in s)))
    # The RPC's span is the request's span: the engine adds its stages to it, no span of its own.
    assert set(got) == {method, "queue", "compute", "serialise"}
    rpc = got[method]
    assert rpc.kind == SpanKind.SERVER
    assert rpc.parent is not None and rpc.parent.is_remote
    assert format(rpc.context.trace_id, "032x") == TRACE_ID
    assert format(rpc.parent.span_id, "016x") == PARENT_ID
    assert (rpc.attributes or {})["rpc.method"] == "ModelInfer"
    assert (rpc.attributes or {})["inferline.model"] == "double"
    assert_child(got["queue"], rpc)
    assert_child(got["compute"], rpc)
    assert_child(got["serialise"], rpc)
    assert (got["compute"].attributes or {})["inferline.batch_size"] == 1
    start, end = times(rpc)
    q0, q1 = times(got["queue"])
    c0, c1 = times(got["compute"])
    s0, s1 = times(got["serialise"])
    assert start <= q0 <= q1 <= c0 <= c1 <= s0 <= s1 <= end


def test_grpc_hook_leaves_the_handler_alone_when_tracing_is_off() -> None:
    async def model_infer(request: Any, context: Any) -> None:
        return None

    engine = inferline.Engine(tracing=False)
    assert observability.traced_rpc(engine, "s/ModelInfer", model_infer) is model_infer


# ------------------------------------------------------------------------------ serve --otel


def test_configure_sdk_refuses_an_unknown_exporter() -> None:
    done = run_python(
        """
        from inferline import observability
        try:
            observability.configure_sdk()
        except ValueError as e:
            print(e)
        """,
        OTEL_TRACES_EXPORTER="zipkin-ish",
    )
    assert done.returncode == 0, done.stderr
    assert "OTEL_TRACES_EXPORTER='zipkin-ish' is not supported" in done.stdout


def test_configure_sdk_console_exports_the_request_span() -> None:
    done = run_python(
        """
        import asyncio, json
        import numpy as np
        import inferline
        from inferline import TensorSpec, observability
        from opentelemetry import trace

        print(observability.configure_sdk())
        observability.enable()

        async def main():
            async with inferline.Engine() as e:
                e.register("m", lambda x: x + 1, inputs=[TensorSpec("x", "FP32", (2,))],
                           outputs=[TensorSpec("y", "FP32", (2,))], start=False)
                await e.start_version("m", 1)
                with trace.get_tracer("t").start_as_current_span("caller"):
                    await e.infer("m", np.zeros(2, np.float32))

        asyncio.run(main())
        trace.get_tracer_provider().shutdown()
        """,
        OTEL_TRACES_EXPORTER="console",
    )
    assert done.returncode == 0, done.stderr
    first, _, rest = done.stdout.partition("\n")
    assert first == "tracing: OpenTelemetry SDK, exporter console (OTEL_TRACES_EXPORTER)"
    names = {json.loads(block)["name"] for block in _json_objects(rest)}
    assert names == {"caller", "inferline.infer m", "queue", "compute"}


def _json_objects(text: str) -> list[str]:
    """The top-level JSON objects printed one after another (ConsoleSpanExporter's output)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                out.append(text[start : i + 1])
    return out
