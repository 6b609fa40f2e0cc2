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
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _core
from .cache import ResultCache, input_key
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

if TYPE_CHECKING:
    from .repository import ModelConfig

__all__ = ["Batching", "Engine", "ModelInfo"]

log = logging.getLogger("inferline")
trace_log = logging.getLogger("inferline.requests")

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
    priority_levels: int = 1
    aliases: dict[str, int] = field(default_factory=dict)
    default: bool = False
    notes: list[str] = field(default_factory=list)


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
        warmup_repeats: int = 1,
        cache: ResultCache | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.warmup_repeats = max(1, int(warmup_repeats))
        self.cache = cache
        self.notes = list(notes)
        self.drained: asyncio.Event | None = None
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
            queue_size = min(
                queue_size, max(1, batching.max_queue_bytes // max(1, self.item_nbytes))
            )
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
            if arr.shape == (1, *spec.shape) or (
                arr.ndim == len(spec.shape) + 1 and arr.shape[1:] == spec.shape
            ):
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
            priority_levels=self.batching.priority_levels,
            aliases={a: v for a, v in aliases.items() if v == self.version},
            default=default,
            notes=list(self.notes),
        )


class _Model:
    """A model name: its versions, aliases and which version answers by default."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[int, _Version] = {}
        self.aliases: dict[str, int] = {}
        self.default_policy: int | str = "latest"
        self.serving: _Version | None = None  # the default version, swapped atomically
        self.failures: dict[int, str] = {}  # versions that failed to load, with the reason
        self.from_repository = False

    def resolve(self, version: int | str | None) -> _Version:
        if version is None:
            v = self.serving
            if v is None:
                states = {n: x.state for n, x in self.versions.items()}
                raise ModelNotReady(
                    f"model {self.name!r} has no ready version (versions: {states})"
                )
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
            # A pinned version that is not ready yet leaves the current one serving.
            return ready.get(self.default_policy) or self.serving
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
        self._core = _core.Core()
        self._models: dict[str, _Model] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = "created"
        self._not_ready_reason: str | None = None
        self._drained: asyncio.Event | None = None
        self._retired: list[_Version] = []
        self._background: set[asyncio.Task[Any]] = set()
        # Repository-backed engines.
        self._repo: Path | None = None
        self._repo_failures: dict[str, str] = {}  # model name -> why it could not load
        self._failed_marks: dict[tuple[str, int], tuple[float, ...]] = {}
        self._watch = False
        self._poll_interval = 5.0
        self._watch_task: asyncio.Task[None] | None = None
        self._load_lock: asyncio.Lock | None = None
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
        warmup_repeats: int = 1,
        platform: str | None = None,
        cache: tuple[int, int] | None = None,
    ) -> None:
        """Registers ``model`` (a batch callable, or a native ``_core.Backend``) as ``name``.

        The callable receives a zero-copy numpy view of the batch, ``[B, *shape]`` (a dict of
        such views when the model has several inputs), valid only during the call; it returns
        an array ``[B, *shape]`` (a dict, or a tuple in output order, for several outputs).
        ``warmup``: True runs one batch of every size 1..max_batch_size at ``start``; a list
        names the sizes; False skips warm-up. ``cache=(max_entries, max_bytes)`` turns on the
        result cache for this version. Registering while the engine runs loads and warms the
        version in the background; it serves once ready.
        """
        self._register(
            name,
            model,
            inputs=inputs,
            outputs=outputs,
            batching=batching,
            instances=instances,
            version=version,
            warmup=warmup,
            warmup_inputs=warmup_inputs,
            warmup_repeats=warmup_repeats,
            platform=platform,
            cache=cache,
        )
        if self._state == "ready" and self._loop is not None:
            entry = self._models[name]
            self._spawn(self._bring_up(entry, entry.versions[version]))

    def _register(
        self,
        name: str,
        model: Callable[..., Any] | _core.Backend,
        *,
        inputs: Sequence[TensorSpec] | TensorSpec,
        outputs: Sequence[TensorSpec] | TensorSpec | None,
        batching: Batching | None,
        instances: int,
        version: int,
        warmup: Sequence[int] | bool,
        warmup_inputs: Callable[[int], list[np.ndarray | None]] | None,
        warmup_repeats: int,
        platform: str | None,
        cache: tuple[int, int] | None,
        notes: Sequence[str] = (),
    ) -> _Version:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"model name must be a non-empty string without '/', got {name!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version must be a positive int, got {version!r}")
        if (
            not isinstance(instances, int)
            or isinstance(instances, bool)
            or not 1 <= instances <= 256
        ):
            raise ValueError(f"instances must be an int in 1..256, got {instances!r}")
        if not (callable(model) or isinstance(model, _core.Backend)):
            raise TypeError(
                f"model must be callable or a native Backend, got {type(model).__name__}"
            )
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
        result_cache = ResultCache(*cache) if cache is not None else None
        v = _Version(
            self,
            name,
            version,
            model,
            in_specs,
            out_specs,
            batching,
            instances,
            warmup,
            warmup_inputs,
            platform,
            warmup_repeats,
            result_cache,
            notes,
        )
        if entry is None:
            entry = self._models[name] = _Model(name)
        entry.versions[version] = v
        self._repo_failures.pop(name, None)
        return v

    # -- repository ---------------------------------------------------------------------------
    @classmethod
    def from_repository(
        cls,
        path: str | os.PathLike[str],
        *,
        watch: bool = False,
        poll_interval: float = 5.0,
        blas_threads: int | None = None,
    ) -> Engine:
        """An engine serving every model of a repository folder (``<model>/model.toml`` plus
        numbered version folders). Models load and warm up at ``start``; one that fails is
        reported by ``models()`` with its reason while the others serve. ``watch=True`` polls
        the folder every ``poll_interval`` seconds and loads, swaps and unloads versions."""
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"model repository {str(root)!r} is not a folder")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        engine = cls(blas_threads=blas_threads)
        engine._repo = root
        engine._watch = watch
        engine._poll_interval = float(poll_interval)
        return engine

    @property
    def repository(self) -> Path | None:
        """The repository folder this engine serves, if any."""
        return self._repo

    def _scan(self) -> Any:
        from .repository import load_repository

        assert self._repo is not None
        return load_repository(self._repo, verify=False)

    async def _load_repository(self) -> None:
        assert self._loop is not None
        scan = await self._loop.run_in_executor(None, self._scan)
        for name, err in scan.errors.items():
            self._repo_failures[name] = str(err)
            log.error("model %s failed to load: %s", name, err)
        for name in sorted(scan.configs):
            await self._sync_model(scan.configs[name], None)

    async def _sync_model(self, cfg: ModelConfig, only: int | None) -> list[str]:
        """Loads the versions ``cfg`` wants (or just ``only``), makes the default serve, and
        retires versions it no longer wants. Returns the failures."""
        from .backends import load_version

        assert self._loop is not None
        loop = self._loop
        entry = self._models.get(cfg.name)
        wanted = set(cfg.versions_to_load) if only is None else {only}
        failures: list[str] = []
        for number in sorted(wanted):
            if (
                entry is not None
                and number in entry.versions
                and (entry.versions[number].state in ("ready", "warming", "loading"))
            ):
                continue
            try:
                loaded = await loop.run_in_executor(None, load_version, cfg, number)
                v = self._register_loaded(cfg, loaded)
            except Exception as exc:  # a broken version fails alone; the rest keeps serving
                reason = str(exc)
                failures.append(f"version {number}: {reason}")
                self._note_failure(cfg, number, reason)
                continue
            entry = self._models[cfg.name]
            await self._bring_up(entry, v, set_default=False)
            if v.state == "failed":
                failures.append(f"version {number}: {v.reason}")
                self._note_failure(cfg, number, v.reason or "failed")
                del entry.versions[number]
                self._core.reap()
        entry = self._models.get(cfg.name)
        if entry is None:
            self._repo_failures[cfg.name] = "; ".join(failures) or "no version could be loaded"
            return failures
        # Aliases and the default policy come from model.toml; moved aliases win at run time.
        for alias, number in cfg.version_policy.aliases.items():
            entry.aliases.setdefault(alias, number)
        entry.default_policy = cfg.version_policy.default
        self._swap_default(entry)
        if only is None:
            for number, v in list(entry.versions.items()):
                if number not in wanted and v.state == "ready" and v is not entry.serving:
                    self._spawn(self._retire(entry, v))
        return failures

    def _register_loaded(self, cfg: ModelConfig, loaded: Any) -> _Version:
        from .backends.checks import with_output_checks

        fn = loaded.fn
        in_names = [s.name for s in loaded.inputs]
        if len(in_names) > 1:
            raw = fn
            fn = lambda batch, _raw=raw, _names=in_names: _raw(*[batch[n] for n in _names])  # noqa: E731
        checks = cfg.output_checks
        if checks.probabilities:
            fn = with_output_checks(
                fn,
                loaded.outputs,
                probabilities=checks.probabilities,
                tolerance=checks.probabilities_tolerance,
            )
        batching = Batching(**loaded.batching.as_kwargs())
        cache = (cfg.cache.max_entries, cfg.cache.max_bytes) if cfg.cache.enabled else None
        v = self._register(
            cfg.name,
            fn,
            inputs=list(loaded.inputs),
            outputs=list(loaded.outputs),
            batching=batching,
            instances=cfg.instances,
            version=loaded.version,
            warmup=list(loaded.warmup_sizes(batching.max_batch_size)),
            warmup_inputs=loaded.warmup_inputs,
            warmup_repeats=cfg.warmup.repeats,
            platform=loaded.platform,
            cache=cache,
            notes=loaded.notes,
        )
        self._models[cfg.name].from_repository = True
        return v

    def _note_failure(self, cfg: ModelConfig, number: int, reason: str) -> None:
        log.error("model %s version %s failed to load: %s", cfg.name, number, reason)
        self._failed_marks[(cfg.name, number)] = self._fingerprint(cfg, number)
        if cfg.name not in self._models or not self._models[cfg.name].versions:
            self._repo_failures[cfg.name] = f"version {number}: {reason}"
        else:
            entry = self._models[cfg.name]
            entry.failures[number] = reason

    @staticmethod
    def _fingerprint(cfg: ModelConfig, number: int) -> tuple[float, ...]:
        marks = []
        for p in (cfg.config_file, cfg.directory / str(number)):
            try:
                st = p.stat()
                marks.append(st.st_mtime)
            except OSError:
                marks.append(-1.0)
        try:
            for child in (cfg.directory / str(number)).iterdir():
                marks.append(child.stat().st_mtime)
        except OSError:
            pass
        return tuple(marks)

    async def load(self, name: str, version: int | None = None) -> ModelInfo:
        """Loads (or reloads the wanted versions of) model ``name`` from the repository.

        The new version is loaded and warmed beside the serving one and then becomes the
        default in one step (when the policy says so); versions the model no longer wants
        finish their accepted requests and are unloaded. If the new version fails to load or
        warm up, the old one keeps serving and ``ModelError`` says why."""
        from .repository import (
            RepositoryError,
            check_model_name,
            load_model_config,
            model_directory,
        )

        if self._repo is None:
            raise ModelNotFound(f"engine has no repository to load {name!r} from")
        if self._state != "ready":
            raise EngineStopped(f"the engine is {self._state}; it cannot load models now")
        assert self._loop is not None and self._load_lock is not None
        try:
            check_model_name(name)
            directory = model_directory(self._repo, name)
        except RepositoryError as exc:
            raise ModelNotFound(f"no model {name!r} in the repository: {exc}") from None
        if not (directory / "model.toml").is_file():
            raise ModelNotFound(f"no model {name!r} in the repository {str(self._repo)!r}")
        async with self._load_lock:
            try:
                cfg = await self._loop.run_in_executor(
                    None, lambda: load_model_config(directory, root=self._repo, verify=False)
                )
            except RepositoryError as exc:
                self._repo_failures[name] = str(exc)
                raise ModelError(f"model {name!r} failed to load: {exc}") from None
            if version is not None and version not in cfg.version_numbers:
                raise ModelNotFound(
                    f"model {name!r} has no version {version} in the repository "
                    f"(versions {list(cfg.version_numbers)})"
                )
            failures = await self._sync_model(cfg, version)
        if failures:
            raise ModelError(f"model {name!r} failed to load: " + "; ".join(failures))
        return self.model_info(name, version)

    async def unload(self, name: str, version: int | None = None) -> None:
        """Unloads one version (or every version) of ``name`` after it finishes what it
        accepted. Requests then get ``ModelNotFound`` (or the next default version)."""
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._models)})")
        if version is None:
            targets = list(entry.versions.values())
        else:
            if version not in entry.versions:
                raise ModelNotFound(
                    f"model {name!r} has no version {version} (versions {sorted(entry.versions)})"
                )
            targets = [entry.versions[version]]
        await asyncio.gather(*(self._retire(entry, v) for v in targets))
        if not entry.versions:
            del self._models[name]

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model of the repository (loaded or not) with its versions' states."""
        out: list[dict[str, Any]] = []
        names: set[str] = set(self._models) | set(self._repo_failures)
        if self._repo is not None:
            try:
                names |= set(self._scan().models)
            except Exception as exc:  # the index still lists what is loaded
                log.warning("repository scan failed: %s", exc)
        for name in sorted(names):
            entry = self._models.get(name)
            if entry is None:
                reason = self._repo_failures.get(name)
                out.append(
                    {
                        "name": name,
                        "version": "",
                        "state": "UNAVAILABLE",
                        "reason": reason or "not loaded",
                    }
                )
                continue
            for number in sorted(entry.versions):
                v = entry.versions[number]
                out.append(
                    {
                        "name": name,
                        "version": str(number),
                        "state": v.state.upper(),
                        "reason": v.reason or "",
                    }
                )
            for number, reason in sorted(entry.failures.items()):
                if number not in entry.versions:
                    out.append(
                        {
                            "name": name,
                            "version": str(number),
                            "state": "UNAVAILABLE",
                            "reason": reason,
                        }
                    )
        return out

    # -- aliases and default version ----------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Points ``alias`` (e.g. ``"stable"``) of model ``name`` at ``version`` (moves it if it
        exists). Usable wherever a version is accepted."""
        entry = self._entry(name)
        if not isinstance(alias, str) or not alias or alias.isdigit() or alias == "latest":
            raise ValueError(f"alias must be a non-numeric name other than 'latest', got {alias!r}")
        if version not in entry.versions:
            raise ModelNotFound(
                f"model {name!r} has no version {version} (versions {sorted(entry.versions)})"
            )
        entry.aliases[alias] = version
        self._swap_default(entry)

    def remove_alias(self, name: str, alias: str) -> None:
        """Removes an alias of model ``name``."""
        entry = self._entry(name)
        if entry.aliases.pop(alias, None) is None:
            raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
        self._swap_default(entry)

    def set_default(self, name: str, version: int | str) -> None:
        """Which version answers requests naming none: a number, an alias (followed when it
        moves) or ``"latest"`` (the highest ready version)."""
        entry = self._entry(name)
        if isinstance(version, int) and not isinstance(version, bool):
            if version not in entry.versions:
                raise ModelNotFound(
                    f"model {name!r} has no version {version} (versions {sorted(entry.versions)})"
                )
        elif version != "latest" and version not in entry.aliases:
            raise ModelNotFound(f"model {name!r} has no alias {version!r}")
        entry.default_policy = version
        self._swap_default(entry)

    def _entry(self, name: str) -> _Model:
        entry = self._models.get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._models)})")
        return entry

    def _swap_default(self, entry: _Model) -> None:
        # One assignment on the loop thread: a request routes to the old or the new version,
        # never to neither; the old one keeps answering what it accepted.
        new = entry.pick_default()
        if new is not entry.serving:
            old = entry.serving
            entry.serving = new
            log.info(
                "model %s now serves version %s (was %s)",
                entry.name,
                new.version if new else None,
                old.version if old else None,
            )

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
            and not self._repo_failures
            and all(m.serving is not None for m in self._models.values())
        )

    def mark_draining(self, reason: str = "shutting down") -> None:
        """Turns readiness false (for load balancers) while requests are still accepted."""
        self._not_ready_reason = reason

    async def start(self) -> None:
        """Starts the workers and warms every model up; models become ready one by one."""
        if self._state != "created":
            raise InferlineError(f"engine cannot start from state {self._state!r}")
        self._loop = asyncio.get_running_loop()
        self._load_lock = asyncio.Lock()
        if self._blas_threads is not None:
            from threadpoolctl import threadpool_limits

            self._blas_limit = threadpool_limits(limits=self._blas_threads)
        self._loop.add_reader(self._core.fd, self._on_answers)
        if trace_log.isEnabledFor(logging.DEBUG):
            self._core.set_trace(_trace_request)
        self._state = "loading"
        failures = []
        for entry in list(self._models.values()):
            for v in list(entry.versions.values()):
                if v.started:
                    continue
                await self._bring_up(entry, v)
                if v.state == "failed":
                    failures.append(f"{entry.name} v{v.version}: {v.reason}")
        if self._repo is not None:
            await self._load_repository()
        self._state = "ready"
        if failures:
            log.error("models failed to start: %s", "; ".join(failures))
        if self._watch:
            self._watch_task = self._loop.create_task(self._watch_repository())

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _bring_up(self, entry: _Model, v: _Version, *, set_default: bool = True) -> None:
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
        entry.failures.pop(v.version, None)
        log.info(
            "model %s version %s ready%s",
            v.name,
            v.version,
            f" ({'; '.join(v.notes)})" if v.notes else "",
        )
        if set_default:
            self._swap_default(entry)

    async def _warm(self, v: _Version) -> None:
        assert self._loop is not None
        for b in v.warmup_sizes:
            for _ in range(v.warmup_repeats):
                arrays: list[np.ndarray | None]
                if v.warmup_inputs is not None:
                    arrays = list(v.warmup_inputs(b))
                else:
                    arrays = [None] * len(v.inputs)
                await self._loop.run_in_executor(None, v.sched.warmup, b, arrays)

    async def _retire(self, entry: _Model, v: _Version, drain_timeout: float = 60.0) -> None:
        """Takes a version out of service: no new requests, accepted ones finish, unload."""
        if v.state in ("draining", "unloaded"):
            return
        assert self._loop is not None
        v.state = "draining"
        if entry.serving is v:
            entry.serving = None
            self._swap_default(entry)
        v.sched.close()
        if v.sched.in_flight:
            v.drained = asyncio.Event()
            self._retired.append(v)
            try:
                await asyncio.wait_for(v.drained.wait(), drain_timeout)
            except TimeoutError:
                log.warning(
                    "model %s version %s did not drain in %.0fs", v.name, v.version, drain_timeout
                )
        await self._loop.run_in_executor(None, v.sched.shutdown)
        self._core.drain()
        v.state = "unloaded"
        if v.cache is not None:
            v.cache.clear()
        if entry.versions.get(v.version) is v:
            del entry.versions[v.version]
        entry.aliases = {a: n for a, n in entry.aliases.items() if n in entry.versions}
        if v in self._retired and v.sched.in_flight == 0:
            self._retired.remove(v)
        self._core.reap()
        log.info("model %s version %s unloaded", v.name, v.version)

    async def _watch_repository(self) -> None:
        from .repository import load_repository

        assert self._loop is not None and self._repo is not None and self._load_lock is not None
        root = self._repo
        while self._state == "ready":
            await asyncio.sleep(self._poll_interval)
            if self._state != "ready":
                break
            try:
                scan = await self._loop.run_in_executor(
                    None, lambda: load_repository(root, verify=False)
                )
            except Exception as exc:
                log.warning("repository poll failed: %s", exc)
                continue
            async with self._load_lock:
                for name, err in scan.errors.items():
                    if name not in self._models:
                        self._repo_failures[name] = str(err)
                for name, cfg in sorted(scan.configs.items()):
                    wanted = set(cfg.versions_to_load)
                    entry = self._models.get(name)
                    have = set(entry.versions) if entry else set()
                    fresh = {
                        n
                        for n in wanted - have
                        if self._failed_marks.get((name, n)) != self._fingerprint(cfg, n)
                    }
                    stale = have - wanted
                    if (
                        fresh
                        or stale
                        or (entry and entry.default_policy != cfg.version_policy.default)
                    ):
                        try:
                            await self._sync_model(cfg, None)
                        except Exception:
                            log.exception("model %s: repository sync failed", name)
                for name in set(self._models) - set(scan.models):
                    if self._models[name].from_repository:
                        await self.unload(name)

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Refuses new work, lets accepted requests finish for up to ``drain_timeout`` seconds,
        then answers whatever is left with ``EngineStopped`` and joins the workers."""
        if self._state in ("stopped", "created"):
            self._state = "stopped"
            self._shutdown_now()
            return
        loop = asyncio.get_running_loop()
        self._state = "draining"
        if self._watch_task is not None:
            self._watch_task.cancel()
        versions = self._all_versions()
        for v in versions:
            v.sched.close()
        self._drained = asyncio.Event()
        if self._in_flight(versions):
            try:
                await asyncio.wait_for(self._drained.wait(), drain_timeout)
            except TimeoutError:
                log.warning(
                    "drain timed out after %.1fs; answering the rest EngineStopped", drain_timeout
                )
        for v in versions:
            await loop.run_in_executor(None, v.sched.shutdown)
        self._core.drain()
        for task in list(self._background):
            task.cancel()
        if self._loop is not None:
            self._loop.remove_reader(self._core.fd)
        self._core.set_trace(None)
        self._state = "stopped"
        self._core.reap()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()
            self._blas_limit = None

    def _all_versions(self) -> list[_Version]:
        versions = [v for m in self._models.values() for v in m.versions.values()]
        return versions + [v for v in self._retired if v not in versions]

    def _in_flight(self, versions: Iterable[_Version]) -> int:
        return sum(v.sched.in_flight for v in versions)

    def _shutdown_now(self) -> None:
        for v in self._all_versions():
            v.sched.shutdown()

    def _on_answers(self) -> None:
        self._core.drain()
        if self._retired:
            for v in self._retired:
                if v.drained is not None and v.sched.in_flight == 0:
                    v.drained.set()
        if self._drained is not None and not self._drained.is_set():
            if self._in_flight(self._all_versions()) == 0:
                self._drained.set()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- inference ----------------------------------------------------------------------------
    def _route(self, name: str, version: int | str | None) -> _Version:
        if self._state == "created":
            raise EngineStopped(
                "the engine is not started; use `async with engine:` or `await engine.start()`"
            )
        entry = self._models.get(name)
        if entry is None:
            reason = self._repo_failures.get(name)
            if reason is not None:
                raise ModelNotReady(f"model {name!r} failed to load: {reason}")
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._models)})")
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
        entry = self._models.get(name)
        v = entry.serving if entry is not None and version is None else None
        if v is None or v.state != "ready":
            v = self._route(name, version)
        if v.cache is not None and _use_cache:
            return await self._infer_cached(v, x, priority, timeout)
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[assignment]  # set by start()
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

    async def _infer_cached(self, v: _Version, x: Any, priority: int, timeout: float | None) -> Any:
        assert v.cache is not None
        x = v.convert(x, -1)
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
        v = (
            entry.resolve(version)
            if version is not None
            else (entry.serving or entry.versions[max(entry.versions)])
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


def _expire(fut: asyncio.Future[Any], v: _Version, handle: int, timeout: float) -> None:
    if not fut.done():
        v.sched.cancel(handle, True)
        fut.set_exception(
            DeadlineExceeded(f"model {v.name!r}: no answer within the {timeout:g}s timeout")
        )
