"""``isolation="loop"``: the model's batches are formed and computed on the engine's event loop
thread (no worker thread), on both loops: answers, batching, policies, failures, cancellation,
deadlines, multi-row calls, stopping, and the settings it refuses."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvloop
from python_models import python_model_toml
from test_engine import DIM, Recorder, X, Y, item, until

import inferline
from inferline import Batching


class OnLoop(Recorder):
    """Records the thread of every batch beside what Recorder records."""

    def __init__(self, fn: Any = None) -> None:
        super().__init__(fn)
        self.threads: set[int] = set()

    def __call__(self, batch: np.ndarray) -> Any:
        self.threads.add(threading.get_ident())
        return super().__call__(batch)


def loop_engine(model: Any, **batching: Any) -> inferline.Engine:
    engine = inferline.Engine()
    opts = {"max_batch_size": 8, "max_queue_delay_ms": 2.0, "max_queue_size": 1024}
    opts.update(batching)
    engine.register(
        "m", model, inputs=X, outputs=Y, batching=Batching(**opts), isolation="loop", warmup=False
    )
    return engine


async def _many_callers_on_the_loop_thread() -> None:
    model = OnLoop()
    async with loop_engine(model, max_batch_size=16) as engine:
        # A lone request runs at once (no window) on the loop's own thread.
        np.testing.assert_array_equal(await engine.infer("m", item(7)), item(7) * 2.0)
        xs = [np.arange(DIM, dtype=np.float32) + i for i in range(1000)]
        ys = await asyncio.gather(*(engine.infer("m", x) for x in xs))
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_array_equal(y, x * 2.0)
        stats = engine.stats("m")
    assert model.threads == {threading.get_ident()}
    assert stats["requests"]["success"] == 1001
    assert stats["in_flight"] == 0 and stats["queue_depth"] == 0
    sizes = model.sizes()
    assert sum(sizes) == 1001 and max(sizes) == 16  # batches form from the waiting callers


@pytest.mark.asyncio
async def test_every_caller_gets_its_row_from_batches_run_on_the_loop_thread() -> None:
    await _many_callers_on_the_loop_thread()


def test_the_same_on_uvloop() -> None:
    uvloop.run(_many_callers_on_the_loop_thread())


@pytest.mark.asyncio
async def test_the_settings_log_line_names_the_isolation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inferline"):
        async with loop_engine(OnLoop()):
            pass
    assert any("instances=1 (default), isolation=loop" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_failing_model_fails_its_batch_and_the_next_one_is_served() -> None:
    def fn(batch: np.ndarray) -> np.ndarray:
        if (batch < 0).any():
            raise ValueError("negative input")
        return batch * 2.0

    async with loop_engine(OnLoop(fn)) as engine:
        with pytest.raises(inferline.ModelError, match="negative input"):
            await engine.infer("m", item(-1))
        np.testing.assert_array_equal(await engine.infer("m", item(3)), item(3) * 2.0)
        stats = engine.stats("m")
    assert stats["requests"]["model_error"] == 1 and stats["requests"]["success"] == 1


@pytest.mark.asyncio
async def test_fixed_window_holds_a_lone_request_for_the_window_and_a_full_batch_leaves() -> None:
    model = OnLoop()
    window_ms = 60.0
    async with loop_engine(
        model, policy="fixed_window", max_batch_size=4, max_queue_delay_ms=window_ms
    ) as engine:
        ys = await asyncio.gather(*(engine.infer("m", item(i)) for i in range(4)))
        for i, y in enumerate(ys):
            np.testing.assert_array_equal(y, item(i) * 2.0)
        started = time.monotonic()
        np.testing.assert_array_equal(await engine.infer("m", item(9)), item(9) * 2.0)
        waited = time.monotonic() - started
    assert model.sizes() == [4, 1]
    assert waited >= window_ms / 1e3 * 0.9  # the lone request left on the window's timer


@pytest.mark.asyncio
async def test_a_held_request_times_out_or_is_cancelled_and_stop_answers_the_rest() -> None:
    model = OnLoop()
    engine = loop_engine(model, policy="fixed_window", max_batch_size=8, max_queue_delay_ms=60e3)
    await engine.start()
    with pytest.raises(inferline.DeadlineExceeded):
        await engine.infer("m", item(1), timeout=0.05)
    task = asyncio.ensure_future(engine.infer("m", item(2)))
    await asyncio.sleep(0)  # the task submits its request
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    held = asyncio.ensure_future(engine.infer("m", item(3)))
    await asyncio.sleep(0)
    await engine.stop(drain_timeout=0.1)  # the window is a minute: stop answers what it held
    with pytest.raises(inferline.EngineStopped):
        await held
    assert model.sizes() == []  # nothing was computed


@pytest.mark.asyncio
async def test_infer_batch_rows_run_on_the_loop() -> None:
    model = OnLoop()
    async with loop_engine(model, max_batch_size=8) as engine:
        x = np.arange(100 * DIM, dtype=np.float32).reshape(100, DIM)
        np.testing.assert_array_equal(await engine.infer_batch("m", x), x * 2.0)
    assert model.threads == {threading.get_ident()}
    assert sum(model.sizes()) == 100 and max(model.sizes()) == 8


@pytest.mark.asyncio
async def test_stop_drains_every_accepted_request() -> None:
    model = OnLoop()
    engine = loop_engine(model, max_batch_size=32)
    await engine.start()
    pending = [asyncio.ensure_future(engine.infer("m", item(i))) for i in range(500)]
    await asyncio.sleep(0)  # every request is queued
    await engine.stop()
    for i, p in enumerate(pending):
        np.testing.assert_array_equal(p.result(), item(i) * 2.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instances": 2}, "one instance"),
        ({"batching": Batching(execution_timeout_ms=100.0)}, "execution timeout"),
    ],
)
def test_settings_a_loop_model_cannot_have_are_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    engine = inferline.Engine()
    with pytest.raises(ValueError, match=message):
        engine.register("m", Recorder(), inputs=X, outputs=Y, isolation="loop", **kwargs)


def test_an_unknown_isolation_names_the_choices() -> None:
    engine = inferline.Engine()
    with pytest.raises(ValueError, match=r"'thread', 'process', 'loop'"):
        engine.register("m", Recorder(), inputs=X, outputs=Y, isolation="fiber")


@pytest.mark.asyncio
async def test_a_repository_model_with_isolation_loop_runs_on_the_loop(tmp_path: Path) -> None:
    d = tmp_path / "repo" / "doubler"
    (d / "1").mkdir(parents=True)
    (d / "model.toml").write_text(python_model_toml(top='isolation = "loop"'))
    # Doubles on the main thread (where the test's loop runs), triples anywhere else.
    (d / "1" / "model.py").write_text(
        "import threading\n"
        "def predict(x):\n"
        "    on_main = threading.current_thread() is threading.main_thread()\n"
        "    return x * (2 if on_main else 3)\n"
    )
    assert threading.current_thread() is threading.main_thread()
    async with inferline.Engine.from_repository(tmp_path / "repo", allow_code=True) as engine:
        x = np.full(4, 1.5, np.float32)
        ys = await asyncio.gather(*(engine.infer("doubler", x) for _ in range(50)))
    for y in ys:
        np.testing.assert_array_equal(y, x * 2)


def test_the_batch_decorator_runs_its_function_on_the_loop() -> None:
    threads: set[int] = set()

    @inferline.batch(max_batch_size=4, isolation="loop")
    def double(batch: np.ndarray) -> np.ndarray:
        threads.add(threading.get_ident())
        return batch * 2

    async def main() -> list[Any]:
        try:
            return list(await asyncio.gather(*(double(item(i)) for i in range(10))))
        finally:
            await double.stop()

    ys = asyncio.run(main())
    for i, y in enumerate(ys):
        np.testing.assert_array_equal(y, item(i) * 2)
    assert threads == {threading.get_ident()}


@pytest.mark.asyncio
async def test_a_new_version_takes_over_under_load_and_the_old_one_drains() -> None:
    engine = inferline.Engine()
    opts: dict[str, Any] = {"inputs": X, "outputs": Y, "isolation": "loop", "warmup": False}
    engine.register("m", OnLoop(lambda b: b * 1.0), version=1, **opts)
    answers: list[float] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def client() -> None:
        for _ in range(20000):
            if stop.is_set():
                return
            try:
                answers.append(float((await engine.infer("m", item(1.0)))[0]))
            except Exception as exc:  # any failure breaks the swap's promise
                failures.append(exc)

    async with engine:
        clients = [asyncio.ensure_future(client()) for _ in range(16)]
        await until(lambda: len(answers) >= 200 or bool(failures))
        engine.register("m", OnLoop(lambda b: b * 2.0), version=2, **opts)
        await until(lambda: engine.model_info("m").version == 2)
        swapped_at = len(answers)
        await until(lambda: len(answers) >= swapped_at + 200 or bool(failures))
        await engine.retire("m", 1, drain_timeout=10.0)  # its drain is seen by the loop's pass
        stop.set()
        await asyncio.gather(*clients)
        assert [i.version for i in engine.models()] == [2]
    assert not failures
    assert set(answers) == {1.0, 2.0}
    assert answers[-1] == 2.0
