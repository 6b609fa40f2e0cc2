"""The asyncio engine: register models, ``await engine.infer(...)``, start and stop.

The hot path is native. ``infer`` creates one future and hands the item to the model version's
native scheduler (``inferline._core.Scheduler.submit``), which copies it into a pooled slot and
queues it without taking any lock a worker holds. Worker threads form batches, run the model
off the event loop, and push answers onto one completion queue; the loop is woken through a
file descriptor at most once per batch and resolves every finished future in one native call
(``Core.drain``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _core
from .errors import (
    DeadlineExceeded,
    EngineStopped,
    InferlineError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    QueueFullError,
)
from .types import TensorSpec

__all__ = ["Batching", "Engine", "ModelInfo"]

log = logging.getLogger("inferline")

_NO_DEADLINE = (1 << 63) - 1
_FLOAT_KIND = {"FP16": 1, "FP32": 2, "FP64": 3, "BF16": 4}

# The exception classes the native core raises and answers futures with.
_core.set_error_types(
    QueueFullError,
    DeadlineExceeded,
    asyncio.CancelledError,
    ModelError,
    EngineStopped,
    InvalidInput,
)


@dataclass(frozen=True)
class Batching:
    """How a model's requests are batched and bounded.

    A batch leaves when it holds ``max_batch_size`` items or its oldest item has waited
    ``max_queue_delay_ms``. At most ``max_queue_size`` items wait; beyond that ``infer`` raises
    ``QueueFullError`` at once. ``priority_levels`` lanes are served in order (0 first).
    ``idle_spin_us`` lets an idle worker spin that long before sleeping, trading CPU for the
    latency of a lone request. ``max_queue_bytes`` bounds the input bytes waiting, and
    ``max_item_bytes`` refuses items larger than that (both at admission).
    """

    max_batch_size: int = 8
    max_queue_delay_ms: float = 1.0
    max_queue_size: int = 1024
    priority_levels: int = 1
    idle_spin_us: float = 0.0
    max_queue_bytes: int | None = None
    max_item_bytes: int | None = None

    def __post_init__(self) -> None:
        def positive_int(field_name: str, value: object, upper: int | None = None) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Batching.{field_name} must be a positive int, got {value!r}")
            if upper is not None and value > upper:
                raise ValueError(f"Batching.{field_name} must be at most {upper}, got {value}")

        positive_int("max_batch_size", self.max_batch_size, 1 << 16)
        positive_int("max_queue_size", self.max_queue_size, 1 << 24)
        positive_int("priority_levels", self.priority_levels, 16)
        for name in ("max_queue_delay_ms", "idle_spin_us"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"Batching.{name} must be a number >= 0, got {value!r}")
        for name in ("max_queue_bytes", "max_item_bytes"):
            value = getattr(self, name)
            if value is not None:
                positive_int(name, value)


@dataclass
class ModelInfo:
    """What the engine knows of one model version."""

    name: str
    version: int
    versions: list[int]
    state: str
    reason: str | None
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    aliases: dict[str, int] = field(default_factory=dict)
    default: bool = False


def _spec_tuple(spec: TensorSpec) -> tuple[str, np.dtype, tuple[int, ...], bool, int]:
    if spec.datatype == "BYTES":
        raise ValueError(
            f"tensor {spec.name!r}: BYTES tensors cannot be batched natively; "
            "declare a fixed-size numeric datatype"
        )
    return (spec.name, spec.dtype, spec.shape, spec.finite, _FLOAT_KIND.get(spec.datatype, 0))


def _check_specs(kind: str, specs: object, *, allow_empty: bool) -> list[TensorSpec]:
    if specs is None:
        if allow_empty:
            return []
        raise ValueError(f"{kind} must list at least one TensorSpec")
    if isinstance(specs, TensorSpec):
        specs = [specs]
    if not isinstance(specs, Sequence | Iterable) or isinstance(specs, str | bytes):
        raise ValueError(f"{kind} must be a list of TensorSpec, got {type(specs).__name__}")
    out = list(specs)
    if not out and not allow_empty:
        raise ValueError(f"{kind} must list at least one TensorSpec")
    for s in out:
        if not isinstance(s, TensorSpec):
            raise ValueError(f"{kind} must hold TensorSpec objects, got {type(s).__name__}")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} has duplicate names: {names}")
    return out


class _Version:
    """One loaded model version: its specs, native scheduler and state."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        version: int,
        model: Callable[..., Any] | _core.Backend,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        batching: Batching,
        instances: int,
        warmup: Sequence[int] | bool,
        warmup_inputs: Callable[[int], list[np.ndarray | None]] | None,
        platform: str | None,
    ) -> None:
        self.name = name
        self.version = version
        self.inputs = inputs
        self.outputs = outputs
        self.batching = batching
        self.instances = instances
        self.state = "loading"
        self.reason: str | None = None
        self.item_nbytes = sum(s.item_nbytes for s in inputs)
        if batching.max_item_bytes is not None and self.item_nbytes > batching.max_item_bytes:
            raise ValueError(
                f"model {name!r}: one item is {self.item_nbytes} bytes, more than "
                f"Batching.max_item_bytes={batching.max_item_bytes}"
            )
        queue_size = batching.max_queue_size
        if batching.max_queue_bytes is not None:
            # Items have a fixed size, so a byte bound is a count bound.
            queue_size = min(queue_size, max(1, batching.max_queue_bytes // max(1, self.item_nbytes)))
        self.queue_size = queue_size
        if warmup is True:
            self.warmup_sizes = list(range(1, batching.max_batch_size + 1))
        elif warmup is False:
            self.warmup_sizes = []
        else:
            self.warmup_sizes = sorted({int(b) for b in warmup})
            bad = [b for b in self.warmup_sizes if not 1 <= b <= batching.max_batch_size]
            if bad:
                raise ValueError(
                    f"model {name!r}: warm-up batch sizes {bad} are outside "
                    f"1..{batching.max_batch_size} (max_batch_size)"
                )
        self.warmup_inputs = warmup_inputs
        self.sched = _core.Scheduler(
            engine._core,
            name,
            [_spec_tuple(s) for s in inputs],
            [_spec_tuple(s) for s in outputs],
            len(inputs) > 1,
            len(outputs) > 1,
            model,
            batching.max_batch_size,
            int(batching.max_queue_delay_ms * 1e6),
            queue_size,
            batching.priority_levels,
            instances,
            int(batching.idle_spin_us * 1e3),
        )
        self.platform = platform or self.sched.platform
        self.started = False

    # -- input conversion (the slow path: anything but exact, contiguous arrays) ------------
    def convert(self, x: Any, code: int) -> Any:
        if code == -2:
            items = {self.inputs[0].name: x} if len(self.inputs) == 1 else x
            for spec in self.inputs:
                if spec.finite and not np.isfinite(np.asarray(items[spec.name])).all():
                    raise InvalidInput(
                        f"model {self.name!r}: input {spec.name!r} contains NaN or Inf; "
                        "the model accepts finite values only"
                    )
            raise InvalidInput(f"model {self.name!r}: input is not finite")
        if len(self.inputs) == 1:
            spec = self.inputs[0]
            if isinstance(x, Mapping):
                if set(x) != {spec.name}:
                    raise InvalidInput(
                        f"model {self.name!r}: got inputs {sorted(map(str, x))}; "
                        f"expected ['{spec.name}']"
                    )
                x = x[spec.name]
            return self._coerce(spec, x)
        if not isinstance(x, Mapping):
            raise InvalidInput(
                f"model {self.name!r} takes {len(self.inputs)} inputs; pass a dict "
                f"{{name: array}} with keys {[s.name for s in self.inputs]}"
            )
        want = {s.name for s in self.inputs}
        got = set(x)
        if got != want:
            missing, extra = sorted(want - got), sorted(map(str, got - want))
            raise InvalidInput(
                f"model {self.name!r}: inputs do not match; missing {missing}, unexpected {extra}"
            )
        return {s.name: self._coerce(s, x[s.name]) for s in self.inputs}

    def _coerce(self, spec: TensorSpec, value: Any) -> np.ndarray:
        where = f"model {self.name!r}: input {spec.name!r}"
        if isinstance(value, np.ndarray):
            if value.dtype != spec.dtype:
                raise InvalidInput(
                    f"{where} has dtype {value.dtype}; expected {spec.datatype} ({spec.dtype})"
                )
            arr = value
        else:
            try:
                arr = np.asarray(value)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"{where} is not array-like: {exc}") from None
            if arr.dtype.kind in "OSUV":
                raise InvalidInput(
                    f"{where} holds {arr.dtype} values; expected {spec.datatype} numbers"
                )
            if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind") and not (
                arr.dtype.kind in "biu" and spec.dtype.kind in "fc"
            ):
                raise InvalidInput(
                    f"{where} holds {arr.dtype} values; expected {spec.datatype} ({spec.dtype})"
                )
            arr = arr.astype(spec.dtype)
        if arr.shape != spec.shape:
            hint = ""
            if arr.shape == (1, *spec.shape) or (arr.ndim == len(spec.shape) + 1 and
                                                 arr.shape[1:] == spec.shape):
                hint = " (infer takes one item without the batch dimension; use infer_batch)"
            raise InvalidInput(
                f"{where} has shape {arr.shape}; expected {spec.shape} per item{hint}"
            )
        arr = np.ascontiguousarray(arr)
        if spec.finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidInput(f"{where} contains NaN or Inf; the model accepts finite values only")
        return arr

    def info(self, versions: list[int], aliases: dict[str, int], default: bool) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            version=self.version,
            versions=versions,
            state=self.state,
            reason=self.reason,
            platform=self.platform,
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            max_batch_size=self.batching.max_batch_size,
            aliases={a: v for a, v in aliases.items() if v == self.version},
            default=default,
        )


class _Model:
    """A model name: its versions, aliases and which version answers by default."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[int, _Version] = {}
        self.aliases: dict[str, int] = {}
        self.default_policy: int | str = "latest"
        self.serving: _Version | None = None  # the default version, swapped atomically

    def resolve(self, version: int | str | None) -> _Version:
        if version is None:
            v = self.serving
            if v is None:
                states = {n: x.state for n, x in self.versions.items()}
                raise ModelNotReady(f"model {self.name!r} has no ready version (versions: {states})")
            return v
        number: int | None
        if isinstance(version, int) and not isinstance(version, bool):
            number = version
        elif isinstance(version, str) and version.isdigit():
            number = int(version)
        elif isinstance(version, str) and version in self.aliases:
            number = self.aliases[version]
        else:
            raise ModelNotFound(
                f"model {self.name!r} has no version or alias {version!r} "
                f"(versions {sorted(self.versions)}, aliases {sorted(self.aliases)})"
            )
        v = self.versions.get(number)
        if v is None:
            raise ModelNotFound(
                f"model {self.name!r} has no version {number} (versions {sorted(self.versions)})"
            )
        return v

    def pick_default(self) -> _Version | None:
        ready = {n: v for n, v in self.versions.items() if v.state == "ready"}
        if not ready:
            return None
        if isinstance(self.default_policy, int):
            return ready.get(self.default_policy)
        if self.default_policy in self.aliases:
            return ready.get(self.aliases[self.default_policy])
        return ready[max(ready)]


_live_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _stop_leftover_engines() -> None:
    # Worker threads must not outlive the interpreter: stop any engine left running.
    for engine in list(_live_engines):
        engine._shutdown_now()


class Engine:
    """Serves registered models: batches concurrent ``infer`` calls natively.

    Life: created -> (``start``) loading/warming -> ready -> (``stop``) draining -> stopped.
    Use ``async with engine:`` to start and stop it. All methods are for the event loop the
    engine was started on; ``infer`` must be awaited on that loop.
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
        self._core = _core.Core()
        self._models: dict[str, _Model] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "created"
        self._drained: asyncio.Event | None = None
        self._retired: list[_Version] = []
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
        warmup_inputs: Callable[[int], list[np.ndarray | None]] | None = None,
        platform: str | None = None,
    ) -> None:
        """Registers ``model`` (a batch callable, or a native ``_core.Backend``) as ``name``.

        The callable receives a zero-copy numpy view of the batch, ``[B, *shape]`` (a dict of
        such views when the model has several inputs), valid only during the call; it returns
        an array ``[B, *shape]`` (a dict, or a tuple in output order, for several outputs).
        ``warmup``: True runs one batch of every size 1..max_batch_size at ``start``; a list
        names the sizes; False skips warm-up.
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"model name must be a non-empty string without '/', got {name!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version must be a positive int, got {version!r}")
        if not isinstance(instances, int) or isinstance(instances, bool) or not 1 <= instances <= 256:
            raise ValueError(f"instances must be an int in 1..256, got {instances!r}")
        if not (callable(model) or isinstance(model, _core.Backend)):
            raise TypeError(f"model must be callable or a native Backend, got {type(model).__name__}")
        if self._state in ("draining", "stopped"):
            raise EngineStopped("the engine is stopping; it takes no new models")
        batching = batching or Batching()
        if not isinstance(batching, Batching):
            raise TypeError(f"batching must be inferline.Batching, got {type(batching).__name__}")
        in_specs = _check_specs("inputs", inputs, allow_empty=False)
        out_specs = _check_specs("outputs", outputs, allow_empty=True)
        entry = self._models.get(name)
        if entry is not None and version in entry.versions:
            raise ValueError(f"model {name!r} version {version} is already registered")
        v = _Version(self, name, version, model, in_specs, out_specs, batching, instances,
                     warmup, warmup_inputs, platform)
        if entry is None:
            entry = self._models[name] = _Model(name)
        entry.versions[version] = v
        if self._state == "ready" and self._loop is not None:
            # Registered while running: it loads and warms beside what is serving now.
            self._loop.create_task(self._bring_up(entry, v))

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """created, loading, warming, ready, draining or stopped."""
        return self._state

    @property
    def ready(self) -> bool:
        """True when started, not draining, and every model has a ready default version."""
        return self._state == "ready" and all(m.serving is not None for m in self._models.values())

    async def start(self) -> None:
        """Starts the workers and warms every model up; models become ready one by one."""
        if self._state != "created":
            raise InferlineError(f"engine cannot start from state {self._state!r}")
        self._loop = asyncio.get_running_loop()
        if self._blas_threads is not None:
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(limits=self._blas_threads)
        self._loop.add_reader(self._core.fd, self._on_answers)
        self._state = "loading"
        failures = []
        for entry in list(self._models.values()):
            for v in list(entry.versions.values()):
                await self._bring_up(entry, v)
                if v.state == "failed":
                    failures.append(f"{entry.name} v{v.version}: {v.reason}")
        self._state = "ready"
        if failures:
            log.error("models failed to start: %s", "; ".join(failures))

    async def _bring_up(self, entry: _Model, v: _Version) -> None:
        assert self._loop is not None
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
            await self._loop.run_in_executor(None, v.sched.shutdown)
            return
        v.state = "ready"
        entry.serving = entry.pick_default()
        log.info("model %s version %s ready", v.name, v.version)

    async def _warm(self, v: _Version) -> None:
        assert self._loop is not None
        for b in v.warmup_sizes:
            arrays: list[np.ndarray | None]
            if v.warmup_inputs is not None:
                arrays = list(v.warmup_inputs(b))
            else:
                arrays = [None] * len(v.inputs)
            await self._loop.run_in_executor(None, v.sched.warmup, b, arrays)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuses new work, lets accepted requests finish for up to ``drain_timeout`` seconds,
        then answers whatever is left with ``EngineStopped`` and joins the workers."""
        if self._state in ("stopped", "created"):
            self._state = "stopped"
            self._shutdown_now()
            return
        loop = asyncio.get_running_loop()
        self._state = "draining"
        versions = [v for m in self._models.values() for v in m.versions.values()]
        versions += self._retired
        for v in versions:
            v.sched.close()
        self._drained = asyncio.Event()
        if self._in_flight(versions):
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except TimeoutError:
                log.warning("drain timed out after %.1fs; answering the rest EngineStopped",
                            drain_timeout)
        for v in versions:
            await loop.run_in_executor(None, v.sched.shutdown)
        self._core.drain()
        if self._loop is not None:
            self._loop.remove_reader(self._core.fd)
        self._state = "stopped"
        self._core.reap()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    def _in_flight(self, versions: Iterable[_Version]) -> int:
        return sum(v.sched.in_flight for v in versions)

    def _shutdown_now(self) -> None:
        for m in self._models.values():
            for v in m.versions.values():
                v.sched.shutdown()
        for v in self._retired:
            v.sched.shutdown()

    def _on_answers(self) -> None:
        self._core.drain()
        if self._drained is not None and not self._drained.is_set():
            versions = [v for m in self._models.values() for v in m.versions.values()]
            if self._in_flight(versions + self._retired) == 0:
                self._drained.set()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- inference ----------------------------------------------------------------------------
    def _route(self, name: str, version: int | str | None) -> _Version:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._models)})")
        v = entry.resolve(version)
        if v.state != "ready":
            if self._state in ("draining", "stopped"):
                raise EngineStopped(f"the engine is {self._state}; model {name!r} takes no requests")
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
    ) -> Any:
        """Runs one item through model ``name`` and returns its output.

        ``x`` is one item without the batch dimension (an array, or a dict name -> array for
        several inputs); the answer is an array (or a dict for several outputs). ``priority``
        0 is served first. ``timeout`` (seconds) raises ``DeadlineExceeded`` when it passes,
        queued or computing; a request whose deadline passes in the queue is never computed.
        Cancelling the await cancels the request in the core.
        """
        v = self._route(name, version)
        loop = self._loop
        assert loop is not None
        if priority.__class__ is not int or priority < 0:
            raise InvalidInput(f"priority must be an int >= 0 (0 is the highest), got {priority!r}")
        fut = loop.create_future()
        if timeout is None:
            deadline = _NO_DEADLINE
        else:
            if not timeout > 0:
                raise InvalidInput(f"timeout must be a positive number of seconds, got {timeout!r}")
            deadline = time.monotonic_ns() + int(timeout * 1e9)
        h = v.sched.submit(x, priority, deadline, fut)
        if h < 0:
            x = v.convert(x, h)
            h = v.sched.submit(x, priority, deadline, fut)
            if h < 0:
                raise InvalidInput(f"model {name!r}: input does not match {v.inputs}")
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
        arrays = inputs if isinstance(inputs, Mapping) else {v.inputs[0].name: inputs}
        want = [s.name for s in v.inputs]
        if set(arrays) != set(want):
            raise InvalidInput(
                f"model {name!r}: got inputs {sorted(map(str, arrays))}; expected {want}"
            )
        cols = {k: np.asarray(a) for k, a in arrays.items()}
        sizes = {k: (a.shape[0] if a.ndim else None) for k, a in cols.items()}
        n_set = set(sizes.values())
        if None in n_set or len(n_set) != 1:
            raise InvalidInput(
                f"model {name!r}: every input needs the same leading batch dimension; got "
                + ", ".join(f"{k}: {cols[k].shape}" for k in want)
            )
        n = next(iter(n_set))
        assert n is not None
        if n == 0:
            raise InvalidInput(f"model {name!r}: the batch is empty")
        single = len(want) == 1
        tasks = [
            asyncio.ensure_future(
                self.infer(
                    name,
                    cols[want[0]][i] if single else {k: cols[k][i] for k in want},
                    priority=priority,
                    timeout=timeout,
                    version=v.version,
                )
            )
            for i in range(n)
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if results and isinstance(results[0], dict):
            return {k: np.stack([r[k] for r in results]) for k in results[0]}
        out_name = v.outputs[0].name if v.outputs else "output"
        return {out_name: np.stack(results)}

    # -- introspection ------------------------------------------------------------------------
    def stats(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """Counters, gauges and latency percentiles (seconds) of a model version, live."""
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._models)})")
        v = entry.resolve(version) if version is not None else (
            entry.serving or entry.versions[max(entry.versions)]
        )
        s: dict[str, Any] = v.sched.stats()
        s["model"] = name
        s["version"] = v.version
        s["state"] = v.state
        return s

    def model_info(self, name: str, version: int | str | None = None) -> ModelInfo:
        """Metadata and state of a model version (the default one when ``version`` is None)."""
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._models)})")
        if version is None:
            v = entry.serving or entry.versions[max(entry.versions)]
        else:
            v = entry.resolve(version)
        return v.info(sorted(entry.versions), entry.aliases, v is entry.serving)

    def models(self) -> list[ModelInfo]:
        """Every registered model version with its state."""
        out = []
        for entry in self._models.values():
            for n in sorted(entry.versions):
                v = entry.versions[n]
                out.append(v.info(sorted(entry.versions), entry.aliases, v is entry.serving))
        return out


def _expire(fut: asyncio.Future[Any], v: _Version, handle: int, timeout: float) -> None:
    if not fut.done():
        v.sched.cancel(handle, True)
        fut.set_exception(
            DeadlineExceeded(
                f"model {v.name!r}: no answer within the {timeout:g}s timeout"
            )
        )
