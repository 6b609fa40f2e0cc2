"""Request spans of the engine's paths beside ``infer``'s: ``infer_batch``, a model with stages
and a result cache (``Tracing.request`` and ``Tracing.on_miss``), read back from the SDK's
in-memory exporter.

Each test calls the hooks as the engine calls them around the path (a request span in a request
span adds nothing, so the engine's own call inside collapses into the test's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import numpy as np
import pytest
from test_tracing import F4, Y4, assert_child, by_name, double, exporter, spans, times

import inferline
from inferline import Batching, InvalidInput, ModelError
from inferline.engine.rows import infer_cached
from inferline.engine.stages import Prepared, Stage

otel_trace = pytest.importorskip("opentelemetry.trace")
from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

__all__ = ["exporter", "spans"]  # the fixtures, imported for pytest

T = TypeVar("T")


def request(
    engine: inferline.Engine, op: str, name: str, call: Awaitable[T], **kw: Any
) -> Awaitable[T]:
    """``call`` as the engine's request hook runs it."""
    tracing = engine._tracing
    assert tracing is not None
    return tracing.request(op, engine._route(name, None), call, **kw)  # type: ignore[no-any-return]


async def started(engine: inferline.Engine, name: str, fn: Any, **kw: Any) -> None:
    engine.register(
        name,
        fn,
        inputs=F4,
        outputs=Y4,
        batching=Batching(max_batch_size=8),
        warmup=False,
        start=False,
        **kw,
    )
    await engine.start_version(name, 1)


def negative_fails(x: np.ndarray) -> np.ndarray:
    if (x < 0).any():
        raise ValueError("negative input")
    return x


@pytest.mark.asyncio
async def test_infer_batch_gets_one_request_span(spans: InMemorySpanExporter) -> None:
    tracer = otel_trace.get_tracer("test")
    xs = np.arange(12, dtype=np.float32).reshape(3, 4)
    async with inferline.Engine(tracing=True) as engine:
        await started(engine, "double", double)
        await started(engine, "fussy", negative_fails)
        spans.clear()
        with tracer.start_as_current_span("caller"):
            # A request span inside a request span (the engine's own hook) adds nothing.
            inner = request(engine, "infer_batch", "double", engine.infer_batch("double", xs))
            y = await request(engine, "infer_batch", "double", inner, items=xs)
            np.testing.assert_array_equal(y, xs * 2 + 1)
            with pytest.raises(ModelError, match="negative input"):
                bad = engine.infer_batch("fussy", {"x": -xs})
                await request(engine, "infer_batch", "fussy", bad, items={"x": -xs})
        # No span current: the call alone, no span.
        await request(engine, "infer_batch", "double", engine.infer_batch("double", xs))
    got = by_name(spans.get_finished_spans())
    assert set(got) == {"caller", "inferline.infer_batch double", "inferline.infer_batch fussy"}
    ok = got["inferline.infer_batch double"]
    assert_child(ok, got["caller"])
    assert dict(ok.attributes or {}) == {
        "inferline.model": "double",
        "inferline.version": 1,
        "inferline.rows": 3,
    }
    assert ok.status.status_code == StatusCode.UNSET
    failed = got["inferline.infer_batch fussy"]
    assert_child(failed, got["caller"])
    assert failed.status.status_code == StatusCode.ERROR
    assert "negative input" in (failed.status.description or "")
    assert [e.name for e in failed.events] == ["exception"]


def miss_and_hit(finished: Sequence[ReadableSpan]) -> tuple[ReadableSpan, ReadableSpan]:
    """The ``inferline.infer cached`` spans under the callers' spans ``miss`` and ``hit``,
    checked to say a miss and a hit."""
    callers = {s.name: s for s in finished if s.name in ("miss", "hit")}
    own = {
        s.parent.span_id: s
        for s in finished
        if s.name == "inferline.infer cached" and s.parent is not None
    }
    miss = own[callers["miss"].context.span_id]
    hit = own[callers["hit"].context.span_id]
    assert (miss.attributes or {})["inferline.cache_hit"] is False
    assert (hit.attributes or {})["inferline.cache_hit"] is True
    return miss, hit


@pytest.mark.asyncio
async def test_a_cached_answer_says_hit_and_a_miss_has_queue_and_compute(
    spans: InMemorySpanExporter,
) -> None:
    tracer = otel_trace.get_tracer("test")
    x = np.arange(4, dtype=np.float32)
    async with inferline.Engine(tracing=True) as engine:
        await started(engine, "cached", double, cache=(16, 1 << 20))
        tracing = engine._tracing
        assert tracing is not None
        v = engine._route("cached", None)
        for caller in ("miss", "hit"):
            with tracer.start_as_current_span(caller):
                # What engine.infer runs for a version with a cache (check_priority_range aside).
                call = infer_cached(tracing.on_miss(engine.infer), v, x, 0, None)
                y = await request(engine, "infer", "cached", call, cached=True)
            np.testing.assert_array_equal(y, x * 2 + 1)
    finished = spans.get_finished_spans()
    assert sorted(s.name for s in finished) == sorted(
        ["miss", "hit", "inferline.infer cached", "inferline.infer cached", "queue", "compute"]
    )
    miss, hit = miss_and_hit(finished)
    assert miss.kind == hit.kind == SpanKind.INTERNAL
    stages = by_name([s for s in finished if s.name in ("queue", "compute")])
    assert_child(stages["queue"], miss)
    assert_child(stages["compute"], miss)
    m0, m1 = times(miss)
    assert m0 <= times(stages["queue"])[0] <= times(stages["compute"])[1] <= m1


class Scale:
    """A pre stage: a list of 4 numbers -> the core's float32 row, refusing strings."""

    def __call__(self, items: list[Any]) -> list[Any]:
        out = []
        for item in items:
            if isinstance(item, str):
                raise InvalidInput(f"expected 4 numbers, got {item!r}")
            out.append(Prepared(np.asarray(item, np.float32), {"scaled": True}))
        return out


@pytest.mark.asyncio
async def test_a_model_with_stages_gets_one_request_span(spans: InMemorySpanExporter) -> None:
    tracer = otel_trace.get_tracer("test")
    async with inferline.Engine(tracing=True) as engine:
        await started(engine, "staged", double, pre=Stage(Scale(), inputs=F4))
        spans.clear()
        with tracer.start_as_current_span("caller"):
            answer = await request(
                engine,
                "infer",
                "staged",
                engine.infer("staged", [1, 2, 3, 4], with_parameters=True),
            )
            with pytest.raises(InvalidInput, match="expected 4 numbers, got 'four'"):
                await request(engine, "infer", "staged", engine.infer("staged", "four"))
    np.testing.assert_array_equal(answer.output, [3, 5, 7, 9])
    assert answer.parameters == {"scaled": True}
    finished = spans.get_finished_spans()
    assert sorted(s.name for s in finished) == [
        "caller",
        "inferline.infer staged",
        "inferline.infer staged",
    ]
    caller = next(s for s in finished if s.name == "caller")
    ok, failed = sorted(
        (s for s in finished if s.name != "caller"), key=lambda s: s.status.status_code.value
    )
    for s in (ok, failed):
        assert_child(s, caller)
        assert (s.attributes or {})["inferline.model"] == "staged"
    assert ok.status.status_code == StatusCode.UNSET
    assert failed.status.status_code == StatusCode.ERROR
    assert "expected 4 numbers" in (failed.status.description or "")


@pytest.mark.asyncio
async def test_the_engine_itself_traces_infer_batch_and_cached_answers(
    spans: InMemorySpanExporter,
) -> None:
    """No hook called by the test: the engine's own ``infer_batch`` and cached ``infer`` open
    their request spans under the caller's, a cache miss with its queue and compute."""
    tracer = otel_trace.get_tracer("test")
    xs = np.arange(8, dtype=np.float32).reshape(2, 4)
    async with inferline.Engine(tracing=True) as engine:
        await started(engine, "double", double)
        await started(engine, "cached", double, cache=(16, 1 << 20))
        spans.clear()
        with tracer.start_as_current_span("batch"):
            np.testing.assert_array_equal(await engine.infer_batch("double", xs), xs * 2 + 1)
        for caller in ("miss", "hit"):
            with tracer.start_as_current_span(caller):
                np.testing.assert_array_equal(await engine.infer("cached", xs[0]), xs[0] * 2 + 1)
    finished = spans.get_finished_spans()
    assert sorted(s.name for s in finished) == sorted(
        [
            "batch",
            "inferline.infer_batch double",
            "miss",
            "hit",
            "inferline.infer cached",
            "inferline.infer cached",
            "queue",
            "compute",
        ]
    )
    got = {s.name: s for s in finished}
    batch = got["inferline.infer_batch double"]
    assert_child(batch, got["batch"])
    assert (batch.attributes or {})["inferline.rows"] == 2
    miss, _ = miss_and_hit(finished)
    assert_child(got["queue"], miss)
    assert_child(got["compute"], miss)
