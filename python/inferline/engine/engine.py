"""The asyncio engine: register models, ``await engine.infer(...)``, start and stop.

The hot path is native. ``infer`` is a plain function: on the common path one native call
(``inferline._core.Scheduler.submit_await``) copies the item into a pooled slot of the model
version's scheduler, queues it without taking any lock a worker holds, and returns its answer,
a ``_core.PendingInfer``: no Python coroutine and no asyncio.Future per request; the awaiting
task waits on the PendingInfer itself. Worker threads form batches, run the model off the event
loop, and push answers onto one completion queue; the loop is woken through a file descriptor
at most once per batch and answers every finished request in one native call (``Core.drain``,
in ``runtime.py``), which then wakes the waiting tasks directly, with no ``call_soon`` each.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .. import _core, observability
from ..backends.process import RepositoryTarget
from ..cache import ResultCache
from ..errors import (
    DeadlineExceeded,
    EngineStopped,
    InferlineError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    QueueFullError,
)
from ..types import TensorSpec
from .catalog import ModelCatalog, ModelSource
from .inputs import check_specs, convert
from .repo_sync import RepositorySync, loaded_rows
from .rows import check_priority_range, expire, infer_cached, infer_rows, infer_rows_cached
from .runtime import Runtime, log
from .stages import Answer, Pipeline, Stage, merge_parameters
from .versions import Batching, ModelInfo, ServedVersion, check_identity

__all__ = ["Engine", "ModelSource"]  # ModelSource: re-exported from catalog.py


# The exception classes the native core raises and answers futures with.
_core.set_error_types(
    QueueFullError,
    DeadlineExceeded,
    asyncio.CancelledError,
    ModelError,
    EngineStopped,
    InvalidInput,
)


_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _stop_leftover_engines() -> None:
    # Worker threads must not outlive the interpreter: stop any engine left running.
    for engine in list(_live_engines):
        engine._runtime.shutdown_now()


class Engine(ModelCatalog):
    """Serves registered models: batches concurrent ``infer`` calls natively.

    Life: created -> (``start``) loading/warming -> ready -> (``stop``) draining -> stopped.
    Use ``async with engine:`` to start and stop it. All methods are for the event loop the
    engine was started on; ``infer`` must be awaited on that loop.

    Models have versions. A request without a version goes to the model's default version
    (the latest ready one unless ``set_default`` says otherwise); aliases such as ``"stable"``
    name versions and can be moved at run time. A new version is loaded and warmed beside the
    serving one, then becomes the default in one step; the old one finishes what it accepted
    and is unloaded (``load``/``unload``, or repository polling with ``watch=True``).
    """

    def __init__(
        self, *, blas_threads: int | None = None, strict: bool = False, tracing: bool | None = None
    ) -> None:
        """``blas_threads``: when set, limits the BLAS/OpenMP thread pools of the process to
        that many threads while the engine runs (through threadpoolctl). Batching already
        gives BLAS large matrices; a BLAS pool that spins on the same cores as the event loop
        and the workers costs far more than it gives on small machines. ``strict=True``: a
        model that fails to load or warm up fails ``start`` (``ModelNotReady`` with the
        reasons, the engine stopped); by default it is logged and the others serve.
        ``tracing``: OpenTelemetry request spans (:mod:`inferline.observability`); None
        follows ``INFERLINE_OTEL=1`` / ``inferline serve --otel``."""
        if blas_threads is not None and (not isinstance(blas_threads, int) or blas_threads < 1):
            raise ValueError(f"blas_threads must be a positive int or None, got {blas_threads!r}")
        self._blas_threads = blas_threads
        self._blas_limit: Any = None
        super().__init__(strict=strict)
        self._runtime = Runtime(self._router)
        self._tracing = observability.load(tracing)  # None unless tracing is switched on
        _live_engines.add(self)

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str,
        model: Callable[..., Any] | _core.Backend | RepositoryTarget,
        *,
        inputs: Sequence[TensorSpec] | TensorSpec,
        outputs: Sequence[TensorSpec] | TensorSpec | None = None,
        batching: Batching | None = None,
        instances: int = 1,
        isolation: str = "thread",
        version: int = 1,
        warmup: Sequence[int] | bool = True,
        warmup_inputs: Callable[[int], Sequence[np.ndarray | None]] | None = None,
        warmup_repeats: int = 1,
        platform: str | None = None,
        cache: tuple[int, int] | None = None,
        notes: Sequence[str] = (),
        start: bool = True,
        pre: Stage | None = None,
        post: Stage | None = None,
    ) -> None:
        """Registers ``model`` (a batch callable, or a native ``_core.Backend``) as ``name``.

        The callable receives a zero-copy numpy view of the batch, ``[B, *shape]`` (a dict of
        such views when the model has several inputs), valid only during the call; it returns
        an array ``[B, *shape]`` (a dict, or a tuple in output order, for several outputs).
        ``warmup``: True runs one batch of every size 1..max_batch_size at ``start``; a list
        names the sizes; False skips warm-up. ``cache=(max_entries, max_bytes)`` turns on the
        result cache for this version. ``notes`` are shown by ``model_info`` and the logs.
        ``isolation="loop"`` runs the model on the engine's event loop thread, between its
        other callbacks: no worker thread and no GIL hand-over, so a cheap model that holds the
        GIL serves the most requests per second and a lone request the soonest; but a batch
        that hangs stalls the whole loop (one instance; no ``execution_timeout_ms``).
        ``isolation="process"`` runs each of the ``instances`` in a child process with its own
        GIL, fed through shared memory (outputs must be declared; ``model`` must be importable
        by ``module:qualname``, else ValueError); a crashed child fails its batch with
        ``ModelError`` and is restarted.
        Registering while the engine runs loads and warms the version in the background; it
        serves once ready. ``start=False`` leaves it idle until ``await start_version(...)``.
        ``pre``/``post``: :class:`~inferline.engine.stages.Stage` steps around the core
        (``inputs``/``outputs`` are then the core's; ``infer`` takes what ``pre`` takes); see
        :mod:`inferline.engine.stages`.
        """
        check_identity(name, version, model)
        if self._state in ("draining", "stopped"):
            raise EngineStopped("the engine is stopping; it takes no new models")
        batching = batching or Batching()
        if not isinstance(batching, Batching):
            raise TypeError(f"batching must be inferline.Batching, got {type(batching).__name__}")
        in_specs = check_specs("inputs", inputs, allow_empty=False)
        out_specs = check_specs("outputs", outputs, allow_empty=True)
        entry = self._router.models.get(name)
        if entry is not None and version in entry.versions:
            raise ValueError(f"model {name!r} version {version} is already registered")
        v = ServedVersion(
            self._runtime.core,
            name,
            version,
            model,
            in_specs,
            out_specs,
            batching=batching,
            instances=instances,
            isolation=isolation,
            warmup=warmup,
            warmup_inputs=warmup_inputs,
            warmup_repeats=warmup_repeats,
            platform=platform,
            cache=ResultCache(*cache) if cache is not None else None,
            notes=notes,
        )
        if pre is not None or post is not None:
            if cache is not None:
                raise ValueError(f"model {name!r}: the result cache does not apply to stages")
            v.pipeline = Pipeline(v, pre, post)
        entry = self._router.add(v)
        if start and self._state == "ready":
            self._runtime.spawn(self._runtime.bring_up(entry, v, set_default=True))

    async def start_version(
        self, name: str, version: int, *, make_default: bool = True
    ) -> ModelInfo:
        """Starts and warms up a version registered with ``start=False``, now.

        Returns its info: state ``ready``, or ``failed`` with the reason (its workers are then
        stopped; ``retire`` removes it). ``make_default=False`` leaves routing as it is (see
        ``set_version_policy``). A version already started is left as it is.
        """
        if self._state not in ("loading", "ready"):
            raise EngineStopped(f"the engine is {self._state}; it cannot start versions now")
        entry = self._router.entry(name)
        entry.has_version(version)
        v = entry.versions[version]
        if not v.started:
            await self._runtime.bring_up(entry, v, set_default=make_default)
        return entry.info(v)

    async def retire(self, name: str, version: int, *, drain_timeout: float = 60.0) -> None:
        """Takes one version out of service: no new requests, accepted ones finish (for up to
        ``drain_timeout`` seconds), then it is unloaded. The model name stays registered even
        with no version left (``unload`` removes it)."""
        entry = self._router.entry(name)
        entry.has_version(version)
        await self._runtime.retire(entry, entry.versions[version], drain_timeout)

    async def unload(self, name: str, version: int | None = None) -> None:
        """Unloads one version (or every version) of ``name`` after it finishes what it
        accepted. Requests then get ``ModelNotFound`` (or the next default version)."""
        entry = self._router.entry(name)
        if version is not None:
            entry.has_version(version)
        targets = list(entry.versions.values()) if version is None else [entry.versions[version]]
        await asyncio.gather(*(self._runtime.retire(entry, v, 60.0) for v in targets))
        if not entry.versions:
            del self._router.models[name]

    # -- repository ---------------------------------------------------------------------------
    @classmethod
    def from_repository(
        cls,
        path: str | os.PathLike[str],
        *,
        watch: bool = False,
        poll_interval: float = 5.0,
        blas_threads: int | None = None,
        allow_code: bool = False,
        strict: bool = False,
    ) -> Engine:
        """An engine serving every model of a repository folder (``<model>/model.toml`` plus
        numbered version folders). Models load and warm up at ``start``; one that fails is
        reported by ``models()`` with its reason while the others serve. ``watch=True`` polls
        the folder every ``poll_interval`` seconds and loads, swaps and unloads versions.
        ``allow_code=True`` is the operator's key to run a model's ``model.py`` (its
        model.toml's ``[python] allow_code = true`` is the other; without both it fails to
        load, saying so)."""
        source = RepositorySync(
            Path(path), watch=watch, poll_interval=poll_interval, allow_code=allow_code
        )
        engine = cls(blas_threads=blas_threads, strict=strict)
        engine._source = source
        return engine

    async def load(self, name: str, version: int | None = None) -> ModelInfo:
        """Loads (or reloads the wanted versions of) model ``name`` from the repository.

        The new version is loaded and warmed beside the serving one and then becomes the
        default in one step (when the policy says so); versions the model no longer wants
        finish their accepted requests and are unloaded. If the new version fails to load or
        warm up, the old one keeps serving and ``ModelError`` says why."""
        if self._source is None:
            raise ModelNotFound(f"engine has no repository to load {name!r} from")
        if self._state != "ready":
            raise EngineStopped(f"the engine is {self._state}; it cannot load models now")
        return await self._source.load(self, name, version)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model of the repository (loaded or not) with its versions' states."""
        if self._source is None:
            return loaded_rows(self.models())
        return self._source.index(self)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Starts the workers and warms every model up; models become ready one by one."""
        if self._state != "created":
            raise InferlineError(f"engine cannot start from state {self._state!r}")
        if self._blas_threads is not None:
            self._blas_limit = threadpool_limits(limits=self._blas_threads)
        self._runtime.attach(asyncio.get_running_loop())
        self._state = "loading"
        failures = []
        for entry in list(self._router.models.values()):
            for v in list(entry.versions.values()):
                if not v.started:
                    await self._runtime.bring_up(entry, v, set_default=True)
                    if v.state == "failed":
                        failures.append(f"{entry.name} v{v.version}: {v.reason}")
        if self._source is not None:
            await self._source.start(self)
        self._state = "ready"
        if failures:
            log.error("models failed to start: %s", "; ".join(failures))
        if self._strict and (failed := self.failed_models()):
            await self.stop()
            raise ModelNotReady("strict start-up: " + "; ".join(failed))

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuses new work, lets accepted requests finish for up to ``drain_timeout`` seconds,
        then answers whatever is left with ``EngineStopped`` and joins the workers."""
        if self._state in ("stopped", "created"):
            self._state = "stopped"
            self._runtime.shutdown_now()
            return
        self._state = "draining"
        if self._source is not None:
            self._source.stop()
        pipelines = [v.pipeline for v in self._router.all_versions() if v.pipeline is not None]
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.gather(*(p.drain(drain_timeout) for p in pipelines))
        drain_timeout = max(0.0, drain_timeout - (loop.time() - started))
        await self._runtime.drain_all(drain_timeout)
        for p in pipelines:
            p.close()
        self._state = "stopped"
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- inference ----------------------------------------------------------------------------
    def infer(
        self,
        name: str,
        x: Any,
        *,
        priority: int = 0,
        timeout: float | None = None,
        version: int | str | None = None,
        with_parameters: bool = False,
        _use_cache: bool = True,
    ) -> Coroutine[Any, Any, Any]:
        """Runs one item through model ``name``; await the result for its output.

        ``x`` is one item without the batch dimension (an array, or a dict name -> array for
        several inputs); the answer is an array (or a dict for several outputs). ``priority``
        0 is served first. ``timeout`` (seconds) raises ``DeadlineExceeded`` when it passes,
        queued or computing; a request whose deadline passes in the queue is never computed.
        Cancelling the await cancels the request in the core. For a model with stages, ``x``
        is what its pre stage takes (e.g. a ``str``); ``with_parameters=True`` returns an
        :class:`~inferline.engine.stages.Answer` (the output and the stages' parameters).

        Returns a coroutine (await it, or hand it to ``asyncio.create_task``, ``gather``,
        ``wait_for``); every error is raised when it is awaited. On the common path (the
        serving version, no timeout, stages, cache or tracing, an exact input, called on the
        engine's loop) it is a native ``_core.PendingInfer`` whose request is queued by this
        call already: one that is never awaited is still computed and answered. It also has
        ``asyncio.Future``'s methods (``done``, ``result``, ``cancel``,
        ``add_done_callback``, ...) and can be awaited more than once.
        """
        entry = self._router.models.get(name)
        if entry is not None and timeout is None and not with_parameters and self._tracing is None:
            v = entry.serving
            if (
                v is not None
                # The serving version by number (a result cache's miss asks for it) is
                # the same request as no version.
                and (version is None or (version.__class__ is int and version == v.version))
                and v.state == "ready"
                and v.pipeline is None
                and (v.cache is None or not _use_cache)
            ):
                # None when the request must go the coroutine's way: an input to convert, a
                # priority that is not an int >= 0, a call off the engine's loop.
                pending = v.sched.submit_await(x, priority, self._runtime.loop)
                if pending is not None:
                    return pending
        return self._infer_coroutine(
            name,
            x,
            priority=priority,
            timeout=timeout,
            version=version,
            with_parameters=with_parameters,
            _use_cache=_use_cache,
        )

    async def _infer_coroutine(
        self,
        name: str,
        x: Any,
        *,
        priority: int,
        timeout: float | None,
        version: int | str | None,
        with_parameters: bool,
        _use_cache: bool,
    ) -> Any:
        """``infer`` as a coroutine: every case (routing by version, checks, stages, cache,
        tracing, conversion, timeout)."""
        # The model's serving version (swapped atomically), else the full routing.
        entry = self._router.models.get(name)
        v = entry.serving if entry is not None and version is None else None
        if v is None or v.state != "ready":
            v = self._route(name, version)
        # Checked before the cache is consulted, so a cached answer never skips them; the
        # core checks the priority's upper bound at submit.
        if priority.__class__ is not int or priority < 0 or timeout is not None:
            _check_request(priority, timeout)
        tracing = self._tracing
        if v.pipeline is not None or with_parameters:
            staged = self._staged(v, [x], priority, timeout, one=True)
            answer = await (staged if tracing is None else tracing.request("infer", v, staged))
            return answer if with_parameters else answer.output
        if v.cache is not None and _use_cache:
            check_priority_range(v, priority)
            if tracing is None:
                return await infer_cached(self.infer, v, x, priority, timeout)
            cached = infer_cached(tracing.on_miss(self.infer), v, x, priority, timeout)
            return await tracing.request("infer", v, cached, cached=True)
        loop: asyncio.AbstractEventLoop = self._runtime.loop  # type: ignore[assignment]
        if tracing is not None:  # the untraced path's only cost of tracing
            return await tracing.infer(loop, v, x, priority, timeout)
        fut = loop.create_future()
        # The core turns the timeout into a deadline on its own clock (time.monotonic's), checks
        # NaN/Inf, and answers None only when the item needs converting first (a list, another
        # dtype, a non-contiguous array): then once more, converted, and it raises if it still
        # does not fit.
        h = v.sched.submit(x, priority, timeout, fut)
        if h is None:
            x = convert(v.name, v.inputs, x)
            h = v.sched.submit(x, priority, timeout, fut, converted=True)
        if timeout is None:
            try:
                return await fut
            except asyncio.CancelledError:
                v.sched.cancel(h, False)
                raise
        timer = loop.call_later(timeout, expire, fut, v, v.sched.cancel, h, timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            v.sched.cancel(h, False)
            raise
        finally:
            timer.cancel()

    async def infer_batch(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        *,
        priority: int = 0,
        timeout: float | None = None,
        version: int | str | None = None,
        with_parameters: bool = False,
    ) -> Any:
        """Runs N items given with a leading dimension N (an array, or a dict name -> array)
        and returns what ``infer`` returns, stacked: an array ``[N, ...]`` for a one-output
        model, a dict for several.

        The N rows are queued in one native call, every one or none (``QueueFullError``);
        each row is an item for the batcher (batching counts rows, not calls). If any row
        fails, the rows still queued are cancelled and the first error is raised.
        ``priority``, ``timeout`` and cancellation as for ``infer``. For a model with stages,
        ``inputs`` is a list of what its pre stage takes (e.g. ``list[str]``);
        ``with_parameters=True`` returns an :class:`~inferline.engine.stages.Answer`.
        """
        v = self._route(name, version)
        _check_request(priority, timeout)
        call = self._infer_batch(v, inputs, priority, timeout, with_parameters)
        if self._tracing is None:
            return await call
        return await self._tracing.request(
            "infer_batch", v, call, items=inputs, cached=v.cache is not None
        )

    async def _infer_batch(
        self,
        v: Any,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        priority: int,
        timeout: float | None,
        with_parameters: bool,
    ) -> Any:
        """``infer_batch`` once routed and checked."""
        if v.pipeline is not None:
            answer = await self._staged(v, v.pipeline.items_of(inputs), priority, timeout)
            return answer if with_parameters else answer.output
        if with_parameters:
            out = await self._infer_batch(v, inputs, priority, timeout, False)
            return Answer(out, {}, [])
        loop: asyncio.AbstractEventLoop = self._runtime.loop  # type: ignore[assignment]
        if v.cache is not None:
            check_priority_range(v, priority)

            def send(rows: Any) -> Coroutine[Any, Any, Any]:
                return infer_rows(loop, v, rows, priority, timeout)

            if self._tracing is not None:
                return await infer_rows_cached(v, inputs, self._tracing.on_miss(send))
            return await infer_rows_cached(v, inputs, send)
        return await infer_rows(loop, v, inputs, priority, timeout)

    async def _staged(
        self, v: Any, items: list[Any], priority: int, timeout: float | None, one: bool = False
    ) -> Answer:
        """``items`` through the version's pipeline (or, for ``with_parameters`` on a model
        without stages, its core alone), as an :class:`Answer`."""
        loop: asyncio.AbstractEventLoop = self._runtime.loop  # type: ignore[assignment]
        if v.pipeline is None:
            out = await self.infer(
                v.name, items[0], priority=priority, timeout=timeout, version=v.version
            )
            return Answer(out, {}, [{}])
        out, rows = await v.pipeline.run(loop, items, priority, timeout)
        if one:
            out = {k: a[0] for k, a in out.items()} if isinstance(out, dict) else out[0]
        return Answer(out, merge_parameters(rows), rows)


def _check_request(priority: int, timeout: float | None) -> None:
    if priority.__class__ is not int or priority < 0:
        raise InvalidInput(f"priority must be an int >= 0 (0 is the highest), got {priority!r}")
    if timeout is not None and not timeout > 0:
        raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
