"""Pipeline stages: batch-wise Python steps before and after a model's core (pre -> core -> post).

A model registered with ``pre=Stage(...)`` and/or ``post=Stage(...)`` takes the pre stage's raw
items (a ``str`` for a text model) and answers what the post stage (or the core) returns::

    engine.register("minilm", encoder, inputs=core_specs, pre=Stage(tokenize, inputs=text_spec))
    await engine.infer("minilm", "a sentence")          # float32 [384]
    await engine.infer_batch("minilm", ["a", "b"])      # float32 [2, 384]

How a request flows (all of it on the event loop except the stage functions themselves):

1. **Admission, before any work.** The model's pipeline holds at most the core's queue bound
   (``Batching.max_queue_size``) items from admission to answer; a request that would pass it
   is refused at once with ``QueueFullError``, before any stage runs. Since the core never
   holds more than the pipeline admitted, its own queue can never refuse an item a stage has
   already worked on.
2. **Each stage is a bounded queue with its own thread pool** (``threads`` threads). An idle
   thread takes what is queued at once (up to ``max_batch_size`` items, whatever requests they
   came from: concurrent requests are coalesced into one call of the stage function); while
   every thread is busy, items accumulate and the next call takes them together. The function
   runs off the event loop, so a function that releases the GIL (``tokenizers``'
   ``encode_batch``, numpy) runs in parallel with the loop and the core's workers.
3. **Stages are connected by queues, never by a thread waiting on another.** A request's items
   go pre queue -> the core's native queue (all its rows in one call, admitted together) ->
   post queue; a slow stage only lets its own queue grow (bounded by the admission in 1).
4. **Errors stay with their request.** A stage function that raises is retried item by item
   in the same thread, so only the items that fail again fail, each request with a
   ``StageError`` (a ``ModelError``) naming the model, the stage and the exception; an
   ``InferlineError`` a stage raises on purpose (``InvalidInput`` for an item it cannot take)
   is passed through as it is. Timeouts cover the whole pipeline: a request whose deadline
   passes in a stage's queue is dropped from it without being computed.

A stage function takes a list of items and returns one result per item, in order. A result
may be a :class:`Prepared`, which carries per-item ``parameters`` besides the value (the text
model's tokenizer reports ``{"truncated": True}`` that way); the engine merges them into the
:class:`Answer` that ``infer(..., with_parameters=True)`` returns, and the HTTP server puts them
in the response's ``parameters``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    DeadlineExceeded,
    EngineStopped,
    InferlineError,
    InvalidInput,
    ModelError,
    QueueFullError,
)
from ..types import TensorSpec
from .inputs import check_specs
from .rows import check_priority_range, infer_rows

if TYPE_CHECKING:
    from .versions import ServedVersion

__all__ = ["Answer", "Pipeline", "Prepared", "Stage", "StageError"]


class StageError(ModelError):
    """A pipeline stage raised for this request's item(s); other requests are unaffected."""


@dataclass(frozen=True)
class Prepared:
    """One item's result from a stage, with per-item ``parameters`` for the answer (e.g.
    ``{"truncated": True}``). A stage may return plain values instead."""

    value: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """What ``infer(..., with_parameters=True)`` and ``infer_batch(..., with_parameters=True)``
    return: the ``output`` (as without the flag) and the parameters the stages reported.

    ``rows`` holds each item's own parameters (one dict per item; ``infer`` has one row).
    ``parameters`` merges them for the whole request: a key any row set, with a boolean true
    when it is true for any row, and any other value listed per row (``None`` where a row did
    not set it) unless every row gave the same value.
    """

    output: Any
    parameters: dict[str, Any]
    rows: list[dict[str, Any]]


def merge_parameters(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The request-level parameters of per-row ones (see :class:`Answer`)."""
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    merged: dict[str, Any] = {}
    for k in keys:
        values = [r.get(k) for r in rows]
        present = [x for x in values if x is not None]
        if all(isinstance(x, bool) for x in present):
            merged[k] = any(present)
        elif len(present) == len(values) and all(x == present[0] for x in present):
            merged[k] = present[0]
        else:
            merged[k] = values
    return merged


def _positive(where: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where} must be a positive int, got {value!r}")
    return value


class Stage:
    """A batch-wise Python step before (``pre``) or after (``post``) a model's core.

    ``fn(items: list) -> Sequence``: one result per item, in order, each a value or a
    :class:`Prepared`. A pre stage's results are the core's inputs (an array, or a dict name ->
    array for several inputs); a post stage gets the core's per-item outputs. ``fn`` runs on
    the stage's own ``threads`` threads, at most ``max_batch_size`` items per call.

    ``inputs``: what a pre stage takes, as the model's public signature (shown by
    ``model_info`` and checked by the HTTP server; e.g. ``TensorSpec("text", "BYTES")``);
    required for a pre stage. ``outputs``: what a post stage returns, when it differs from the
    core's outputs. ``name`` names the stage in errors, logs and thread names.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        name: str | None = None,
        inputs: Sequence[TensorSpec] | TensorSpec | None = None,
        outputs: Sequence[TensorSpec] | TensorSpec | None = None,
        threads: int = 1,
        max_batch_size: int = 64,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Stage fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.inputs = check_specs("Stage inputs", inputs, allow_empty=True)
        self.outputs = check_specs("Stage outputs", outputs, allow_empty=True)
        self.threads = _positive("Stage threads", threads)
        self.max_batch_size = _positive("Stage max_batch_size", max_batch_size)

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, threads={self.threads}, max_batch_size={self.max_batch_size})"


class _Job:
    """One request's items in one stage: answered when every item is."""

    __slots__ = ("future", "items", "left", "results", "taken")

    def __init__(self, items: list[Any], future: asyncio.Future[list[Any]]) -> None:
        self.items = items
        self.results: list[Any] = [None] * len(items)
        self.taken = 0  # items handed to a thread so far
        self.left = len(items)  # items not answered yet
        self.future = future


# What a stage thread gives back per item: (True, result) or (False, the exception).
_Outcome = tuple[bool, Any]


class _StageRunner:
    """One stage of one model version: its queue of jobs and its thread pool. Used on the
    event loop; only ``_run`` runs on the stage's threads."""

    def __init__(self, model: str, where: str, stage: Stage) -> None:
        self.model = model
        self.where = where  # "pre" or "post"
        self.stage = stage
        self.queue: deque[_Job] = deque()
        self.busy = 0
        self.executor = concurrent.futures.ThreadPoolExecutor(
            stage.threads, thread_name_prefix=f"inferline-{model}-{where}-{stage.name}"
        )

    def submit(
        self, loop: asyncio.AbstractEventLoop, items: list[Any]
    ) -> asyncio.Future[list[Any]]:
        """A future for the stage's results of ``items`` (a list, in order)."""
        job = _Job(items, loop.create_future())
        self.queue.append(job)
        self._pump(loop)
        return job.future

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        # Work-conserving: every idle thread takes what is queued now.
        while self.busy < self.stage.threads and self.queue:
            batch = self._take()
            if not batch:
                return
            self.busy += 1
            items = [job.items[i] for job, i in batch]
            done = loop.run_in_executor(self.executor, self._run, items)
            done.add_done_callback(lambda f, b=batch: self._deliver(loop, b, f))  # type: ignore[misc]

    def _take(self) -> list[tuple[_Job, int]]:
        """Up to ``max_batch_size`` queued items, from as many jobs as they come from; jobs
        already answered (cancelled, timed out, failed) are dropped uncomputed."""
        room = self.stage.max_batch_size
        batch: list[tuple[_Job, int]] = []
        queue = self.queue
        while queue and room:
            job = queue[0]
            if job.future.done():
                queue.popleft()
                continue
            n = min(room, len(job.items) - job.taken)
            batch.extend((job, i) for i in range(job.taken, job.taken + n))
            job.taken += n
            room -= n
            if job.taken == len(job.items):
                queue.popleft()
        return batch

    def _run(self, items: list[Any]) -> list[_Outcome]:
        # On a stage thread. One call for the batch; if it raises (or answers the wrong
        # number of results), each item alone, so only the items that fail again fail.
        try:
            out = list(self.stage.fn(items))
            if len(out) == len(items):
                return [(True, r) for r in out]
            error: BaseException = ValueError(f"returned {len(out)} results for {len(items)} items")
        except Exception as exc:
            error = exc
        if len(items) == 1:
            return [(False, error)]
        outcomes: list[_Outcome] = []
        for item in items:
            try:
                one = list(self.stage.fn([item]))
                if len(one) != 1:
                    raise ValueError(f"returned {len(one)} results for 1 item")
                outcomes.append((True, one[0]))
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    def _deliver(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[_Job, int]],
        done: asyncio.Future[list[_Outcome]],
    ) -> None:
        self.busy -= 1
        exc = done.exception() if not done.cancelled() else EngineStopped("stage stopped")
        outcomes: list[_Outcome] = [(False, exc)] * len(batch) if exc is not None else done.result()
        for (job, i), (ok, value) in zip(batch, outcomes, strict=True):
            if job.future.done():
                continue
            if not ok:
                job.future.set_exception(self._error(value))
                continue
            job.results[i] = value
            job.left -= 1
            if job.left == 0:
                job.future.set_result(job.results)
        self._pump(loop)

    def _error(self, exc: BaseException) -> InferlineError:
        if isinstance(exc, InferlineError):
            return exc
        where = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return StageError(
            f"model {self.model!r}: {self.where} stage {self.stage.name!r} failed: {where}"
        )

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _split(results: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
    values: list[Any] = []
    params: list[dict[str, Any]] = []
    for r in results:
        if isinstance(r, Prepared):
            values.append(r.value)
            params.append(dict(r.parameters))
        else:
            values.append(r)
            params.append({})
    return values, params


def _stack(model: str, where: str, values: list[Any]) -> Any:
    """Per-item values (arrays, or dicts name -> array) as one batch ``[N, ...]``."""
    try:
        if isinstance(values[0], Mapping):
            return {k: np.stack([np.asarray(v[k]) for v in values]) for k in values[0]}
        return np.stack([np.asarray(v) for v in values])
    except (KeyError, ValueError, TypeError) as exc:
        raise StageError(
            f"model {model!r}: the {where} stage's results do not stack into one batch: {exc}"
        ) from None


def _rows_of(out: Any, n: int) -> list[Any]:
    if isinstance(out, dict):
        return [{k: a[i] for k, a in out.items()} for i in range(n)]
    return list(out)


class Pipeline:
    """A model version's stages around its core, and the path of its requests.

    Built by ``Engine.register(..., pre=, post=)``; used on the engine's event loop only.
    """

    def __init__(self, v: ServedVersion, pre: Stage | None, post: Stage | None) -> None:
        for where, stage in (("pre", pre), ("post", post)):
            if stage is not None and not isinstance(stage, Stage):
                raise TypeError(f"{where} must be inferline.Stage, got {type(stage).__name__}")
        if pre is not None and not pre.inputs:
            raise ValueError(
                f"model {v.name!r}: a pre stage must declare the inputs it takes "
                "(Stage(..., inputs=TensorSpec(...)))"
            )
        if pre is None and post is None:
            raise ValueError(f"model {v.name!r}: a pipeline needs a pre or a post stage")
        self.v = v
        self.pre = _StageRunner(v.name, "pre", pre) if pre is not None else None
        self.post = _StageRunner(v.name, "post", post) if post is not None else None
        self.inputs: list[TensorSpec] = pre.inputs if pre is not None else list(v.inputs)
        self.outputs: list[TensorSpec] = (
            post.outputs if post is not None and post.outputs else list(v.outputs)
        )
        self.stages = [s.stage.name for s in (self.pre, self.post) if s is not None]
        self.in_flight = 0
        self.bound = v.queue_size
        self.closed = False
        self._idle: asyncio.Event | None = None

    # -- requests ---------------------------------------------------------------------------
    def items_of(self, batch: Any) -> list[Any]:
        """``infer_batch``'s argument as a list of items: a list or tuple of items, an array
        whose rows are items, or a dict input name -> N values (for the pre stage's inputs)."""
        if isinstance(batch, Mapping):
            names = [s.name for s in self.inputs]
            if set(batch) != set(names):
                raise InvalidInput(
                    f"model {self.v.name!r}: got inputs {sorted(map(str, batch))}; expected {names}"
                )
            cols = {k: list(batch[k]) for k in names}
            sizes = {len(c) for c in cols.values()}
            if len(sizes) != 1:
                raise InvalidInput(
                    f"model {self.v.name!r}: every input needs the same number of items; got "
                    + ", ".join(f"{k}: {len(c)}" for k, c in cols.items())
                )
            if len(names) == 1:
                return cols[names[0]]
            return [{k: cols[k][i] for k in names} for i in range(sizes.pop())]
        if isinstance(batch, list | tuple | np.ndarray):
            return list(batch)
        raise InvalidInput(
            f"model {self.v.name!r}: infer_batch takes a list of items (or a dict input name "
            f"-> list), got {type(batch).__name__}"
        )

    async def run(
        self,
        loop: asyncio.AbstractEventLoop,
        items: list[Any],
        priority: int,
        timeout: float | None,
    ) -> tuple[Any, list[dict[str, Any]]]:
        """``items`` through pre -> core -> post: the stacked outputs ``[N, ...]`` (an array,
        or a dict for several outputs) and each item's parameters."""
        n = len(items)
        if n == 0:
            raise InvalidInput(f"model {self.v.name!r}: the batch is empty")
        if self.closed:
            raise EngineStopped(f"model {self.v.name!r} is stopping; it takes no new requests")
        check_priority_range(self.v, priority)
        if self.in_flight + n > self.bound:
            raise QueueFullError(
                f"model {self.v.name!r}: {self.in_flight} items are in its pipeline and "
                f"{n} more would pass its bound of {self.bound} (max_queue_size); retry later"
            )
        self.in_flight += n
        try:
            if timeout is None:
                return await self._flow(loop, items, priority, None)
            try:
                return await asyncio.wait_for(self._flow(loop, items, priority, timeout), timeout)
            except asyncio.TimeoutError:  # not the builtin before 3.11
                raise DeadlineExceeded(
                    f"model {self.v.name!r}: no answer within the {timeout:g}s timeout"
                ) from None
        finally:
            self.in_flight -= n
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def _flow(
        self,
        loop: asyncio.AbstractEventLoop,
        items: list[Any],
        priority: int,
        timeout: float | None,
    ) -> tuple[Any, list[dict[str, Any]]]:
        n = len(items)
        params: list[dict[str, Any]] = [{} for _ in range(n)]
        start = loop.time()
        if self.pre is not None:
            values, params = _split(await self.pre.submit(loop, items))
            core_in = _stack(self.v.name, "pre", values)
        else:
            core_in = _stack(self.v.name, "caller's", items)
        left = None if timeout is None else max(timeout - (loop.time() - start), 1e-6)
        out = await infer_rows(loop, self.v, core_in, priority, left)
        if self.post is None:
            return out, params
        values, post_params = _split(await self.post.submit(loop, _rows_of(out, n)))
        for mine, more in zip(params, post_params, strict=True):
            mine.update(more)
        return _stack(self.v.name, "post", values), params

    # -- lifecycle --------------------------------------------------------------------------
    async def drain(self, timeout: float) -> None:
        """Refuses new requests and waits up to ``timeout`` seconds for admitted ones."""
        self.closed = True
        if self.in_flight:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:  # not the builtin before 3.11
                pass

    def close(self) -> None:
        """Stops the stages' threads (after ``drain``); queued items are answered at once."""
        self.closed = True
        for runner in (self.pre, self.post):
            if runner is not None:
                runner.close()
                while runner.queue:
                    job = runner.queue.popleft()
                    if not job.future.done():
                        job.future.set_exception(
                            EngineStopped(f"model {self.v.name!r} stopped before this request ran")
                        )
