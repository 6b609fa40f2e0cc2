"""The engine's runtime: the native core on the event loop, bringing versions up and down.

``Runtime`` owns the ``_core.Core`` (its completion queue and the file descriptor that wakes
the loop), starts and warms versions, retires them (no new requests, accepted ones finish,
then unload) and drains everything at stop. Inference itself is in ``engine.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any

import numpy as np

from .. import _core
from .versions import Batching, Router, ServedModel, ServedVersion

__all__ = ["Runtime"]

log = logging.getLogger("inferline")
trace_log = logging.getLogger("inferline.requests")


class Runtime:
    """The native core and the loop's side of it. Used on the engine's event loop only."""

    def __init__(self, router: Router) -> None:
        self.core = _core.Core()
        self.router = router
        self.loop: asyncio.AbstractEventLoop | None = None
        self._drained: asyncio.Event | None = None  # set when nothing is in flight at stop
        self._background: set[asyncio.Task[Any]] = set()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answers futures on ``loop``: the core's fd wakes it once per finished batch."""
        self.loop = loop
        loop.add_reader(self.core.fd, self._on_answers)
        # Runs the batches of models with isolation="loop", draining after each pass.
        self.core.attach_loop(loop, self._on_answers)
        if trace_log.isEnabledFor(logging.DEBUG):
            self.core.set_trace(_trace_request)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Runs ``coro`` in the background; cancelled at ``drain_all`` if still running."""
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- bringing a version up ------------------------------------------------------------
    async def bring_up(self, entry: ServedModel, v: ServedVersion, *, set_default: bool) -> None:
        """Starts the version's workers and warms it up: state ready, or failed with a reason
        (its workers then stopped)."""
        assert self.loop is not None
        log.info("model %s version %s: %s", v.name, v.version, describe_settings(v))
        v.sched.start()
        v.started = True
        v.state = "warming"
        try:
            await self._warm(v)
        except Exception as exc:
            v.state = "failed"
            v.reason = f"warm-up failed: {exc}"
            log.error("model %s version %s: %s", v.name, v.version, v.reason)
            v.sched.close()
            await self.loop.run_in_executor(None, v.sched.shutdown)
            return
        v.state = "ready"
        log.info(
            "model %s version %s ready%s",
            v.name,
            v.version,
            f" ({'; '.join(v.notes)})" if v.notes else "",
        )
        if set_default:
            entry.swap_default()

    async def _warm(self, v: ServedVersion) -> None:
        assert self.loop is not None
        for b in v.warmup_sizes:
            for _ in range(v.warmup_repeats):
                arrays: list[np.ndarray | None]
                if v.warmup_inputs is not None:
                    arrays = list(v.warmup_inputs(b))
                else:
                    arrays = [None] * len(v.inputs)
                await self.loop.run_in_executor(None, v.sched.warmup, b, arrays)

    # -- taking versions down -------------------------------------------------------------
    async def retire(self, entry: ServedModel, v: ServedVersion, drain_timeout: float) -> None:
        """Takes a version out of service: no new requests, accepted ones finish, unload."""
        if v.state in ("draining", "unloaded"):
            return
        assert self.loop is not None
        v.state = "draining"
        if entry.serving is v:
            entry.serving = None
            entry.swap_default()
        if v.pipeline is not None:  # items in its stages reach the core before it closes
            await v.pipeline.drain(drain_timeout)
        v.sched.close()
        retired = self.router.retired
        if v.sched.in_flight:
            v.drained = asyncio.Event()
            retired.append(v)
            try:
                await asyncio.wait_for(v.drained.wait(), drain_timeout)
            except asyncio.TimeoutError:  # not the builtin before 3.11
                log.warning(
                    "model %s version %s did not drain in %.0fs", v.name, v.version, drain_timeout
                )
        await self.loop.run_in_executor(None, v.sched.shutdown)
        self.core.drain()
        if v.pipeline is not None:
            v.pipeline.close()
        v.state = "unloaded"
        if v.cache is not None:
            v.cache.clear()
        if entry.versions.get(v.version) is v:
            del entry.versions[v.version]
        entry.aliases = {a: n for a, n in entry.aliases.items() if n in entry.versions}
        if v in retired and v.sched.in_flight == 0:
            retired.remove(v)
        self.core.reap()
        log.info("model %s version %s unloaded", v.name, v.version)

    async def drain_all(self, drain_timeout: float) -> None:
        """Closes every version, waits up to ``drain_timeout`` for accepted work, answers the
        rest ``EngineStopped`` and joins the workers; the loop is then detached."""
        assert self.loop is not None
        versions = self.router.all_versions()
        for v in versions:
            v.sched.close()
        self._drained = asyncio.Event()
        if _in_flight(versions):
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except asyncio.TimeoutError:  # not the builtin before 3.11
                log.warning(
                    "drain timed out after %.1fs; answering the rest EngineStopped", drain_timeout
                )
        for v in versions:
            await self.loop.run_in_executor(None, v.sched.shutdown)
        self.core.drain()
        for task in list(self._background):
            task.cancel()
        self.loop.remove_reader(self.core.fd)
        self.core.detach_loop()
        self.core.set_trace(None)
        self.core.reap()

    def shutdown_now(self) -> None:
        """Joins every version's workers at once (no drain); safe from any thread."""
        for v in self.router.all_versions():
            v.sched.shutdown()

    def _on_answers(self) -> None:
        # The reader callback runs with no task on the loop: the tasks waiting on answered
        # requests are woken here directly, not through a call_soon each.
        self.core.drain(True)
        for v in self.router.retired:
            if v.drained is not None and v.sched.in_flight == 0:
                v.drained.set()
        if self._drained is not None and not self._drained.is_set():
            if _in_flight(self.router.all_versions()) == 0:
                self._drained.set()


def describe_settings(v: ServedVersion) -> str:
    """The batching settings a version runs with, "(default)" after each that equals the
    engine's default (whether left out or written out), e.g. "batching max_batch_size=8
    (default), policy=work_conserving (default), ...; instances=1 (default), isolation=thread
    (default)"."""
    defaults = Batching()
    parts = []
    for f in dataclasses.fields(Batching):
        value = getattr(v.batching, f.name)
        if value is None:
            continue
        shown = f"{f.name}={value:g}" if isinstance(value, float) else f"{f.name}={value}"
        parts.append(shown + (" (default)" if value == getattr(defaults, f.name) else ""))
    instances = f"instances={v.instances}" + (" (default)" if v.instances == 1 else "")
    isolation = f"isolation={v.isolation}" + (" (default)" if v.isolation == "thread" else "")
    return "batching " + ", ".join(parts) + "; " + instances + ", " + isolation


def _in_flight(versions: list[ServedVersion]) -> int:
    return sum(v.sched.in_flight for v in versions)


def _trace_request(
    model: str,
    request_id: int,
    outcome: str,
    t_enqueue: int,
    t_dispatch: int,
    t_start: int,
    t_end: int,
    t_answer: int,
    batch_size: int,
) -> None:
    # Installed only when the "inferline.requests" logger is at DEBUG: one record per request
    # with every stage's timestamp (monotonic ns) and the derived durations.
    trace_log.debug(
        "request model=%s id=%d outcome=%s batch=%d enqueue=%d batch_formed=%d compute_start=%d "
        "compute_end=%d answered=%d queue_us=%.1f compute_us=%.1f total_us=%.1f",
        model,
        request_id,
        outcome,
        batch_size,
        t_enqueue,
        t_dispatch,
        t_start,
        t_end,
        t_answer,
        (t_dispatch - t_enqueue) / 1e3 if t_dispatch else 0.0,
        (t_end - t_start) / 1e3 if t_end else 0.0,
        (t_answer - t_enqueue) / 1e3,
        extra={"model": model, "request_id": request_id, "outcome": outcome},
    )
