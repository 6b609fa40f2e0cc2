"""Pipeline stages around a model's core: a user's own (non-text) model with pre and post stages.

The model takes a variable-length list of numbers: the pre stage packs it into a fixed FP32 [8]
slot plus its length (reporting when it had to cut it), the core (a numpy batch callable)
averages the real values, and the post stage turns the mean into a label dict.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import inferline
from inferline import Batching, Prepared, Stage, StageError, TensorSpec

SLOT = 8
CORE_IN = [TensorSpec("values", "FP32", (SLOT,)), TensorSpec("length", "INT32", (1,))]
CORE_OUT = [TensorSpec("mean", "FP32", (1,))]
RAW_IN = TensorSpec("numbers", "BYTES")


class Packer:
    """The pre stage: records every call's items and can be held at a gate."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait(10)
        with self.lock:
            self.calls.append(list(items))
        out = []
        for numbers in items:
            if numbers == "boom":
                raise RuntimeError("cannot pack 'boom'")
            if not isinstance(numbers, list):
                raise inferline.InvalidInput(f"expected a list of numbers, got {numbers!r}")
            kept = numbers[:SLOT]
            values = np.zeros(SLOT, np.float32)
            values[: len(kept)] = kept
            packed = {"values": values, "length": np.array([max(1, len(kept))], np.int32)}
            params = {"truncated": True} if len(numbers) > SLOT else {}
            out.append(Prepared(packed, params))
        return out

    def seen(self) -> list[Any]:
        with self.lock:
            return [x for call in self.calls for x in call]


def core(batch: dict[str, np.ndarray]) -> np.ndarray:
    lengths = batch["length"][:, 0]
    mask = np.arange(SLOT)[None, :] < lengths[:, None]
    return ((batch["values"] * mask).sum(1) / lengths)[:, None].astype(np.float32)


class Labeller:
    """The post stage: mean -> a small float32 vector [mean, mean >= 0]; can be held."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        self.gate.wait(10)
        return [np.array([o[0], float(o[0] >= 0)], np.float32) for o in outputs]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def hold_in_pre(engine: inferline.Engine, packer: Packer, *items: Any) -> list[Any]:
    """Sends ``items`` (one request each) and returns once the pre stage holds the first at
    its gate (the others queue behind it)."""
    packer.gate.clear()
    packer.entered.clear()
    futures = [asyncio.ensure_future(engine.infer("averager", x)) for x in items]
    await until(packer.entered.is_set)
    return futures


def make_engine(
    packer: Packer, labeller: Labeller | None = None, **batching: Any
) -> inferline.Engine:
    engine = inferline.Engine()
    engine.register(
        "averager",
        core,
        inputs=CORE_IN,
        outputs=CORE_OUT,
        batching=Batching(**batching) if batching else None,
        warmup_inputs=lambda b: [np.zeros((b, SLOT), np.float32), np.ones((b, 1), np.int32)],
        pre=Stage(packer, name="pack", inputs=RAW_IN, max_batch_size=16),
        post=(
            Stage(labeller, name="label", outputs=TensorSpec("label", "FP32", (2,)))
            if labeller is not None
            else None
        ),
    )
    return engine


@pytest.mark.asyncio
async def test_infer_takes_the_raw_item_and_infer_batch_a_list() -> None:
    packer = Packer()
    async with make_engine(packer, Labeller()) as engine:
        one = await engine.infer("averager", [1.0, 2.0, 6.0])
        np.testing.assert_allclose(one, [3.0, 1.0])
        many = await engine.infer_batch("averager", [[-4.0], [2.0, 4.0], [5.0] * 3])
        assert many.shape == (3, 2) and many.dtype == np.float32
        np.testing.assert_allclose(many, [[-4.0, 0.0], [3.0, 1.0], [5.0, 1.0]])
        info = engine.model_info("averager")
        assert [s.name for s in info.inputs] == ["numbers"]
        assert [s.name for s in info.outputs] == ["label"]
        assert info.stages == ["pack", "label"]


@pytest.mark.asyncio
async def test_stage_parameters_reach_the_answer() -> None:
    async with make_engine(Packer()) as engine:
        answer = await engine.infer("averager", list(range(12)), with_parameters=True)
        assert isinstance(answer, inferline.Answer)
        np.testing.assert_allclose(answer.output, [3.5])  # mean of the first 8
        assert answer.parameters == {"truncated": True}
        batch = await engine.infer_batch("averager", [[1.0], list(range(20))], with_parameters=True)
        assert batch.output.shape == (2, 1)
        assert batch.rows == [{}, {"truncated": True}]
        assert batch.parameters == {"truncated": True}
        plain = await engine.infer("averager", [1.0], with_parameters=True)
        assert plain.parameters == {}


@pytest.mark.asyncio
async def test_concurrent_requests_are_coalesced_into_one_stage_call() -> None:
    packer = Packer()
    async with make_engine(packer) as engine:
        (first,) = await hold_in_pre(engine, packer, [0.0])
        rest = [asyncio.ensure_future(engine.infer("averager", [float(i)])) for i in range(1, 6)]
        pre = engine._router.models["averager"].serving.pipeline.pre  # type: ignore[union-attr]
        await until(lambda: len(pre.queue) == 5)
        packer.gate.set()
        await asyncio.gather(first, *rest)
        after_warmup = packer.calls[-2:]
        assert [len(c) for c in after_warmup] == [1, 5]


@pytest.mark.asyncio
async def test_a_slow_post_stage_does_not_block_the_pre_stage() -> None:
    packer, labeller = Packer(), Labeller()
    async with make_engine(packer, labeller) as engine:
        labeller.gate.clear()
        held = asyncio.ensure_future(engine.infer("averager", [1.0]))
        await until(labeller.entered.is_set)
        # While the post stage is stuck, other requests still go through pre and the core.
        seen = len(packer.seen())
        more = [asyncio.ensure_future(engine.infer("averager", [float(i)])) for i in range(4)]
        await until(lambda: len(packer.seen()) == seen + 4)
        assert not held.done()
        labeller.gate.set()
        assert len(await asyncio.gather(held, *more)) == 5


@pytest.mark.asyncio
async def test_a_full_pipeline_refuses_before_any_stage_runs() -> None:
    packer = Packer()
    async with make_engine(packer, max_queue_size=2) as engine:
        held = await hold_in_pre(engine, packer, [0.0], [1.0])
        with pytest.raises(inferline.QueueFullError, match="2 items are in its pipeline"):
            await engine.infer("averager", [99.0])
        with pytest.raises(inferline.QueueFullError, match="bound of 2"):
            await engine.infer_batch("averager", [[98.0]])
        packer.gate.set()
        await asyncio.gather(*held)
        assert [99.0] not in packer.seen() and [98.0] not in packer.seen()


@pytest.mark.asyncio
async def test_a_failing_item_fails_only_its_own_request() -> None:
    packer = Packer()
    async with make_engine(packer) as engine:
        (first,) = await hold_in_pre(engine, packer, [1.0])
        bad = asyncio.ensure_future(engine.infer("averager", "boom"))
        good = asyncio.ensure_future(engine.infer("averager", [5.0]))
        wrong = asyncio.ensure_future(engine.infer("averager", 3))
        packer.gate.set()
        np.testing.assert_allclose(await first, [1.0])
        np.testing.assert_allclose(await good, [5.0])
        with pytest.raises(
            StageError,
            match=r"model 'averager': pre stage 'pack' failed: RuntimeError: cannot pack 'boom'",
        ):
            await bad
        with pytest.raises(inferline.InvalidInput, match="expected a list of numbers, got 3"):
            await wrong
        assert issubclass(StageError, inferline.ModelError)
        # The engine keeps serving.
        np.testing.assert_allclose(await engine.infer("averager", [2.0]), [2.0])


@pytest.mark.asyncio
async def test_a_stage_answering_the_wrong_count_is_named() -> None:
    engine = inferline.Engine()
    engine.register(
        "short",
        core,
        inputs=CORE_IN,
        outputs=CORE_OUT,
        warmup=False,
        pre=Stage(lambda items: [], name="drops", inputs=RAW_IN),
    )
    async with engine:
        with pytest.raises(StageError, match=r"pre stage 'drops' failed: ValueError: returned 0"):
            await engine.infer("short", [1.0])


@pytest.mark.asyncio
async def test_a_timeout_covers_the_stage_queue_and_the_item_is_never_packed() -> None:
    packer = Packer()
    async with make_engine(packer) as engine:
        (held,) = await hold_in_pre(engine, packer, [1.0])
        with pytest.raises(inferline.DeadlineExceeded, match=r"no answer within the 0\.05s"):
            await engine.infer("averager", [42.0], timeout=0.05)
        packer.gate.set()
        await held
        await engine.infer("averager", [7.0])
        assert [42.0] not in packer.seen()


@pytest.mark.asyncio
async def test_stop_lets_admitted_requests_finish() -> None:
    packer = Packer()
    engine = make_engine(packer)
    await engine.start()
    (held,) = await hold_in_pre(engine, packer, [4.0])
    stopping = asyncio.ensure_future(engine.stop(drain_timeout=10))
    await until(lambda: engine._state == "draining")
    with pytest.raises(inferline.EngineStopped, match="takes no new requests"):
        await engine.infer("averager", [1.0])
    packer.gate.set()
    np.testing.assert_allclose(await held, [4.0])
    await stopping


def test_register_checks_its_stages() -> None:
    engine = inferline.Engine()
    with pytest.raises(ValueError, match="a pre stage must declare the inputs it takes"):
        engine.register("m", core, inputs=CORE_IN, pre=Stage(Packer()))
    with pytest.raises(TypeError, match=r"pre must be inferline\.Stage, got function"):
        engine.register("m", core, inputs=CORE_IN, pre=core)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the result cache does not apply to stages"):
        engine.register(
            "m", core, inputs=CORE_IN, cache=(10, 1000), pre=Stage(Packer(), inputs=RAW_IN)
        )
    with pytest.raises(ValueError, match="Stage threads must be a positive int, got 0"):
        Stage(Packer(), threads=0)
    with pytest.raises(TypeError, match="Stage fn must be callable, got int"):
        Stage(3)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_retiring_a_version_lets_items_in_its_stages_finish() -> None:
    packer = Packer()
    async with make_engine(packer) as engine:
        (held,) = await hold_in_pre(engine, packer, [6.0])
        retiring = asyncio.ensure_future(engine.retire("averager", 1, drain_timeout=10))
        await until(lambda: engine.model_info("averager").state == "draining")
        packer.gate.set()
        np.testing.assert_allclose(await held, [6.0])
        await retiring
        pre = packer.seen()
        assert pre[-1] == [6.0]
