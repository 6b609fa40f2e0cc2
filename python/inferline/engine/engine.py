"""The asyncio engine: register models, ``await engine.infer(...)``, start and stop.

The hot path is native. ``infer`` creates one future and hands the item to the model version's
native scheduler (``inferline._core.Scheduler.submit``), which copies it into a pooled slot and
queues it without taking any lock a worker holds. Worker threads form batches, run the model
off the event loop, and push answers onto one completion queue; the loop is woken through a
file descriptor at most once per batch and resolves every finished future in one native call
(``Core.drain``, in ``runtime.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from .. import _core
from ..cache import ResultCache, input_key
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
from .catalog import ModelCatalog
from .inputs import check_specs, convert, split_batch, stack_outputs
from .repo_sync import RepositorySync, loaded_rows
from .runtime import Runtime, log
from .versions import Batching, ModelInfo, ServedVersion, check_identity

__all__ = ["Engine", "ModelSource"]


# The exception classes the native core raises and answers futures with.
_core.set_error_types(
    QueueFullError,
    DeadlineExceeded,
    asyncio.CancelledError,
    ModelError,
    EngineStopped,
    InvalidInput,
)


class ModelSource(Protocol):
    """Where an engine's models come from besides ``register`` (e.g. a repository folder).

    Attached by :meth:`Engine.from_repository`. It drives the engine through public methods
    only; the engine calls it back at these points and nowhere else.
    """

    @property
    def root(self) -> Path:
        """The folder the models come from."""

    @property
    def failures(self) -> Mapping[str, str]:
        """Models that could not load, with the reason (readiness is false while any)."""

    async def start(self, engine: Engine) -> None:
        """Loads the models; called by ``Engine.start`` once registered models are up."""

    def stop(self) -> None:
        """Stops watching and cancels background work; called first by ``Engine.stop``."""

    async def load(self, engine: Engine, name: str, version: int | None) -> ModelInfo:
        """Loads (or reloads) one model; ``Engine.load``."""

    def index(self, engine: Engine) -> list[dict[str, Any]]:
        """Every model (loaded or not) with its versions' states; ``Engine.repository_index``."""


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

    def __init__(self, *, blas_threads: int | None = None) -> None:
        """``blas_threads``: when set, limits the BLAS/OpenMP thread pools of the process to
        that many threads while the engine runs (through threadpoolctl). Batching already
        gives BLAS large matrices; a BLAS pool that spins on the same cores as the event loop
        and the workers costs far more than it gives on small machines."""
        if blas_threads is not None and (not isinstance(blas_threads, int) or blas_threads < 1):
            raise ValueError(f"blas_threads must be a positive int or None, got {blas_threads!r}")
        self._blas_threads = blas_threads
        self._blas_limit: Any = None
        super().__init__()
        self._runtime = Runtime(self._router)
        self._state = "created"
        self._not_ready_reason: str | None = None
        self._source: ModelSource | None = None
        _live_engines.add(self)

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str,
        model: Callable[..., Any] | _core.Backend,
        *,
        inputs: Sequence[TensorSpec] | TensorSpec,
        outputs: Sequence[TensorSpec] | TensorSpec | None = None,
        batching: Batching | None = None,
        instances: int = 1,
        version: int = 1,
        warmup: Sequence[int] | bool = True,
        warmup_inputs: Callable[[int], Sequence[np.ndarray | None]] | None = None,
        warmup_repeats: int = 1,
        platform: str | None = None,
        cache: tuple[int, int] | None = None,
        notes: Sequence[str] = (),
        start: bool = True,
    ) -> None:
        """Registers ``model`` (a batch callable, or a native ``_core.Backend``) as ``name``.

        The callable receives a zero-copy numpy view of the batch, ``[B, *shape]`` (a dict of
        such views when the model has several inputs), valid only during the call; it returns
        an array ``[B, *shape]`` (a dict, or a tuple in output order, for several outputs).
        ``warmup``: True runs one batch of every size 1..max_batch_size at ``start``; a list
        names the sizes; False skips warm-up. ``cache=(max_entries, max_bytes)`` turns on the
        result cache for this version. ``notes`` are shown by ``model_info`` and the logs.
        Registering while the engine runs loads and warms the version in the background; it
        serves once ready. ``start=False`` leaves it idle until ``await start_version(...)``.
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
            warmup=warmup,
            warmup_inputs=warmup_inputs,
            warmup_repeats=warmup_repeats,
            platform=platform,
            cache=ResultCache(*cache) if cache is not None else None,
            notes=notes,
        )
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
        engine = cls(blas_threads=blas_threads)
        engine._source = source
        return engine

    @property
    def repository(self) -> Path | None:
        """The repository folder this engine serves, if any."""
        return self._source.root if self._source is not None else None

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
    @property
    def state(self) -> str:
        """created, loading, warming, ready, draining or stopped."""
        return self._state

    @property
    def ready(self) -> bool:
        """True when started, not draining, and every model has a ready default version."""
        return (
            self._state == "ready"
            and self._not_ready_reason is None
            and not (self._source is not None and self._source.failures)
            and all(m.serving is not None for m in self._router.models.values())
        )

    def mark_draining(self, reason: str = "shutting down") -> None:
        """Turns readiness false (for load balancers) while requests are still accepted."""
        self._not_ready_reason = reason

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
        await self._runtime.drain_all(drain_timeout)
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
    def _route(self, name: str, version: int | str | None) -> ServedVersion:
        if self._state == "created":
            raise EngineStopped(
                "the engine is not started; use `async with engine:` or `await engine.start()`"
            )
        entry = self._router.models.get(name)
        if entry is None:
            reason = self._source.failures.get(name) if self._source is not None else None
            if reason is not None:
                raise ModelNotReady(f"model {name!r} failed to load: {reason}")
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._router.models)})")
        v = entry.resolve(version)
        if v.state != "ready":
            if self._state in ("draining", "stopped"):
                raise EngineStopped(
                    f"the engine is {self._state}; model {name!r} takes no requests"
                )
            raise ModelNotReady(
                f"model {name!r} version {v.version} is {v.state}"
                + (f": {v.reason}" if v.reason else "")
            )
        return v

    async def infer(
        self,
        name: str,
        x: Any,
        *,
        priority: int = 0,
        timeout: float | None = None,
        version: int | str | None = None,
        _use_cache: bool = True,
    ) -> Any:
        """Runs one item through model ``name`` and returns its output.

        ``x`` is one item without the batch dimension (an array, or a dict name -> array for
        several inputs); the answer is an array (or a dict for several outputs). ``priority``
        0 is served first. ``timeout`` (seconds) raises ``DeadlineExceeded`` when it passes,
        queued or computing; a request whose deadline passes in the queue is never computed.
        Cancelling the await cancels the request in the core.
        """
        # Fast path: the model's serving version (swapped atomically), else the full routing.
        entry = self._router.models.get(name)
        v = entry.serving if entry is not None and version is None else None
        if v is None or v.state != "ready":
            v = self._route(name, version)
        if v.cache is not None and _use_cache:
            return await self._infer_cached(v, x, priority, timeout)
        loop: asyncio.AbstractEventLoop = self._runtime.loop  # type: ignore[assignment]
        if priority.__class__ is not int or priority < 0:
            raise InvalidInput(f"priority must be an int >= 0 (0 is the highest), got {priority!r}")
        if timeout is not None and not timeout > 0:
            raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
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
        timer = loop.call_later(timeout, _expire, fut, v, h, timeout)
        try:
            return await fut
        except asyncio.CancelledError:
            v.sched.cancel(h, False)
            raise
        finally:
            timer.cancel()

    async def _infer_cached(
        self, v: ServedVersion, x: Any, priority: int, timeout: float | None
    ) -> Any:
        assert v.cache is not None
        x = convert(v.name, v.inputs, x)
        key = input_key(x)
        hit = v.cache.get(key)
        if hit is not None:
            return hit
        out = await self.infer(
            v.name, x, priority=priority, timeout=timeout, version=v.version, _use_cache=False
        )
        if v.state == "ready":  # a version being swapped out keeps nothing
            v.cache.put(key, out)
        return out

    async def infer_batch(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        *,
        priority: int = 0,
        timeout: float | None = None,
        version: int | str | None = None,
    ) -> dict[str, np.ndarray]:
        """Runs N items given with a leading dimension N; returns outputs stacked the same way.

        Each row becomes one item for the batcher (batching counts rows, not calls). If any
        row fails, the others are cancelled and the first error is raised.
        """
        v = self._route(name, version)
        items = split_batch(name, v.inputs, inputs)
        tasks = [
            asyncio.ensure_future(
                self.infer(name, item, priority=priority, timeout=timeout, version=v.version)
            )
            for item in items
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return stack_outputs(v.outputs, results)


def _expire(fut: asyncio.Future[Any], v: ServedVersion, handle: int, timeout: float) -> None:
    if not fut.done():
        v.sched.cancel(handle, True)
        fut.set_exception(
            DeadlineExceeded(f"model {v.name!r}: no answer within the {timeout:g}s timeout")
        )
