"""The hand-written asyncio batcher the benchmarks measure inferline against, and the bare
future round trip that bounds any asyncio engine. Shared by engine_bench.py and http_bench.py,
so in-process and HTTP figures are ratios against the same code.

``HandBatcher`` is what an expert writes without inferline, with Triton's fixed window:
``infer(x)`` appends ``(x, future)`` to a list and returns the future (no coroutine, no Task,
no ``asyncio.Queue``); a batch leaves as soon as ``max_batch_size`` items wait (the item that
fills it wakes the batcher at once) or when the oldest has waited ``max_queue_delay`` (one
``call_later`` per batch, not ``wait_for``). It stacks the rows and runs the model either
``inline`` on the event loop or in a one-thread ``executor`` (one batch in flight, as one
inferline instance), then answers each future with ``set_result``.

``FutureCeiling`` is the identity model with every cost but the loop's own removed: ``infer``
creates a future and queues it; the first item of a batch schedules one ``call_soon`` (the
loop-side equivalent of one eventfd wake per batch), and that callback resolves up to
``max_batch_size`` futures in one pass. No thread, no GIL hand-off, no batching wait. An
asyncio engine whose requests are answered by another thread cannot do better than this
under the same closed-loop clients, so inferline's identity-model req/s divided by this one's
is the share of the loop's ceiling it reaches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FutureCeiling", "HandBatcher"]

Item = tuple[Any, "asyncio.Future[Any]", float]


class HandBatcher:
    """A pure-asyncio fixed-window dynamic batcher; ``mode`` is ``"inline"`` or ``"executor"``.

    Not thread-safe: ``infer`` must be called on the loop that ran ``start``.
    """

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int,
        max_queue_delay_ms: float,
        mode: str = "inline",
    ) -> None:
        if mode not in ("inline", "executor"):
            raise ValueError(f"mode must be 'inline' or 'executor', got {mode!r}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_ms / 1000.0
        self.mode = mode
        self.pending: list[Item] = []
        self.batches = 0
        self.items = 0
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.mode == "executor":
            self._pool = concurrent.futures.ThreadPoolExecutor(1, "hand-batcher")
        self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for _, fut, _ in self.pending:
            fut.cancel()
        self.pending = []

    def infer(self, x: Any) -> asyncio.Future[Any]:
        """Queues one item; the returned future gets its output row."""
        loop = self._loop
        assert loop is not None, "HandBatcher.start() first"
        fut = loop.create_future()
        pending = self.pending
        pending.append((x, fut, loop.time()))
        n = len(pending)
        # The batcher sleeps either for a first item (n == 1) or for a full batch.
        if n == 1 or n >= self.max_batch_size:
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        return fut

    async def _sleep(self, timeout: float | None) -> None:
        loop = self._loop
        assert loop is not None
        self._wake = wake = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _wake_up, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        max_batch = self.max_batch_size
        while True:
            if not self.pending:
                await self._sleep(None)
            if len(self.pending) < max_batch:
                left = self.pending[0][2] + self.delay - loop.time()
                if left > 0:
                    await self._sleep(left)
            items = self.pending[:max_batch]
            del self.pending[:max_batch]
            batch = np.stack([x for x, _, _ in items])
            try:
                if self._pool is None:
                    out = self.fn(batch)  # inline: the loop computes, as an async def would
                else:
                    out = await loop.run_in_executor(self._pool, self.fn, batch)
            except Exception as exc:  # one failing batch fails its callers only
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(items)
            for i, (_, fut, _) in enumerate(items):
                if not fut.done():
                    fut.set_result(out[i])


def _wake_up(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class FutureCeiling:
    """Identity "model" answered by the loop itself, one ``call_soon`` per batch (see above)."""

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self.batches = 0
        self.items = 0
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        for _, fut in self.pending:
            fut.cancel()
        self.pending = []

    def infer(self, x: Any) -> asyncio.Future[Any]:
        loop = self._loop
        assert loop is not None, "FutureCeiling.start() first"
        fut = loop.create_future()
        self.pending.append((x, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain)
        return fut

    def _drain(self) -> None:
        n = self.max_batch_size
        items = self.pending[:n]
        del self.pending[:n]
        self.batches += 1
        self.items += len(items)
        for x, fut in items:
            if not fut.done():
                fut.set_result(x)
        self._scheduled = bool(self.pending)
        if self._scheduled:
            assert self._loop is not None
            self._loop.call_soon(self._drain)
