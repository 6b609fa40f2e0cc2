"""Graceful shutdown: real signals to this process, real engine, requests in flight."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import numpy as np
import pytest

import inferline
from inferline import Batching, TensorSpec
from inferline.lifecycle import GracefulShutdown, serve_until_signalled

DIM = 4
X = [TensorSpec("x", "FP32", (DIM,))]
Y = [TensorSpec("y", "FP32", (DIM,))]


class Gated:
    """A batch model that can be held inside its call."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        return batch * 2.0


class MarkingEngine(inferline.Engine):
    """Counts ``mark_draining`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.marked = 0

    def mark_draining(self, reason: str = "shutting down") -> None:
        self.marked += 1
        super().mark_draining(reason)


def item(marker: float) -> np.ndarray:
    return np.full(DIM, marker, dtype=np.float32)


def make_engine(model: Gated, engine: inferline.Engine | None = None) -> inferline.Engine:
    engine = engine or inferline.Engine()
    engine.register(
        "m",
        model,
        inputs=X,
        outputs=Y,
        warmup=False,
        batching=Batching(max_batch_size=2, max_queue_delay_ms=1.0),
    )
    return engine


async def hold_worker(engine: inferline.Engine, model: Gated) -> asyncio.Future[Any]:
    model.gate.clear()
    model.entered.clear()
    blocker = asyncio.ensure_future(engine.infer("m", item(-1.0)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 10)
    return blocker


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def ours(sig: signal.Signals) -> bool:
    """True when ``sig`` is handled by the loop (asyncio's no-op Python-level handler), so
    sending it cannot kill or interrupt the test process."""
    handler = signal.getsignal(sig)
    return callable(handler) and getattr(handler, "__name__", "") == "_sighandler_noop"


@pytest.mark.asyncio
async def test_sigterm_turns_readiness_false_drains_in_flight_requests_and_stops() -> None:
    model = Gated()
    engine = make_engine(model, MarkingEngine())
    assert isinstance(engine, MarkingEngine)
    before = signal.getsignal(signal.SIGTERM)
    readiness: list[bool] = []
    async with engine:
        blocker = await hold_worker(engine, model)
        queued = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(5)]
        await asyncio.sleep(0)
        assert engine.ready and engine.stats("m")["in_flight"] == 6
        task = asyncio.ensure_future(
            serve_until_signalled(
                engine,
                grace_seconds=1.0,
                drain_timeout=10,
                on_not_ready=lambda: readiness.append(engine.ready),
            )
        )
        await asyncio.sleep(0)  # the task installs its handlers before its first await
        assert ours(signal.SIGTERM) and ours(signal.SIGINT)
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: readiness)
        assert engine.marked == 1
        assert readiness == [False] and not engine.ready  # false before on_not_ready runs
        # The grace period: still accepting, so late requests routed by a slow balancer work.
        late = asyncio.ensure_future(engine.infer("m", item(50)))
        await asyncio.sleep(0)  # submits it
        assert engine.state != "draining" and not task.done()
        await until(lambda: engine.state == "draining")
        assert time.monotonic() - t0 >= 0.95  # waited out the grace period first
        assert not engine.ready
        with pytest.raises(inferline.EngineStopped, match="model 'm'"):
            await engine.infer("m", item(60))
        assert engine.stats("m")["in_flight"] == 7  # accepted work is still in flight
        await asyncio.sleep(0.1)
        assert not task.done()  # the drain waits for it
        model.gate.set()
        reason = await asyncio.wait_for(task, 10)
        assert reason == "SIGTERM received"
        assert engine.state == "stopped"
        results = await asyncio.gather(blocker, *queued, late)
    np.testing.assert_array_equal(results[0], item(-1.0) * 2.0)
    for i, r in enumerate(results[1:6]):
        np.testing.assert_array_equal(r, item(i) * 2.0)
    np.testing.assert_array_equal(results[6], item(50) * 2.0)
    stats = engine.stats("m")
    assert stats["requests"]["success"] == 7 and stats["in_flight"] == 0
    assert stats["requests"]["engine_stopped"] == 1  # the one sent during the drain
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.asyncio
async def test_second_sigint_cuts_the_grace_period_and_stops_at_once() -> None:
    model = Gated()
    engine = make_engine(model)
    before = signal.getsignal(signal.SIGINT)
    async with engine:
        blocker = await hold_worker(engine, model)
        queued = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(4)]
        await asyncio.sleep(0)
        task = asyncio.ensure_future(serve_until_signalled(engine, grace_seconds=60))
        await asyncio.sleep(0)
        assert ours(signal.SIGINT)
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGINT)
        await until(lambda: not engine.ready)  # the first signal was handled
        assert not task.done() and engine.state == "ready"  # in the 60 s grace period
        os.kill(os.getpid(), signal.SIGINT)
        # The running batch still finishes; the queued work is answered EngineStopped.
        threading.Timer(0.2, model.gate.set).start()
        reason = await asyncio.wait_for(task, 10)
        assert time.monotonic() - t0 < 5
        assert reason == "SIGINT received"
        assert engine.state == "stopped"
        results = await asyncio.gather(blocker, *queued, return_exceptions=True)
    np.testing.assert_array_equal(results[0], item(-1.0) * 2.0)
    assert all(isinstance(r, inferline.EngineStopped) for r in results[1:]), results
    assert "engine stopped" in str(results[1])
    assert signal.getsignal(signal.SIGINT) == before


@pytest.mark.asyncio
async def test_graceful_shutdown_helper_phases_without_signals() -> None:
    model = Gated()
    engine = make_engine(model)
    calls: list[str] = []
    async with engine:
        shutdown = GracefulShutdown(
            engine,
            grace_seconds=0.1,
            drain_timeout=5,
            on_not_ready=lambda: calls.append(shutdown.phase),
            on_draining=lambda: calls.append(f"{shutdown.phase}:{engine.state}"),
        )
        assert shutdown.phase == "serving" and shutdown.ready and not shutdown.triggered
        waiter = asyncio.ensure_future(shutdown.wait())  # waits for a trigger first
        await asyncio.sleep(0.05)
        assert not waiter.done()
        blocker = await hold_worker(engine, model)
        shutdown.trigger("deploy")
        assert calls == ["grace"] and shutdown.reason == "deploy"
        assert shutdown.triggered and not shutdown.ready
        shutdown.trigger("again")  # idempotent: a second trigger in the grace period only
        assert calls == ["grace"] and shutdown.reason == "deploy"  # shortens it
        await until(lambda: shutdown.phase == "draining")
        # Called once, as the drain starts and before the engine stops taking work.
        assert calls == ["grace", "draining:ready"]
        threading.Timer(0.1, model.gate.set).start()
        await asyncio.wait_for(waiter, 10)
        assert shutdown.phase == "stopped" and engine.state == "stopped"
        await shutdown.wait()  # returns at once once stopped
        shutdown.trigger("late")  # harmless after the fact
    np.testing.assert_array_equal(await blocker, item(-1.0) * 2.0)


@pytest.mark.asyncio
async def test_drain_deadline_answers_the_rest_engine_stopped() -> None:
    model = Gated()
    engine = make_engine(model)
    await engine.start()
    blocker = await hold_worker(engine, model)
    queued = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(3)]
    await asyncio.sleep(0)
    shutdown = GracefulShutdown(engine, drain_timeout=0.1)
    shutdown.trigger()
    threading.Timer(0.4, model.gate.set).start()
    t0 = time.monotonic()
    await shutdown.wait()
    assert time.monotonic() - t0 < 5
    results = await asyncio.gather(blocker, *queued, return_exceptions=True)
    np.testing.assert_array_equal(results[0], item(-1.0) * 2.0)
    assert all(isinstance(r, inferline.EngineStopped) for r in results[1:]), results
    assert engine.stats("m")["requests"]["engine_stopped"] == 3
    assert shutdown.reason == "shutdown requested"


@pytest.mark.asyncio
async def test_failing_on_not_ready_is_logged_and_shutdown_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom() -> None:
        raise RuntimeError("health flag unavailable")

    engine = make_engine(Gated())
    await engine.start()
    shutdown = GracefulShutdown(engine, on_not_ready=boom)
    with caplog.at_level(logging.ERROR, logger="inferline.lifecycle"):
        shutdown.trigger("test")
        await shutdown.wait()
    assert engine.state == "stopped"
    assert "on_not_ready callback failed" in caplog.text
    assert "health flag unavailable" in caplog.text


@pytest.mark.asyncio
async def test_a_failing_stop_is_raised_by_wait() -> None:
    class Broken(inferline.Engine):
        async def stop(self, drain_timeout: float = 30.0) -> None:
            await super().stop(drain_timeout)
            raise RuntimeError("worker did not join")

    engine = make_engine(Gated(), Broken())
    await engine.start()
    shutdown = GracefulShutdown(engine)
    shutdown.trigger()
    with pytest.raises(RuntimeError, match="worker did not join"):
        await shutdown.wait()
    assert shutdown.phase == "stopped"


def test_argument_errors_are_explained() -> None:
    engine = inferline.Engine()
    with pytest.raises(ValueError, match=r"grace_seconds must be a number of seconds >= 0, got -1"):
        GracefulShutdown(engine, grace_seconds=-1)
    with pytest.raises(ValueError, match=r"drain_timeout must be a number .* got '5'"):
        GracefulShutdown(engine, drain_timeout="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"drain_timeout must be a number .* got nan"):
        GracefulShutdown(engine, drain_timeout=float("nan"))
    with pytest.raises(TypeError, match="on_not_ready must be callable, got int"):
        GracefulShutdown(engine, on_not_ready=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_draining must be callable, got str"):
        GracefulShutdown(engine, on_draining="x")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="no running event loop"):
        GracefulShutdown(engine).trigger()


@pytest.mark.asyncio
async def test_no_signals_is_refused() -> None:
    engine = inferline.Engine()
    with pytest.raises(ValueError, match="at least one signal"):
        await serve_until_signalled(engine, signals=())
    assert engine.state == "created"


def test_signal_handlers_need_the_main_thread() -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(serve_until_signalled(inferline.Engine()))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "only be installed from the main thread" in str(errors[0])
    assert "GracefulShutdown.trigger()" in str(errors[0])


def test_leaving_the_engine_while_a_model_still_loads_exits_cleanly() -> None:
    """The engine stops while the model's load (and warm-up) still runs on its thread; the
    loader then starts the scheduler the engine already shut down. The process must end
    normally, not abort on a worker thread left joinable."""
    script = textwrap.dedent(
        """
        import asyncio
        import inferline

        def ident(x):
            return x

        async def main():
            async with inferline.Engine() as engine:
                spec = [inferline.TensorSpec("x", "FP32", (4,))]
                out = [inferline.TensorSpec("y", "FP32", (4,))]
                engine.register("m", ident, inputs=spec, outputs=out)
                raise RuntimeError("leaving at once")

        try:
            asyncio.run(main())
        except RuntimeError as e:
            print("raised:", e)
        print("end")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["raised: leaving at once", "end"]
    assert "terminate called" not in done.stderr
