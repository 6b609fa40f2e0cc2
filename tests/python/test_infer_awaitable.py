"""``Engine.infer``'s native awaitable (``_core.PendingInfer``, an asyncio-compatible future):
awaited, as a task, gathered, under ``wait_for``, cancelled (in the core at once), refused,
failed, awaited twice, dropped; its future protocol (callbacks, contexts, errors in them)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from test_engine import Recorder, hold_worker, item, make_engine, until

import inferline
from inferline import _core


def boom(batch: np.ndarray) -> np.ndarray:
    raise ValueError("boom in the model")


@pytest.mark.asyncio
async def test_common_path_returns_the_native_awaitable_and_it_answers() -> None:
    async with make_engine(Recorder()) as engine:
        pending = engine.infer("m", item(3))
        assert isinstance(pending, _core.PendingInfer)
        assert asyncio.iscoroutine(pending) and inspect.isawaitable(pending)
        np.testing.assert_array_equal(await pending, item(3) * 2.0)


@pytest.mark.asyncio
async def test_create_task_and_gather_take_it_as_a_coroutine() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=16) as engine:
        task = asyncio.create_task(engine.infer("m", item(1)))
        np.testing.assert_array_equal(await task, item(1) * 2.0)
        ys = await asyncio.gather(*(engine.infer("m", item(i)) for i in range(300)))
        for i, y in enumerate(ys):
            np.testing.assert_array_equal(y, item(i) * 2.0)
        shielded = await asyncio.shield(engine.infer("m", item(5)))
        np.testing.assert_array_equal(shielded, item(5) * 2.0)
        stats = engine.stats("m")
    assert stats["requests"]["success"] == 302
    assert stats["in_flight"] == 0


@pytest.mark.asyncio
async def test_wait_for_timeout_cancels_in_the_core_and_frees_the_queue_slot() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2, max_queue_size=2) as engine:
        blocker = await hold_worker(engine, model)
        first = asyncio.ensure_future(engine.infer("m", item(1)))
        second = engine.infer("m", item(2))  # queued by the call itself
        await until(lambda: engine.stats("m")["queue_depth"] == 2)
        with pytest.raises(inferline.QueueFullError, match=r"queue is full \(2 requests"):
            await engine.infer("m", item(3))
        # The worker is held, so the wait always times out; the slot is freed at once.
        with pytest.raises(asyncio.TimeoutError):  # the builtin TimeoutError from 3.11 on
            await asyncio.wait_for(second, 0.05)
        assert engine.stats("m")["queue_depth"] == 1
        third = asyncio.ensure_future(engine.infer("m", item(4)))  # fits in the freed slot
        await until(lambda: engine.stats("m")["queue_depth"] == 2)
        model.gate.set()
        await asyncio.gather(blocker, first, third)
        stats = engine.stats("m")
    assert 2.0 not in model.seen_markers() and 3.0 not in model.seen_markers()
    assert {1.0, 4.0} <= model.seen_markers()
    assert stats["requests"]["cancelled"] == 1
    assert stats["requests"]["queue_full"] == 1
    assert stats["queue_depth"] == 0 and stats["in_flight"] == 0


def queued(engine: inferline.Engine) -> int:
    depth: int = engine.stats("m")["queue_depth"]
    return depth


async def cancel_waiting_task(engine: inferline.Engine, marker: float) -> None:
    victim = asyncio.create_task(engine.infer("m", item(marker)))
    await asyncio.sleep(0)  # the task now waits on the request's future
    assert queued(engine) == 1
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim


async def cancel_task_before_its_first_step(engine: inferline.Engine, marker: float) -> None:
    victim = asyncio.create_task(engine.infer("m", item(marker)))
    assert queued(engine) == 1  # queued by the call, before the task ever runs
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim


async def close_unawaited(engine: inferline.Engine, marker: float) -> None:
    pending = engine.infer("m", item(marker))
    assert queued(engine) == 1
    pending.close()
    assert pending.cancelled()
    with pytest.raises(asyncio.CancelledError):
        await pending


async def time_out(engine: inferline.Engine, marker: float) -> None:
    # The timeout path: DeadlineExceeded with its message, the request expired in the core.
    with pytest.raises(
        inferline.DeadlineExceeded, match=r"model 'm': no answer within the 0\.05s timeout"
    ):
        await engine.infer("m", item(marker), timeout=0.05)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("abandon", "outcome"),
    [
        (cancel_waiting_task, "cancelled"),
        (cancel_task_before_its_first_step, "cancelled"),
        (close_unawaited, "cancelled"),
        (time_out, "deadline_exceeded"),
    ],
)
async def test_an_abandoned_request_is_never_computed_and_frees_its_slot_at_once(
    abandon: Callable[[inferline.Engine, float], Awaitable[None]], outcome: str
) -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2) as engine:
        blocker = await hold_worker(engine, model)
        await abandon(engine, 7.0)
        assert queued(engine) == 0  # its slot is free before the worker comes back
        model.gate.set()
        await blocker
        # A later request also flushes an expired entry from the queue.
        np.testing.assert_array_equal(await engine.infer("m", item(8)), item(8) * 2.0)
        await until(lambda: engine.stats("m")["in_flight"] == 0)
        stats = engine.stats("m")
    assert 7.0 not in model.seen_markers()
    assert stats["requests"][outcome] == 1


@pytest.mark.asyncio
async def test_a_failing_model_raises_model_error_at_the_await() -> None:
    engine = inferline.Engine()
    spec = inferline.TensorSpec("x", "FP32", (8,))
    engine.register("bad", boom, inputs=spec, outputs=spec, warmup=False)
    async with engine:
        pending = engine.infer("bad", item(1))
        assert isinstance(pending, _core.PendingInfer)
        with pytest.raises(inferline.ModelError, match=r"model 'bad' failed: .*boom in the model"):
            await pending
        task = asyncio.create_task(engine.infer("bad", item(2)))
        with pytest.raises(inferline.ModelError, match="boom in the model"):
            await task
        assert engine.stats("bad")["requests"]["model_error"] == 2


@pytest.mark.asyncio
async def test_refusals_are_raised_at_the_await_not_the_call() -> None:
    model = Recorder()
    async with make_engine(model, max_batch_size=2, max_queue_size=1) as engine:
        blocker = await hold_worker(engine, model)
        queued = engine.infer("m", item(1))
        refused = engine.infer("m", item(2))  # the queue is full: nothing raised yet
        with pytest.raises(inferline.QueueFullError, match=r"queue is full \(1 requests"):
            await refused
        model.gate.set()
        await blocker
        np.testing.assert_array_equal(await queued, item(1) * 2.0)
        with pytest.raises(inferline.InvalidInput, match=r"priority must be an int >= 0"):
            await engine.infer("m", item(3), priority=-1)
        with pytest.raises(inferline.InvalidInput, match=r"priority 5 is out of range"):
            await engine.infer("m", item(3), priority=5)


@pytest.mark.asyncio
async def test_the_serving_version_by_number_takes_the_native_path() -> None:
    # A result cache's miss asks for the version it looked up, by number.
    async with make_engine(Recorder()) as engine:
        pending = engine.infer("m", item(3), version=1)
        assert isinstance(pending, _core.PendingInfer)
        np.testing.assert_array_equal(await pending, item(3) * 2.0)
        other = engine.infer("m", item(3), version=7)  # not loaded: the coroutine's routing
        assert inspect.iscoroutine(other) and not isinstance(other, _core.PendingInfer)
        with pytest.raises(inferline.ModelNotFound, match="version 7"):
            await other


@pytest.mark.asyncio
async def test_an_input_to_convert_takes_the_coroutine_path() -> None:
    async with make_engine(Recorder()) as engine:
        request = engine.infer("m", [1.0] * 8)  # a list: converted by the coroutine path
        assert inspect.iscoroutine(request) and not isinstance(request, _core.PendingInfer)
        np.testing.assert_array_equal(await request, item(1) * 2.0)


@pytest.mark.asyncio
async def test_awaited_twice_answers_twice_and_never_awaited_is_still_answered() -> None:
    model = Recorder()
    async with make_engine(model) as engine:
        pending = engine.infer("m", item(1))
        first = await pending
        np.testing.assert_array_equal(first, item(1) * 2.0)
        assert await pending is first  # a future: the same answer again
        engine.infer("m", item(2))  # dropped at once: the request is still computed
        gc.collect()
        await until(lambda: engine.stats("m")["requests"]["success"] == 2)
        assert engine.stats("m")["in_flight"] == 0
    assert 2.0 in model.seen_markers()


@pytest.mark.asyncio
async def test_off_the_loop_thread_it_is_a_coroutine_for_the_loop() -> None:
    # run_coroutine_threadsafe from another thread: nothing is queued off the loop's thread.
    async with make_engine(Recorder()) as engine:
        loop = asyncio.get_running_loop()

        def from_a_thread() -> np.ndarray:
            request = engine.infer("m", item(6))
            assert not isinstance(request, _core.PendingInfer)
            answer: np.ndarray = asyncio.run_coroutine_threadsafe(request, loop).result(10)
            return answer

        y = await loop.run_in_executor(None, from_a_thread)
        np.testing.assert_array_equal(y, item(6) * 2.0)


@pytest.mark.asyncio
async def test_it_has_the_future_protocol_but_asyncio_wraps_it_as_a_coroutine() -> None:
    async with make_engine(Recorder()) as engine:
        # Not a future to asyncio.isfuture: ensure_future and wait take it as a coroutine.
        wrapped = asyncio.ensure_future(engine.infer("m", item(3)))
        assert isinstance(wrapped, asyncio.Task)
        done, _ = await asyncio.wait({wrapped})
        np.testing.assert_array_equal(done.pop().result(), item(3) * 2.0)
        pending = engine.infer("m", item(2))
        assert not asyncio.isfuture(pending) and asyncio.iscoroutine(pending)
        assert pending.get_loop() is asyncio.get_running_loop()
        assert not pending.done() and not pending.cancelled()
        with pytest.raises(asyncio.InvalidStateError):
            pending.result()
        with pytest.raises(asyncio.InvalidStateError):
            pending.exception()
        seen: list[object] = []
        pending.add_done_callback(seen.append)
        pending.add_done_callback(seen.append)
        dropped = seen.append
        pending.add_done_callback(dropped)
        assert pending.remove_done_callback(dropped) == 3  # every callback equal to it
        pending.add_done_callback(seen.append)
        await asyncio.gather(pending)
        assert pending.done()
        await until(lambda: len(seen) == 1)
        np.testing.assert_array_equal(pending.result(), item(2) * 2.0)
        assert pending.exception() is None and not pending.cancel()
        late: list[object] = []
        pending.add_done_callback(late.append)  # already done: scheduled at once
        await until(lambda: late == [pending])


@pytest.mark.asyncio
async def test_a_woken_caller_sees_its_request_finished_and_its_own_context() -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("var", default=-1)

    async def caller(engine: inferline.Engine, k: int) -> tuple[int, int]:
        var.set(k)
        await engine.infer("m", item(k))
        # Woken by the drain directly: its request is already counted, in its own context.
        return var.get(), engine.stats("m")["in_flight"]

    async with make_engine(Recorder(), max_batch_size=8) as engine:
        results = await asyncio.gather(*(caller(engine, k) for k in range(40)))
    assert [k for k, _ in results] == list(range(40))
    assert results[-1][1] == 0


@pytest.mark.asyncio
async def test_cancel_with_a_message_and_a_failing_callback_goes_to_the_loops_handler() -> None:
    model = Recorder()
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with make_engine(model, max_batch_size=2) as engine:
            blocker = await hold_worker(engine, model)
            pending = engine.infer("m", item(5))
            assert pending.cancel("no longer needed") and not pending.cancel()
            with pytest.raises(asyncio.CancelledError, match="no longer needed"):
                pending.result()
            model.gate.set()
            await blocker

            def broken(fut: object) -> None:
                raise ValueError("callback broke")

            answered = engine.infer("m", item(6))
            answered.add_done_callback(broken)
            np.testing.assert_array_equal(await answered, item(6) * 2.0)
            await until(lambda: len(reported) == 1)
            stats = engine.stats("m")
    finally:
        loop.set_exception_handler(None)
    assert 5.0 not in model.seen_markers()
    assert stats["requests"]["cancelled"] == 1
    assert isinstance(reported[0]["exception"], ValueError)
    assert reported[0]["future"] is answered
