"""Process instances: a model run in child processes through shared memory answers as a thread
instance does; its errors, its crash (SIGKILL) and its hang fail only its own batch; the
instance comes back; stop() leaves no child behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from process_models import HANG, double, fail_negative, two_in_two_out, wrong_dtype
from python_models import python_model_toml

import inferline
from inferline import Batching, TensorSpec
from inferline.repository import RepositoryError, load_model_config

DIM = 4
X = [TensorSpec("x", "FP32", (DIM,))]
Y = [TensorSpec("y", "FP32", (DIM,))]
WAIT_S = 30.0  # bound on every wait below (children start in well under a second)


def row(v: float) -> np.ndarray:
    return np.full(DIM, v, np.float32)


def pids(engine: inferline.Engine, name: str) -> list[int]:
    (view,) = [v for v in engine.live_versions() if v.name == name]
    return view.instance_pids()


async def wait_for(cond: Callable[[], bool], what: str) -> None:
    until = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (it was reaped or is gone otherwise)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def reaped(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def process_engine(
    model: Callable[..., object], *, instances: int = 1, warmup: bool = False, **batching: float
) -> inferline.Engine:
    """An engine with ``model`` registered as "m" (X -> Y) in process instances."""
    engine = inferline.Engine()
    engine.register(
        "m",
        model,
        isolation="process",
        instances=instances,
        inputs=X,
        outputs=Y,
        batching=Batching(**batching),  # type: ignore[arg-type]
        warmup=warmup,
    )
    return engine


@pytest.mark.asyncio
async def test_process_instances_answer_as_thread_instances_do() -> None:
    ins = [TensorSpec("a", "FP32", (3,)), TensorSpec("b", "FP32", (3,))]
    outs = [TensorSpec("s", "FP32", (3,)), TensorSpec("i", "INT64", ())]
    engine = inferline.Engine()
    batching = Batching(max_batch_size=8)
    engine.register("t", two_in_two_out, inputs=ins, outputs=outs, batching=batching, instances=2)
    engine.register(
        "p",
        two_in_two_out,
        inputs=ins,
        outputs=outs,
        batching=batching,
        instances=2,
        isolation="process",
    )
    rng = np.random.default_rng(0)
    rows = [
        {
            "a": rng.standard_normal(3).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
        }
        for _ in range(64)
    ]
    async with engine:
        assert engine.model_info("p").platform == "process"
        assert all(p > 0 for p in pids(engine, "p")) and len(pids(engine, "p")) == 2
        assert pids(engine, "t") == []
        got_t = await asyncio.gather(*(engine.infer("t", r) for r in rows))
        got_p = await asyncio.gather(*(engine.infer("p", r) for r in rows))
    for t, p in zip(got_t, got_p, strict=True):
        assert p["s"].dtype == np.float32 and p["i"].dtype == np.int64
        np.testing.assert_array_equal(t["s"], p["s"])
        np.testing.assert_array_equal(t["i"], p["i"])


@pytest.mark.asyncio
async def test_a_model_error_fails_only_its_batch_with_its_message() -> None:
    engine = process_engine(fail_negative, warmup=True, max_batch_size=1)
    async with engine:
        bad = engine.infer("m", row(-1.0))
        good = engine.infer("m", row(2.0))
        results = await asyncio.gather(bad, good, return_exceptions=True)
        assert isinstance(results[0], inferline.ModelError)
        assert str(results[0]) == "model 'm' failed: ValueError: negative input"
        np.testing.assert_array_equal(results[1], row(2.0))


@pytest.mark.asyncio
async def test_outputs_are_checked_in_the_child() -> None:
    engine = process_engine(wrong_dtype)
    async with engine:
        with pytest.raises(inferline.ModelError) as err:
            await engine.infer("m", row(1.0))
    assert str(err.value) == (
        "model 'm' failed: ValueError: output 'y' has dtype float64; expected float32"
    )


@pytest.mark.asyncio
async def test_sigkill_mid_batch_fails_that_batch_and_the_instance_comes_back() -> None:
    engine = process_engine(double, instances=2, max_batch_size=1)
    async with engine:
        before = pids(engine, "m")
        hung = asyncio.ensure_future(engine.infer("m", row(HANG)))
        (view,) = engine.live_versions()
        # Dispatched and computing: nothing queued, one in flight.
        await wait_for(lambda: view.in_flight == 1 and view.queue_depth == 0, "dispatch")
        # Requests on the other instance are unaffected meanwhile.
        np.testing.assert_array_equal(await engine.infer("m", row(1.0)), row(2.0))
        # Which instance holds the hung batch is not known here: kill both children; the one
        # that was idle fails nothing (its next batch restarts it).
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(inferline.ModelError) as err:
            await asyncio.wait_for(hung, WAIT_S)
        # kill() returns before a child is gone, and a batch sent in between fails with it.
        # Nor is a zombie leader enough: its other threads may still hold the socket open, so
        # the backend cannot see the death yet. Reaped is: the backend has seen both deaths
        # (the hung batch's, and the idle child's through its monitor) and restarts both.
        await wait_for(lambda: all(reaped(p) for p in before), "both children reaped")
        msg = str(err.value)
        assert msg.startswith("model 'm' failed: model 'm' instance ")
        assert msg.endswith(" died with SIGKILL; restarting")
        # Back: later requests succeed, on fresh children.
        for v in (3.0, 4.0, 5.0):
            out = await asyncio.wait_for(engine.infer("m", row(v)), WAIT_S)
            np.testing.assert_array_equal(out, row(2 * v))
        assert engine.stats("m")["requests"]["model_error"] == 1


@pytest.mark.asyncio
async def test_execution_timeout_kills_the_child_and_the_instance_serves_again() -> None:
    engine = process_engine(double, max_batch_size=1, execution_timeout_ms=300)
    async with engine:
        (before,) = pids(engine, "m")
        with pytest.raises(inferline.ModelError) as err:
            await asyncio.wait_for(engine.infer("m", row(HANG)), WAIT_S)
        assert "did not finish within the 300 ms execution timeout" in str(err.value)
        await wait_for(lambda: reaped(before), "the hung child killed and reaped")
        # A fresh child is started and loaded before the instance takes work again (its start
        # would otherwise count against the next batch's 300 ms).
        await wait_for(lambda: pids(engine, "m")[0] not in (-1, before), "a fresh child")
        out = await asyncio.wait_for(engine.infer("m", row(2.0)), WAIT_S)
        np.testing.assert_array_equal(out, row(4.0))


@pytest.mark.asyncio
async def test_stop_leaves_no_child_process() -> None:
    engine = process_engine(double, instances=2)
    await engine.start()
    children = pids(engine, "m")
    assert len(children) == 2 and all(alive(p) for p in children)
    hung = asyncio.ensure_future(engine.infer("m", row(HANG)))
    (view,) = engine.live_versions()
    await wait_for(lambda: view.in_flight == 1 and view.queue_depth == 0, "dispatch")
    await engine.stop(drain_timeout=0.2)
    # The hung batch is answered; every child is gone and reaped.
    with pytest.raises((inferline.EngineStopped, inferline.ModelError)):
        await asyncio.wait_for(hung, WAIT_S)
    await wait_for(lambda: all(reaped(p) for p in children), "children reaped")


def test_a_callable_a_child_cannot_import_is_refused() -> None:
    engine = inferline.Engine()
    with pytest.raises(ValueError, match=r"is a lambda, which has no importable name"):
        engine.register("a", lambda x: x, inputs=X, outputs=Y, isolation="process")

    def local(x: np.ndarray) -> np.ndarray:
        return x

    with pytest.raises(
        ValueError,
        match=r"^isolation='process' needs a model its child process can import by "
        r"'module:qualname'; <function .*local.*> is defined inside a function",
    ):
        engine.register("b", local, inputs=X, outputs=Y, isolation="process")
    local.__module__ = "__main__"
    local.__qualname__ = "local"
    with pytest.raises(ValueError, match=r"is defined in __main__, which a child process"):
        engine.register("e", local, inputs=X, outputs=Y, isolation="process")
    with pytest.raises(ValueError, match=r"isolation='process' needs declared outputs"):
        engine.register("c", double, inputs=X, isolation="process")
    with pytest.raises(
        ValueError, match=r"isolation must be one of \('thread', 'process', 'loop'\)"
    ):
        engine.register("d", double, inputs=X, outputs=Y, isolation="fork")


REPO_TOML = python_model_toml(top='instances = 2\nisolation = "process"')

REPO_CODE = """import os
# Each process that imports this file leaves its pid in the model's folder.
open(os.path.join(os.path.dirname(__file__), f"imported-by-{os.getpid()}"), "w").close()
def predict(x):
    return x * 2 + os.getpid() * 0
"""


def make_repo(root: Path, toml: str, code: str = REPO_CODE) -> Path:
    d = root / "repo" / "doubler"
    (d / "1").mkdir(parents=True)
    (d / "model.toml").write_text(toml)
    (d / "1" / "model.py").write_text(code)
    return root / "repo"


@pytest.mark.asyncio
async def test_a_repository_model_runs_in_process_instances(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, REPO_TOML)
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        np.testing.assert_array_equal(await engine.infer("doubler", row(1.5)), row(3.0))
        children = pids(engine, "doubler")
        assert len(children) == 2 and all(alive(p) for p in children)
        assert os.getpid() not in children
        # Only the children imported model.py: the server process never ran its code.
        importers = {int(f.name.rsplit("-", 1)[1]) for f in repo.glob("doubler/1/imported-by-*")}
        assert importers and os.getpid() not in importers
        assert set(children) <= importers
    await wait_for(lambda: all(reaped(p) for p in children), "children reaped")


def test_an_unknown_isolation_in_model_toml_names_the_field(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, REPO_TOML.replace('"process"', '"fork"'))
    with pytest.raises(RepositoryError) as err:
        load_model_config(repo / "doubler")
    assert str(err.value) == (
        f"{repo / 'doubler' / 'model.toml'}: isolation: expected one of 'thread', 'process', "
        "'loop', got 'fork'"
    )


GATED_TIMEOUT_MS = 500
GATED_TOML = python_model_toml(
    top='isolation = "process"',
    batching=f"max_batch_size = 1\nexecution_timeout_ms = {GATED_TIMEOUT_MS}",
)
GATED_CODE = """import os, time
# Loading waits (up to a minute) until the test opens the gate: a start as slow as it likes.
gate = os.path.join(os.path.dirname(__file__), "gate")
until = time.monotonic() + 60
while not os.path.exists(gate) and time.monotonic() < until:
    time.sleep(0.005)
def predict(x):
    if (x[:, 0] == -1).any():
        time.sleep(60)
    return x * 2
"""


@pytest.mark.asyncio
async def test_a_restart_is_not_charged_to_the_execution_timeout_of_the_batch_it_holds(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path, GATED_TOML, GATED_CODE)
    gate = repo / "doubler" / "1" / "gate"
    gate.touch()
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        (view,) = engine.live_versions()

        async def held_through_a_restart(first: int) -> None:
            """The next batch waits for a fresh child that cannot finish loading until the
            gate opens: past three execution timeouts it is still waiting, not failed; then
            it is computed by that child."""
            late = asyncio.ensure_future(engine.infer("doubler", row(2.0)))
            await wait_for(lambda: view.in_flight == 1 and view.queue_depth == 0, "dispatch")
            done, _ = await asyncio.wait({late}, timeout=3 * GATED_TIMEOUT_MS / 1000)
            assert not done, f"the batch did not wait for the restart: {late.exception()!r}"
            assert pids(engine, "doubler") == [-1]  # still loading
            gate.touch()
            np.testing.assert_array_equal(await asyncio.wait_for(late, WAIT_S), row(4.0))
            assert pids(engine, "doubler")[0] not in (-1, first)

        # An overrun: the batch fails on time, its child is killed and restarts.
        (first,) = pids(engine, "doubler")
        gate.unlink()
        with pytest.raises(inferline.ModelError) as err:
            await asyncio.wait_for(engine.infer("doubler", row(HANG)), WAIT_S)
        assert f"did not finish within the {GATED_TIMEOUT_MS} ms execution timeout" in str(
            err.value
        )
        await held_through_a_restart(first)
        # A crash while idle: the monitor restarts the child; the next batch waits for it.
        (second,) = pids(engine, "doubler")
        gate.unlink()
        os.kill(second, signal.SIGKILL)
        await wait_for(lambda: reaped(second), "the killed child reaped")
        await held_through_a_restart(second)
        requests = engine.stats("doubler")["requests"]
        assert requests["model_error"] == 1 and requests["success"] == 2
