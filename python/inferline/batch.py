"""``@inferline.batch``: a batch function as an awaitable single-item function."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .engine import Batching, Engine
from .types import TensorSpec

__all__ = ["BatchedFunction", "batch"]


class BatchedFunction:
    """Wraps a batch function; ``await f(item)`` returns that item's output.

    Backed by a private ``Engine`` per event loop, started on the first call. Without declared
    ``inputs`` the first item fixes the signature (name ``x``, its dtype and shape); later items
    must match it.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        batching: Batching,
        inputs: Sequence[TensorSpec] | None,
        outputs: Sequence[TensorSpec] | None,
        instances: int,
        isolation: str = "thread",
    ) -> None:
        functools.update_wrapper(self, fn)
        self._fn = fn
        self._batching = batching
        self._inputs = list(inputs) if inputs else None
        self._outputs = list(outputs) if outputs else None
        self._instances = instances
        self._isolation = isolation
        self._engines: dict[asyncio.AbstractEventLoop, asyncio.Future[Engine]] = {}
        self._name = getattr(fn, "__name__", "batched")

    async def _engine(self, first: Any) -> Engine:
        loop = asyncio.get_running_loop()
        pending = self._engines.get(loop)
        if pending is None:
            for old in [lp for lp in self._engines if lp.is_closed()]:
                del self._engines[old]
            pending = loop.create_future()
            self._engines[loop] = pending
            try:
                engine = Engine()
                inputs = self._inputs
                if inputs is None:
                    arr = np.asarray(first)
                    inputs = [TensorSpec("x", arr.dtype, arr.shape)]
                engine.register(
                    self._name,
                    self._fn,
                    inputs=inputs,
                    outputs=self._outputs,
                    batching=self._batching,
                    instances=self._instances,
                    isolation=self._isolation,
                    warmup=self._inputs is not None,
                )
                await engine.start()
                pending.set_result(engine)
            except BaseException as exc:
                del self._engines[loop]
                pending.set_exception(exc)
                raise
        return await asyncio.shield(pending)

    async def __call__(self, x: Any, *, priority: int = 0, timeout: float | None = None) -> Any:
        engine = await self._engine(x)
        return await engine.infer(self._name, x, priority=priority, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        """The engine's figures for this function on the running loop."""
        fut = self._engines.get(asyncio.get_running_loop())
        if fut is None or not fut.done():
            raise RuntimeError("no call has been made on this event loop yet")
        return fut.result().stats(self._name)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stops the engine of the running loop (draining accepted calls)."""
        fut = self._engines.pop(asyncio.get_running_loop(), None)
        if fut is not None and fut.done() and not fut.exception():
            await fut.result().stop(drain_timeout)


def batch(
    fn: Callable[[Any], Any] | None = None,
    *,
    max_batch_size: int = 8,
    max_queue_delay_ms: float = 1.0,
    max_queue_size: int = 1024,
    priority_levels: int = 1,
    inputs: Sequence[TensorSpec] | None = None,
    outputs: Sequence[TensorSpec] | None = None,
    instances: int = 1,
    isolation: str = "thread",
) -> Any:
    """Decorator: ``@inferline.batch(max_batch_size=32, max_queue_delay_ms=2)`` over a function
    taking a batch ``[B, ...]`` and returning ``[B, ...]`` makes ``await f(item)`` work.
    ``isolation="loop"`` runs the function on the event loop's thread (see
    ``Engine.register``): the fastest for a cheap function, but one that hangs stalls the loop."""
    batching = Batching(
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        max_queue_size=max_queue_size,
        priority_levels=priority_levels,
    )

    def wrap(f: Callable[[Any], Any]) -> BatchedFunction:
        return BatchedFunction(f, batching, inputs, outputs, instances, isolation)

    return wrap(fn) if fn is not None else wrap
