"""The request paths beside ``infer``'s fast path: ``infer_batch`` and the result cache.

``infer_batch`` sends N rows in one native call and awaits one future.

The core queues every row of a call or none (``QueueFullError``), stacks the answered rows
into ``[N, ...]`` arrays as it drains them, and answers the call's one future when the last row
is answered, or with the first row's error (the rows still queued are then cancelled). No
Task, coroutine or Python object per row on this path, except with a result cache, which is
consulted row by row and sends only the misses to the model, still in one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from ..cache import input_key
from ..errors import DeadlineExceeded, InvalidInput
from .inputs import as_rows, convert
from .versions import ServedVersion

__all__ = ["check_priority_range", "expire", "infer_cached", "infer_rows", "infer_rows_cached"]


async def infer_rows(
    loop: asyncio.AbstractEventLoop,
    v: ServedVersion,
    batch: Any,
    priority: int,
    timeout: float | None,
) -> Any:
    """The stacked answer of ``batch``'s rows (an array, or a dict for several outputs).
    ``priority`` and ``timeout`` must already be checked; cancelling the await cancels every
    row still queued, and the timeout raises ``DeadlineExceeded`` as for ``infer``."""
    fut = loop.create_future()
    handles = v.sched.submit_many(batch, priority, timeout, fut)
    if handles is None:  # not exact rows: convert (with messages naming the problem), again
        batch = as_rows(v.name, v.inputs, batch)
        handles = v.sched.submit_many(batch, priority, timeout, fut, converted=True)
        assert handles is not None  # converted=True raises instead of answering None
    timer = (
        None
        if timeout is None
        else loop.call_later(timeout, expire, fut, v, v.sched.cancel_many, handles, timeout)
    )
    try:
        return await fut
    except asyncio.CancelledError:
        v.sched.cancel_many(handles, False)
        raise
    finally:
        if timer is not None:
            timer.cancel()


async def infer_rows_cached(
    v: ServedVersion, batch: Any, send: Callable[[Any], Awaitable[Any]]
) -> Any:
    """``batch`` through the version's result cache: hits are answered from it, the misses go
    to the model in one call, ``send(rows)`` (``infer_rows``), and are cached (the same entries
    ``infer`` uses)."""
    assert v.cache is not None
    rows = as_rows(v.name, v.inputs, batch)
    if isinstance(rows, np.ndarray):
        items: list[Any] = list(rows)
    else:
        n = len(next(iter(rows.values())))
        items = [{k: a[i] for k, a in rows.items()} for i in range(n)]
    keys = [input_key(item) for item in items]
    answers: list[Any] = [v.cache.get(key) for key in keys]
    missed = [i for i, a in enumerate(answers) if a is None]
    if missed:
        if isinstance(rows, np.ndarray):
            sub: Any = rows[missed]
        else:
            sub = {k: a[missed] for k, a in rows.items()}
        out = await send(sub)
        for j, i in enumerate(missed):
            answers[i] = {k: a[j] for k, a in out.items()} if isinstance(out, dict) else out[j]
            if v.state == "ready":  # a version being swapped out keeps nothing
                v.cache.put(keys[i], answers[i])
    if isinstance(answers[0], dict):
        return {k: np.stack([a[k] for a in answers]) for k in answers[0]}
    return np.stack(answers)


def check_priority_range(v: ServedVersion, priority: int) -> None:
    """``InvalidInput`` for a priority past the version's lanes, as the core says at submit:
    the cached paths check it first, since a hit never reaches the core."""
    levels = v.batching.priority_levels
    if priority >= levels:
        raise InvalidInput(
            f"priority {priority} is out of range; expected 0..{levels - 1} (0 is the highest)"
        )


async def infer_cached(
    infer: Callable[..., Awaitable[Any]],
    v: ServedVersion,
    x: Any,
    priority: int,
    timeout: float | None,
) -> Any:
    """One item through the version's result cache: a hit answers at once, a miss goes through
    ``infer`` (the engine's, told to skip the cache) and is cached."""
    assert v.cache is not None
    x = convert(v.name, v.inputs, x)
    key = input_key(x)
    hit = v.cache.get(key)
    if hit is not None:
        return hit
    out = await infer(
        v.name, x, priority=priority, timeout=timeout, version=v.version, _use_cache=False
    )
    if v.state == "ready":  # a version being swapped out keeps nothing
        v.cache.put(key, out)
    return out


def expire(
    fut: asyncio.Future[Any],
    v: ServedVersion,
    cancel: Any,
    handle: Any,
    timeout: float,
) -> None:
    """A caller's timeout: ``cancel(handle, True)`` in the core, then ``DeadlineExceeded``."""
    if not fut.done():
        cancel(handle, True)
        fut.set_exception(
            DeadlineExceeded(f"model {v.name!r}: no answer within the {timeout:g}s timeout")
        )
