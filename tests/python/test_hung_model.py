"""A model that never returns: execution timeouts answer on time and replace the instance, and
stop() never waits on it past a hard deadline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import inferline
from inferline import Batching, TensorSpec

DIM = 4
X = [TensorSpec("x", "FP32", (DIM,))]
Y = [TensorSpec("y", "FP32", (DIM,))]
HANG = -1.0  # an input row starting with this value holds its batch in the model


class Hanging:
    """Doubles its input, except that a batch holding a HANG row waits until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if (batch[:, 0] == HANG).any():
            self.entered.set()
            self.release.wait(60)
        return batch * 2.0


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    model = Hanging()
    yield model
    model.release.set()  # let the abandoned thread return (its answer is discarded)


def row(v: float) -> np.ndarray:
    return np.full(DIM, v, np.float32)


@pytest.mark.asyncio
async def test_execution_timeout_answers_and_the_model_keeps_serving(hanging: Hanging) -> None:
    engine = inferline.Engine()
    engine.register(
        "m",
        hanging,
        inputs=X,
        outputs=Y,
        batching=Batching(max_batch_size=1, execution_timeout_ms=200),
        warmup=False,
    )
    async with engine:
        with pytest.raises(inferline.ModelError) as err:
            await asyncio.wait_for(engine.infer("m", row(HANG)), 30)
        assert str(err.value) == (
            "model 'm' failed: batch of 1 did not finish within the 200 ms execution timeout; "
            "its instance was abandoned and replaced"
        )
        # The only instance is still stuck in the model; its replacement serves.
        out = await asyncio.wait_for(engine.infer("m", row(3.0)), 30)
        np.testing.assert_array_equal(out, row(6.0))
        assert engine.stats("m")["requests"]["model_error"] == 1


def test_execution_timeout_is_checked() -> None:
    with pytest.raises(ValueError, match=r"Batching.execution_timeout_ms must be a number"):
        Batching(execution_timeout_ms=-1)
    with pytest.raises(ValueError, match=r"Batching.execution_timeout_ms must be a number"):
        Batching(execution_timeout_ms=True)


@pytest.mark.asyncio
async def test_stop_returns_with_a_hung_model_and_answers_everything(hanging: Hanging) -> None:
    engine = inferline.Engine()
    engine.register(
        "m", hanging, inputs=X, outputs=Y, batching=Batching(max_batch_size=1), warmup=False
    )
    await engine.start()
    hung = asyncio.ensure_future(engine.infer("m", row(HANG)))
    await asyncio.to_thread(hanging.entered.wait, 30)
    queued = [asyncio.ensure_future(engine.infer("m", row(float(i)))) for i in range(3)]
    await asyncio.sleep(0)  # let them be submitted behind the stuck batch
    t0 = time.monotonic()
    await asyncio.wait_for(engine.stop(drain_timeout=0.5), 60)
    # drain 0.5 s + the core's shutdown grace (5 s): "returns", not "hangs forever".
    assert time.monotonic() - t0 < 30
    results = await asyncio.gather(hung, *queued, return_exceptions=True)
    assert isinstance(results[0], inferline.EngineStopped), results[0]
    assert "did not finish within the shutdown grace" in str(results[0])
    for r in results[1:]:
        assert isinstance(r, inferline.EngineStopped), r
