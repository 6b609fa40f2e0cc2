"""The asyncio engine over the native core: batching, priorities, deadlines, errors, lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import inferline
from inferline import Batching, TensorSpec

DIM = 8
X = [TensorSpec("x", "FP32", (DIM,))]
Y = [TensorSpec("y", "FP32", (DIM,))]


class Recorder:
    """A batch model that records what it saw and can be held at a gate."""

    def __init__(self, fn: Callable[[np.ndarray], Any] | None = None) -> None:
        self.fn = fn or (lambda b: b * 2.0)
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> Any:
        self.entered.set()
        self.gate.wait(10)
        with self.lock:
            self.batches.append(batch.copy())
        return self.fn(batch)

    def seen_markers(self) -> set[float]:
        with self.lock:
            return {float(row[0]) for b in self.batches for row in b}

    def sizes(self) -> list[int]:
        with self.lock:
            return [len(b) for b in self.batches]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def item(marker: float) -> np.ndarray:
    return np.full(DIM, marker, dtype=np.float32)


def make_engine(model: Any, **batching: Any) -> inferline.Engine:
    engine = inferline.Engine()
    opts = {"max_batch_size": 8, "max_queue_delay_ms": 2.0, "max_queue_size": 1024}
    opts.update(batching)
    engine.register("m", model, inputs=X, outputs=Y, batching=Batching(**opts), warmup=False)
    return engine


async def hold_worker(engine: inferline.Engine, model: Recorder) -> asyncio.Task[Any]:
    """Blocks the single worker inside the model with one request; returns that request."""
    model.gate.clear()
    model.entered.clear()
    blocker = asyncio.ensure_future(engine.infer("m", item(-1.0)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 10)
    return blocker


@pytest.mark.asyncio
async def test_thousand_concurrent_requests_each_get_their_own_row() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=32) as engine:
        xs = [np.arange(DIM, dtype=np.float32) + i for i in range(1000)]
        ys = await asyncio.gather(*(engine.infer("m", x) for x in xs))
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_array_equal(y, x * 2.0)
        stats = engine.stats("m")
    assert stats["requests"]["success"] == 1000
    assert stats["in_flight"] == 0 and stats["queue_depth"] == 0
    sizes = model.sizes()
    assert sum(sizes) == 1000
    assert max(sizes) <= 32
    assert max(sizes) > 1, "concurrent requests should share batches"
    assert stats["batch_size"]["max"] <= 32


@pytest.mark.asyncio
async def test_batches_never_exceed_max_batch_size_under_concurrency() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=5, max_queue_delay_ms=20) as engine:
        await asyncio.gather(*(engine.infer("m", item(i)) for i in range(203)))
    sizes = model.sizes()
    assert max(sizes) == 5
    assert sum(sizes) == 203
    assert len(sizes) >= 41


@pytest.mark.asyncio
async def test_lone_request_pays_no_window_by_default() -> None:
    # Work-conserving (the default): an idle instance takes a lone request at once, however
    # long the window; under the fixed window the same request would wait 10 s.
    model = Recorder()
    async with make_engine(model, max_batch_size=16, max_queue_delay_ms=10_000) as engine:
        t0 = time.monotonic()
        y = await asyncio.wait_for(engine.infer("m", item(3)), 5)
        np.testing.assert_array_equal(y, item(3) * 2.0)
        assert time.monotonic() - t0 < 5
        assert engine.model_info("m").max_batch_size == 16
    assert model.sizes() == [1]


@pytest.mark.asyncio
async def test_requests_accumulate_while_the_instance_is_busy() -> None:
    # Work-conserving under load: what queues while the only instance computes leaves as one
    # batch when it is free.
    model = Recorder()
    async with make_engine(model, max_batch_size=16, max_queue_delay_ms=10_000) as engine:
        blocker = await hold_worker(engine, model)
        waiting = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(10)]
        while engine.stats("m")["queue_depth"] < 10:
            await asyncio.sleep(0.001)
        model.gate.set()
        await asyncio.gather(blocker, *waiting)
    assert model.sizes() == [1, 10]


@pytest.mark.asyncio
async def test_fixed_window_holds_a_lone_request_for_company() -> None:
    calls: list[float] = []

    def model(b: np.ndarray) -> np.ndarray:
        calls.append(time.monotonic())
        return b

    delay_ms = 30.0
    async with make_engine(
        model, max_batch_size=16, max_queue_delay_ms=delay_ms, policy="fixed_window"
    ) as engine:
        t0 = time.monotonic()
        y = await engine.infer("m", item(3))
        np.testing.assert_array_equal(y, item(3))
    waited = calls[0] - t0
    # It must wait for company no longer than the delay (plus scheduling slack), and a lone
    # request in a 16-batch is dispatched by the delay, not by a full batch.
    assert waited < delay_ms / 1000 + 0.25
    assert waited >= delay_ms / 1000 * 0.5


@pytest.mark.asyncio
async def test_zero_delay_dispatches_at_once() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=64, max_queue_delay_ms=0) as engine:
        y = await asyncio.wait_for(engine.infer("m", item(1)), 5)
    np.testing.assert_array_equal(y, item(2))


@pytest.mark.asyncio
async def test_higher_priority_served_first_under_saturation() -> None:
    model = Recorder()
    engine = make_engine(model, max_batch_size=4, max_queue_delay_ms=1, priority_levels=3)
    async with engine:
        blocker = await hold_worker(engine, model)
        low = [
            asyncio.ensure_future(engine.infer("m", item(100 + i), priority=2)) for i in range(8)
        ]
        mid = [
            asyncio.ensure_future(engine.infer("m", item(200 + i), priority=1)) for i in range(4)
        ]
        high = [
            asyncio.ensure_future(engine.infer("m", item(300 + i), priority=0)) for i in range(4)
        ]
        await until(lambda: engine.stats("m")["queue_depth"] == 16)
        model.gate.set()
        await asyncio.gather(blocker, *low, *mid, *high)
    order = [float(r[0]) for b in model.batches[1:] for r in b]
    assert order[:4] == [300.0, 301.0, 302.0, 303.0]
    assert order[4:8] == [200.0, 201.0, 202.0, 203.0]
    assert sorted(order[8:]) == [100.0 + i for i in range(8)]


@pytest.mark.asyncio
async def test_queue_full_raises_at_once() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2, max_queue_size=3) as engine:
        blocker = await hold_worker(engine, model)
        waiting = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(3)]
        await until(lambda: engine.stats("m")["queue_depth"] == 3)
        # Answered while the worker is still held: the call does not wait for room.
        with pytest.raises(inferline.QueueFullError, match=r"queue is full \(3 requests"):
            await asyncio.wait_for(engine.infer("m", item(99)), 10)
        assert model.sizes() == []
        model.gate.set()
        await asyncio.gather(blocker, *waiting)
        stats = engine.stats("m")
    assert stats["requests"]["queue_full"] == 1
    assert 99.0 not in model.seen_markers()


@pytest.mark.asyncio
async def test_expired_deadline_is_answered_without_compute() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2) as engine:
        blocker = await hold_worker(engine, model)
        # Answered while the worker is still held: from the queue, not after a compute.
        with pytest.raises(inferline.DeadlineExceeded, match="timeout"):
            await asyncio.wait_for(engine.infer("m", item(42), timeout=0.05), 10)
        assert model.sizes() == []
        model.gate.set()
        await blocker
        # A later request flushes the queue; the expired one must have been skipped.
        await engine.infer("m", item(43))
        stats = engine.stats("m")
    assert 42.0 not in model.seen_markers()
    assert 43.0 in model.seen_markers()
    assert stats["requests"]["deadline_exceeded"] == 1
    assert stats["in_flight"] == 0 and stats["queue_depth"] == 0


@pytest.mark.asyncio
async def test_deadline_exceeded_is_a_timeout_error_while_computing() -> None:
    model = Recorder()
    model.gate.clear()
    async with make_engine(model) as engine:
        request = asyncio.ensure_future(engine.infer("m", item(1), timeout=1.0))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 10)
        with pytest.raises(TimeoutError):  # the deadline passes while the model holds it
            await request
        model.gate.set()
        await until(lambda: engine.stats("m")["in_flight"] == 0)
        stats = engine.stats("m")
    assert 1.0 in model.seen_markers()  # it was computing when the timeout passed
    assert stats["requests"]["deadline_exceeded"] == 1
    assert stats["in_flight"] == 0


@pytest.mark.asyncio
async def test_cancelled_request_is_not_computed_and_nothing_leaks() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2) as engine:
        blocker = await hold_worker(engine, model)
        victim = asyncio.ensure_future(engine.infer("m", item(7)))
        await until(lambda: engine.stats("m")["queue_depth"] == 1)
        victim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await victim
        model.gate.set()
        await blocker
        await engine.infer("m", item(8))
        stats = engine.stats("m")
    assert 7.0 not in model.seen_markers()
    assert stats["requests"]["cancelled"] == 1
    assert stats["queue_depth"] == 0
    assert stats["in_flight"] == 0


@pytest.mark.asyncio
async def test_raising_model_fails_only_its_batch() -> None:
    def model(b: np.ndarray) -> np.ndarray:
        if (b[:, 0] == 13).any():
            raise RuntimeError("unlucky row")
        return b

    async with make_engine(model, max_batch_size=1) as engine:
        results = await asyncio.gather(
            *(engine.infer("m", item(i)) for i in range(20)), return_exceptions=True
        )
        after = await engine.infer("m", item(5))
        stats = engine.stats("m")
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], inferline.ModelError)
    assert "model 'm' failed: RuntimeError: unlucky row" in str(errors[0])
    np.testing.assert_array_equal(after, item(5))
    assert stats["requests"]["model_error"] == 1
    assert stats["requests"]["success"] == 20


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda b: b[:, :3], r"output 'y' has shape \(\d+, 3\); expected \(\d+, 8\)"),
        (lambda b: b[:1] if len(b) > 1 else b[:0], r"expected a leading batch dimension"),
        (lambda b: b.astype(np.float64), r"output 'y' has dtype float64; expected float32"),
        (lambda b: "nope", r"model returned str"),
    ],
)
async def test_bad_model_output_is_a_model_error(fn: Callable[..., Any], message: str) -> None:
    async with make_engine(fn) as engine:
        with pytest.raises(inferline.ModelError, match=message):
            await engine.infer("m", item(1))
        assert engine.stats("m")["in_flight"] == 0


@pytest.mark.asyncio
async def test_invalid_inputs_raise_clear_errors() -> None:
    engine = inferline.Engine()
    engine.register(
        "f",
        lambda b: b,
        inputs=[TensorSpec("x", "FP32", (4,), finite=True)],
        outputs=[TensorSpec("y", "FP32", (4,))],
        warmup=False,
    )
    async with engine:
        with pytest.raises(inferline.InvalidInput, match=r"dtype float64; expected FP32"):
            await engine.infer("f", np.zeros(4))
        with pytest.raises(inferline.InvalidInput, match=r"shape \(3,\); expected \(4,\)"):
            await engine.infer("f", np.zeros(3, np.float32))
        with pytest.raises(inferline.InvalidInput, match="use infer_batch"):
            await engine.infer("f", np.zeros((1, 4), np.float32))
        with pytest.raises(inferline.InvalidInput, match="NaN or Inf"):
            await engine.infer("f", np.array([0, np.nan, 0, 0], np.float32))
        with pytest.raises(inferline.InvalidInput, match=r"not array-like|holds"):
            await engine.infer("f", ["a", "b", "c", "d"])
        with pytest.raises(inferline.InvalidInput, match="priority must be an int >= 0"):
            await engine.infer("f", np.zeros(4, np.float32), priority=-1)
        with pytest.raises(
            inferline.InvalidInput, match=r"priority 1 is out of range; expected 0..0"
        ):
            await engine.infer("f", np.zeros(4, np.float32), priority=1)
        with pytest.raises(inferline.InvalidInput, match="timeout must be a positive"):
            await engine.infer("f", np.zeros(4, np.float32), timeout=0)
        with pytest.raises(inferline.ModelNotFound, match="no model named 'g'"):
            await engine.infer("g", np.zeros(4, np.float32))
        # Lists and non-contiguous arrays are converted.
        y = await engine.infer("f", [1, 2, 3, 4])
        np.testing.assert_array_equal(y, np.array([1, 2, 3, 4], np.float32))
        strided = np.arange(8, dtype=np.float32)[::2]
        np.testing.assert_array_equal(await engine.infer("f", strided), strided)
        stats = engine.stats("f")
    assert stats["in_flight"] == 0


@pytest.mark.asyncio
async def test_several_inputs_and_outputs_as_dicts() -> None:
    def model(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"sum": batch["a"] + batch["b"], "first": batch["a"][:, :1].astype(np.int64)}

    engine = inferline.Engine()
    engine.register(
        "two",
        model,
        inputs=[TensorSpec("a", "FP32", (3,)), TensorSpec("b", "FP32", (3,))],
        outputs=[TensorSpec("sum", "FP32", (3,)), TensorSpec("first", "INT64", (1,))],
        batching=Batching(max_batch_size=4),
    )
    async with engine:
        outs = await asyncio.gather(
            *(
                engine.infer("two", {"a": np.full(3, i, np.float32), "b": np.ones(3, np.float32)})
                for i in range(10)
            )
        )
        with pytest.raises(inferline.InvalidInput, match=r"missing \['b'\]"):
            await engine.infer("two", {"a": np.zeros(3, np.float32)})
        with pytest.raises(inferline.InvalidInput, match="pass a dict"):
            await engine.infer("two", np.zeros(3, np.float32))
        a = np.arange(15, dtype=np.float32).reshape(5, 3)
        batch = await engine.infer_batch("two", {"a": a, "b": np.ones((5, 3), np.float32)})
        with pytest.raises(inferline.InvalidInput, match="same leading batch dimension"):
            await engine.infer_batch("two", {"a": a, "b": np.ones((4, 3), np.float32)})
        with pytest.raises(
            inferline.InvalidInput,
            match=r"model 'two': input 'b' has dtype float64; expected FP32 \(float32\)",
        ):
            await engine.infer_batch("two", {"a": a, "b": np.ones((5, 3), np.float64)})
    for i, o in enumerate(outs):
        np.testing.assert_array_equal(o["sum"], np.full(3, i + 1, np.float32))
        assert o["first"].dtype == np.int64 and o["first"][0] == i
    assert set(batch) == {"sum", "first"}
    np.testing.assert_array_equal(batch["sum"], a + 1)
    np.testing.assert_array_equal(batch["first"], a[:, :1].astype(np.int64))


@pytest.mark.asyncio
async def test_model_gets_zero_copy_view_and_may_return_it() -> None:
    seen: list[bool] = []

    def identity(b: np.ndarray) -> np.ndarray:
        seen.append(b.flags.owndata)
        return b  # the answers are views of the pooled batch buffer

    async with make_engine(identity, max_batch_size=4) as engine:
        first = await asyncio.gather(*(engine.infer("m", item(i)) for i in range(4)))
        second = await asyncio.gather(*(engine.infer("m", item(100 + i)) for i in range(4)))
    assert seen and not any(seen)
    # Earlier answers stay intact after later batches reuse the pool.
    for i, y in enumerate(first):
        np.testing.assert_array_equal(y, item(i))
    for i, y in enumerate(second):
        np.testing.assert_array_equal(y, item(100 + i))


@pytest.mark.asyncio
async def test_warmup_runs_every_batch_size_before_ready() -> None:
    sizes: list[int] = []

    def model(b: np.ndarray) -> np.ndarray:
        sizes.append(len(b))
        return b

    engine = inferline.Engine()
    engine.register("w", model, inputs=X, outputs=Y, batching=Batching(max_batch_size=4))
    assert not engine.ready
    await engine.start()
    assert sizes == [1, 2, 3, 4]
    assert engine.ready and engine.model_info("w").state == "ready"
    await engine.stop()
    assert engine.state == "stopped"


@pytest.mark.asyncio
async def test_failed_warmup_leaves_model_not_ready_with_reason() -> None:
    def broken(b: np.ndarray) -> np.ndarray:
        raise ValueError("weights missing")

    engine = inferline.Engine()
    engine.register("bad", broken, inputs=X, outputs=Y)
    engine.register("good", lambda b: b, inputs=X, outputs=Y)
    async with engine:
        info = engine.model_info("bad")
        assert info.state == "failed"
        assert info.reason is not None and "weights missing" in info.reason
        with pytest.raises(inferline.ModelNotReady, match="no ready version"):
            await engine.infer("bad", item(1))
        np.testing.assert_array_equal(await engine.infer("good", item(1)), item(1))
        assert not engine.ready


@pytest.mark.asyncio
async def test_stop_drains_accepted_work() -> None:
    model = Recorder(lambda b: (time.sleep(0.01), b)[1])
    engine = make_engine(model, max_batch_size=4)
    await engine.start()
    tasks = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(40)]
    await asyncio.sleep(0)
    await engine.stop(drain_timeout=10)
    results = await asyncio.gather(*tasks)
    assert len(results) == 40
    with pytest.raises(inferline.EngineStopped):
        await engine.infer("m", item(1))


@pytest.mark.asyncio
async def test_stop_answers_the_rest_engine_stopped_after_drain_timeout() -> None:
    model = Recorder()
    engine = make_engine(model, max_batch_size=1)
    await engine.start()
    blocker = await hold_worker(engine, model)
    waiting = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(5)]
    await asyncio.sleep(0)
    threading.Timer(0.3, model.gate.set).start()
    await engine.stop(drain_timeout=0.05)
    results = await asyncio.gather(blocker, *waiting, return_exceptions=True)
    assert isinstance(results[0], np.ndarray)  # the running batch finished
    assert all(isinstance(r, inferline.EngineStopped) for r in results[1:])
    assert "engine stopped" in str(results[1])
    stats = engine.stats("m")
    assert stats["requests"]["engine_stopped"] == 5
    assert stats["in_flight"] == 0


@pytest.mark.asyncio
async def test_stats_readable_while_traffic_runs() -> None:
    model = Recorder(lambda b: (time.sleep(0.001), b)[1])
    async with make_engine(model, max_batch_size=8) as engine:
        load = asyncio.ensure_future(
            asyncio.gather(*(engine.infer("m", item(i)) for i in range(400)))
        )
        snapshots = []
        while not load.done():
            snapshots.append(engine.stats("m"))
            await asyncio.sleep(0.005)
        await load
        final = engine.stats("m")
    assert final["requests"]["success"] == 400
    for key in ("queue_wait", "compute", "request", "batch_size"):
        h = final[key]
        assert h["count"] > 0
        assert 0 <= h["p50"] <= h["p90"] <= h["p99"] <= h["max"] * 1.0001
    assert final["request"]["p50"] > 0
    assert any(s["in_flight"] > 0 for s in snapshots)
    counts = [s["requests"]["success"] for s in snapshots]
    assert counts == sorted(counts)


@pytest.mark.asyncio
async def test_batch_decorator() -> None:
    calls: list[int] = []

    @inferline.batch(max_batch_size=16, max_queue_delay_ms=5)
    def double(b: np.ndarray) -> np.ndarray:
        calls.append(len(b))
        return b * 2

    outs = await asyncio.gather(*(double(np.full(3, i, np.float32)) for i in range(50)))
    for i, o in enumerate(outs):
        np.testing.assert_array_equal(o, np.full(3, 2 * i, np.float32))
    assert max(calls) > 1 and max(calls) <= 16
    assert double.stats()["requests"]["success"] == 50
    with pytest.raises(inferline.InvalidInput, match="expected"):
        await double(np.zeros(4, np.float32))
    await double.stop()


def test_works_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    model = Recorder()

    async def main() -> list[np.ndarray]:
        async with make_engine(model, max_batch_size=16) as engine:
            return await asyncio.gather(*(engine.infer("m", item(i)) for i in range(300)))

    outs = uvloop.run(main())
    for i, o in enumerate(outs):
        np.testing.assert_array_equal(o, item(2 * i))
    assert max(model.sizes()) > 1


@pytest.mark.asyncio
async def test_infer_before_start_says_so() -> None:
    engine = make_engine(Recorder())
    with pytest.raises(inferline.EngineStopped, match="the engine is not started"):
        await engine.infer("m", item(1))


def test_register_validation_messages() -> None:
    engine = inferline.Engine()
    with pytest.raises(ValueError, match="max_batch_size must be a positive int"):
        Batching(max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue_delay_ms must be a number >= 0"):
        Batching(max_queue_delay_ms=-1)
    with pytest.raises(ValueError, match="every dimension must be a positive int"):
        TensorSpec("x", "FP32", (0,))
    with pytest.raises(ValueError, match="unknown datatype"):
        TensorSpec("x", "FP33", (1,))
    with pytest.raises(ValueError, match="inputs must list at least one TensorSpec"):
        engine.register("m", lambda b: b, inputs=[])
    with pytest.raises(TypeError, match="model must be callable"):
        engine.register("m", 42, inputs=X)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="BYTES tensors cannot be batched"):
        engine.register("m", lambda b: b, inputs=[TensorSpec("s", "BYTES", (1,))])
    engine.register("m", lambda b: b, inputs=X)
    with pytest.raises(ValueError, match="version 1 is already registered"):
        engine.register("m", lambda b: b, inputs=X)


def test_build_info_reports_cuda() -> None:
    info = inferline.build_info()
    # The CUDA helpers are bound exactly in CUDA builds; a build without CUDA sees no device.
    assert info["cuda_compiled"] is hasattr(inferline._core.kernels, "cuda_linear")
    if not info["cuda_compiled"]:
        assert info["cuda_device_count"] == 0
    assert len(info["cuda_devices"]) == info["cuda_device_count"]
    assert all(info["cuda_devices"]), info["cuda_devices"]
    assert info["version"] == inferline.__version__


def test_batching_policy_is_checked_by_the_core() -> None:
    with pytest.raises(ValueError, match="policy must be 'work_conserving', 'fixed_window'"):
        Batching(policy="greedy")
    with pytest.raises(ValueError, match="latency_target needs max_latency > 0"):
        Batching(policy="latency_target")
    with pytest.raises(ValueError, match=r"Batching.max_latency_ms must be a number > 0, got 0"):
        Batching(max_latency_ms=0)
    assert Batching().policy == "work_conserving"
    assert Batching(max_latency_ms=20).policy == "latency_target"
    assert Batching(policy="fixed_window").policy == "fixed_window"


@pytest.mark.asyncio
async def test_latency_target_refuses_at_once_what_cannot_make_it() -> None:
    def slow(b: np.ndarray) -> np.ndarray:
        time.sleep(0.02)
        return b * 2.0

    model = Recorder(slow)
    async with make_engine(model, max_batch_size=1, max_latency_ms=200.0) as engine:
        for i in range(5):  # the core learns what a batch costs
            await engine.infer("m", item(i))
        blocker = await hold_worker(engine, model)
        admitted, refused = [], 0
        for i in range(40):
            # A refusal happens inside infer, before anything is queued: the task is done, with
            # QueueFullError, after its first step.
            fut = asyncio.ensure_future(engine.infer("m", item(i)))
            await asyncio.sleep(0)
            if fut.done() and isinstance(fut.exception(), inferline.QueueFullError):
                refused += 1
            else:
                admitted.append(fut)
        model.gate.set()
        results = await asyncio.gather(blocker, *admitted)
    assert refused > 0 and admitted
    assert len(results) == len(admitted) + 1
    assert engine.stats("m")["requests"]["queue_full"] == refused


# ---- infer_batch: one native call, one answer ---------------------------------------------------


def rows(*markers: float) -> np.ndarray:
    return np.stack([item(m) for m in markers])


async def settle(engine: inferline.Engine, model: Recorder, blocker: Any) -> dict[str, Any]:
    """Releases the held worker, flushes the queue with one more request, returns the stats."""
    model.gate.set()
    await blocker
    await engine.infer("m", item(99))
    return engine.stats("m")


def assert_never_computed(model: Recorder, stats: dict[str, Any], marker: float, **n: int) -> None:
    """Rows marked ``marker`` never reached the model, were counted as ``n`` says, and nothing
    is left queued or in flight."""
    assert marker not in model.seen_markers()
    for outcome, count in n.items():
        assert stats["requests"][outcome] == count
    assert stats["in_flight"] == 0 and stats["queue_depth"] == 0


async def wait_until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(5000):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.mark.asyncio
async def test_infer_batch_returns_what_infer_returns_stacked() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=4) as engine:
        x = rows(*range(10))
        out = await engine.infer_batch("m", x)
        lists = await engine.infer_batch("m", [[1.0] * DIM, [2.0] * DIM])  # converted
        one = await engine.infer("m", x[3])
        stats = engine.stats("m")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, x * 2.0)
    np.testing.assert_array_equal(out[3], one)
    np.testing.assert_array_equal(lists, rows(1.0, 2.0) * 2.0)
    assert max(model.sizes()) <= 4  # rows are items for the batcher
    assert stats["requests"]["success"] == 13


@pytest.mark.asyncio
async def test_infer_batch_input_errors_name_the_batch_dimension() -> None:
    model = Recorder()
    async with make_engine(model) as engine:
        with pytest.raises(
            inferline.InvalidInput,
            match=r"input 'x' has shape \(8,\); infer_batch takes a leading batch dimension: "
            r"expected \(N, 8\)",
        ):
            await engine.infer_batch("m", item(1))
        with pytest.raises(inferline.InvalidInput, match="the batch is empty"):
            await engine.infer_batch("m", np.zeros((0, DIM), np.float32))
        with pytest.raises(
            inferline.InvalidInput, match=r"input 'x' has dtype <U1; expected FP32 \(float32\)"
        ):
            await engine.infer_batch("m", np.array([["a"] * DIM]))
        with pytest.raises(inferline.InvalidInput, match=r"got inputs \['z'\]; expected \['x'\]"):
            await engine.infer_batch("m", {"z": rows(1)})
        with pytest.raises(inferline.InvalidInput, match="priority must be an int >= 0"):
            await engine.infer_batch("m", rows(1), priority=-1)
        with pytest.raises(inferline.InvalidInput, match="timeout must be a positive number"):
            await engine.infer_batch("m", rows(1), timeout=0)
    assert model.sizes() == []


@pytest.mark.asyncio
async def test_infer_batch_refuses_nan_in_a_finite_input() -> None:
    engine = inferline.Engine()
    engine.register(
        "f", lambda b: b, inputs=TensorSpec("x", "FP32", (2,), finite=True), warmup=False
    )
    async with engine:
        bad = np.array([[1, 2], [np.nan, 0]], np.float32)
        with pytest.raises(inferline.InvalidInput, match="'x' contains NaN or Inf"):
            await engine.infer_batch("f", bad)
        assert engine.stats("f")["queue_depth"] == 0


@pytest.mark.asyncio
async def test_infer_batch_is_queued_all_or_nothing() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2, max_queue_size=4) as engine:
        blocker = await hold_worker(engine, model)
        waiting = [asyncio.ensure_future(engine.infer("m", item(i))) for i in (1, 2)]
        await wait_until(lambda: engine.stats("m")["queue_depth"] == 2, "two items queue")
        with pytest.raises(
            inferline.QueueFullError, match=r"queue is full .*none of the 3 rows was queued"
        ):
            await engine.infer_batch("m", rows(50, 51, 52))
        with pytest.raises(inferline.QueueFullError, match=r"a call of 5 rows is more than"):
            await engine.infer_batch("m", rows(60, 61, 62, 63, 64))
        assert engine.stats("m")["queue_depth"] == 2  # a refused call leaves nothing behind
        fits = asyncio.ensure_future(engine.infer_batch("m", rows(70, 71)))
        await wait_until(lambda: engine.stats("m")["queue_depth"] == 4, "the call to queue")
        model.gate.set()
        await asyncio.gather(blocker, *waiting)
        out = await fits
        stats = engine.stats("m")
    np.testing.assert_array_equal(out, rows(70, 71) * 2.0)
    assert not model.seen_markers() & {50.0, 51.0, 52.0, 60.0, 64.0}
    assert stats["requests"]["queue_full"] == 2
    assert stats["in_flight"] == 0 and stats["queue_depth"] == 0


@pytest.mark.asyncio
async def test_cancelling_infer_batch_cancels_its_queued_rows() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2) as engine:
        blocker = await hold_worker(engine, model)
        call = asyncio.ensure_future(engine.infer_batch("m", rows(7, 7, 7, 7, 7)))
        await wait_until(lambda: engine.stats("m")["queue_depth"] == 5, "the rows to queue")
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        stats = await settle(engine, model, blocker)
    assert_never_computed(model, stats, 7.0, cancelled=5)


@pytest.mark.asyncio
async def test_a_failing_row_fails_the_whole_call_and_cancels_the_rest() -> None:
    def fn(b: np.ndarray) -> np.ndarray:
        if (b[:, 0] == 13).any():
            raise RuntimeError("unlucky row")
        return b

    model = Recorder(fn)
    async with make_engine(model, max_batch_size=2) as engine:
        blocker = await hold_worker(engine, model)
        call = asyncio.ensure_future(engine.infer_batch("m", rows(13, 14, 1, 2, 3, 4)))
        await wait_until(lambda: engine.stats("m")["queue_depth"] == 6, "the rows to queue")
        model.gate.set()
        await blocker
        with pytest.raises(inferline.ModelError, match="model 'm' failed: RuntimeError: unlucky"):
            await call
        await engine.infer("m", item(9))  # the engine keeps serving
        await wait_until(lambda: engine.stats("m")["in_flight"] == 0, "every row to finish")
        stats = engine.stats("m")
    counts = stats["requests"]
    assert counts["model_error"] == 2  # the failing batch: rows 13 and 14
    # The rows behind it were cancelled in the queue unless a worker already had them.
    assert counts["cancelled"] + counts["success"] == 4 + 2  # + the blocker and item 9
    assert counts["cancelled"] >= 2


@pytest.mark.asyncio
async def test_infer_batch_timeout_raises_deadline_exceeded_and_skips_compute() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2) as engine:
        blocker = await hold_worker(engine, model)
        with pytest.raises(inferline.DeadlineExceeded, match=r"no answer within the 0.05s"):
            await engine.infer_batch("m", rows(42, 42, 42), timeout=0.05)
        stats = await settle(engine, model, blocker)
    assert_never_computed(model, stats, 42.0, deadline_exceeded=3)


@pytest.mark.asyncio
async def test_infer_batch_rows_keep_their_priority() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2, priority_levels=2) as engine:
        blocker = await hold_worker(engine, model)
        low = [asyncio.ensure_future(engine.infer("m", item(5), priority=1)) for _ in range(4)]
        await wait_until(lambda: engine.stats("m")["queue_depth"] == 4, "low items to queue")
        high = asyncio.ensure_future(engine.infer_batch("m", rows(1, 1, 1, 1), priority=0))
        await wait_until(lambda: engine.stats("m")["queue_depth"] == 8, "the call to queue")
        model.gate.set()
        await asyncio.gather(blocker, *low, high)
    order = [float(r[0]) for b in model.batches[1:] for r in b]
    assert order == [1.0] * 4 + [5.0] * 4


def cached_engine(model: Recorder) -> inferline.Engine:
    engine = inferline.Engine()
    engine.register("m", model, inputs=X, outputs=Y, cache=(100, 1 << 20), warmup=False)
    return engine


@pytest.mark.asyncio
async def test_infer_batch_uses_and_fills_the_result_cache() -> None:
    model = Recorder()
    async with cached_engine(model) as engine:
        first = await engine.infer("m", item(1))
        out = await engine.infer_batch("m", rows(1, 2, 1, 3))
        again = await engine.infer("m", item(3))  # cached by the batch call
        cache = engine.live_versions()[0].cache_stats
    np.testing.assert_array_equal(out, rows(1, 2, 1, 3) * 2.0)
    np.testing.assert_array_equal(first, out[0])
    np.testing.assert_array_equal(again, out[3])
    assert sorted(float(r[0]) for b in model.batches for r in b) == [1.0, 2.0, 3.0]
    assert cache is not None and cache["hits"] == 3


@pytest.mark.asyncio
async def test_a_cached_answer_does_not_skip_the_priority_and_timeout_checks() -> None:
    model = Recorder()
    async with cached_engine(model) as engine:
        await engine.infer("m", item(1))
        await engine.infer_batch("m", rows(1))
        assert engine.live_versions()[0].cache_stats["entries"] == 1  # type: ignore[index]

        async def one(**kw: Any) -> Any:
            return await engine.infer("m", item(1), **kw)

        async def many(**kw: Any) -> Any:
            return await engine.infer_batch("m", rows(1), **kw)

        for call in (one, many):
            with pytest.raises(
                inferline.InvalidInput, match=r"priority 9 is out of range; expected 0\.\.0"
            ):
                await call(priority=9)
            with pytest.raises(inferline.InvalidInput, match="priority must be an int >= 0"):
                await call(priority=-1)
            with pytest.raises(inferline.InvalidInput, match="priority must be an int >= 0"):
                await call(priority=True)
            with pytest.raises(inferline.InvalidInput, match="timeout must be a positive"):
                await call(timeout=0)
            with pytest.raises(inferline.InvalidInput, match="timeout must be a positive"):
                await call(timeout=float("nan"))
        hits = engine.live_versions()[0].cache_stats["hits"]  # type: ignore[index]
    assert hits == 1  # infer_batch's row; no refused call reached the cache
    assert len(model.batches) == 1
