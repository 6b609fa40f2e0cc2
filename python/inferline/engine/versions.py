"""A served model version, a model name with its versions and aliases, and request routing.

``ServedVersion`` owns one native ``_core.Scheduler`` (built in :func:`_new_scheduler`, the one
place that calls the core's constructor). ``ServedModel`` is a name with its versions, aliases
and default policy; ``Router`` holds every model and the retired versions still draining, and
answers "which version serves this request".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _core
from ..backends.process import ISOLATIONS, RepositoryTarget, process_backend
from ..cache import ResultCache
from ..errors import ModelNotFound, ModelNotReady
from ..types import DEFAULTS, LIMITS, TensorSpec

if TYPE_CHECKING:
    from .stages import Pipeline

__all__ = [
    "Batching",
    "ModelInfo",
    "Router",
    "ServedModel",
    "ServedVersion",
    "VersionView",
]

log = logging.getLogger("inferline")


def _positive_int(field_name: str, value: object, upper: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Batching.{field_name} must be a positive int, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"Batching.{field_name} must be at most {upper}, got {value}")


@dataclass(frozen=True)
class Batching:
    """How a model's requests are batched and bounded.

    ``policy`` says when a batch leaves (at most ``max_batch_size`` items in any case):

    - ``"work_conserving"`` (the default): an idle instance takes what is queued at once, so a
      lone request pays no window; while every instance is busy, requests accumulate and the
      next free instance takes a batch as full as the queue allows.
    - ``"fixed_window"`` (Triton's dynamic batcher): a batch waits until it is full or its
      oldest item has waited ``max_queue_delay_ms``. Fuller batches at low load, paid for with
      up to that much latency on every request.
    - ``"latency_target"`` (chosen when ``max_latency_ms`` is given): the core learns the batch
      cost online (a·n + b) and holds a batch open only while its oldest request can still be
      computed within ``max_latency_ms`` of arriving; a request that could not make the target
      is refused at once with ``QueueFullError``.

    At most ``max_queue_size`` items wait; beyond that ``infer`` raises
    ``QueueFullError`` at once. ``priority_levels`` lanes are served in order (0 first).
    ``idle_spin_us`` lets an idle worker spin that long before sleeping, trading CPU for the
    latency of a lone request. ``max_queue_bytes`` bounds the input bytes waiting, and
    ``max_item_bytes`` refuses items larger than that (both at admission).
    ``execution_timeout_ms`` bounds one model call: a batch that overruns it is answered
    ``ModelError`` at the deadline ("batch of N did not finish within the T ms execution
    timeout"), its worker thread is abandoned (its late answer discarded) and a fresh one takes
    its place, so the model keeps serving; left out or 0, no timeout.
    ``max_batch_tokens`` caps a batch's summed item cost as well as its size: each item costs
    the value of its ``cost_input`` (the name of an INT32 ``[1]`` input, e.g. a text encoder's
    ``length``; a native ``TextEncoder`` uses ``"length"`` unless told otherwise), or 1 without
    one. A batch never passes the cap, except that a single item costing more runs alone; the
    queue stays first in, first out. Defaults and upper bounds come from
    :data:`inferline.types.DEFAULTS` and :data:`inferline.types.LIMITS`.
    """

    max_batch_size: int = DEFAULTS.max_batch_size
    max_queue_delay_ms: float = DEFAULTS.max_queue_delay_ms
    max_queue_size: int = DEFAULTS.max_queue_size
    priority_levels: int = DEFAULTS.priority_levels
    idle_spin_us: float = DEFAULTS.idle_spin_us
    max_queue_bytes: int | None = None
    max_item_bytes: int | None = None
    policy: str | None = None
    max_latency_ms: float | None = None
    execution_timeout_ms: float | None = None
    max_batch_tokens: int | None = None
    cost_input: str | None = None

    def __post_init__(self) -> None:
        _positive_int("max_batch_size", self.max_batch_size, LIMITS.max_batch_size)
        _positive_int("max_queue_size", self.max_queue_size, LIMITS.max_queue_size)
        _positive_int("priority_levels", self.priority_levels, LIMITS.max_priority_levels)
        for name in ("max_queue_delay_ms", "idle_spin_us"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"Batching.{name} must be a number >= 0, got {value!r}")
        for name in ("max_queue_bytes", "max_item_bytes"):
            value = getattr(self, name)
            if value is not None:
                _positive_int(name, value)
        if self.max_latency_ms is not None and (
            not isinstance(self.max_latency_ms, int | float)
            or isinstance(self.max_latency_ms, bool)
            or not self.max_latency_ms > 0
        ):
            raise ValueError(
                f"Batching.max_latency_ms must be a number > 0, got {self.max_latency_ms!r}"
            )
        timeout = self.execution_timeout_ms
        if timeout is not None and (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 <= timeout <= LIMITS.max_execution_timeout_ms
        ):
            raise ValueError(
                "Batching.execution_timeout_ms must be a number between 0 (none) and "
                f"{LIMITS.max_execution_timeout_ms:g}, got {timeout!r}"
            )
        if self.max_batch_tokens is not None:
            _positive_int("max_batch_tokens", self.max_batch_tokens, LIMITS.max_batch_tokens)
        if self.cost_input is not None and (
            not isinstance(self.cost_input, str) or not self.cost_input
        ):
            raise ValueError(
                "Batching.cost_input must be the name of an INT32 [1] input, "
                f"got {self.cost_input!r}"
            )
        policy = self.policy
        if policy is None:
            policy = "work_conserving" if self.max_latency_ms is None else "latency_target"
        object.__setattr__(self, "policy", policy)
        try:  # the core knows its policies: one check, no list of names kept here
            _core.SchedulerConfig(policy=policy, max_latency_ms=self.max_latency_ms or 0.0)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"Batching.{exc}") from None


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
    max_queue_size: int = DEFAULTS.max_queue_size  # the effective bound (max_queue_bytes too)
    stages: list[str] = field(default_factory=list)  # pipeline stages around the core, if any


def _native_spec(spec: TensorSpec) -> _core.TensorSpec:
    # The core derives the NaN/Inf check from the dtype; BF16 travels as uint16 bit patterns.
    return _core.TensorSpec(
        spec.name, spec.dtype, spec.shape, spec.finite, bf16=spec.datatype == "BF16"
    )


def _new_scheduler(
    core: _core.Core,
    name: str,
    model: Callable[..., Any] | _core.Backend,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    batching: Batching,
    queue_size: int,
    instances: int,
    on_loop: bool = False,
) -> _core.Scheduler:
    # The one call of the native scheduler's constructor.
    cost_name = batching.cost_input
    if cost_name is None and isinstance(model, _core.kernels.TextEncoder):
        cost_name = "length"  # a text encoder's cost is its real tokens
    cost_input = -1
    if cost_name is not None:
        index = next((i for i, s in enumerate(inputs) if s.name == cost_name), None)
        if index is None or inputs[index].datatype != "INT32" or inputs[index].shape != (1,):
            raise ValueError(
                f"model {name!r}: Batching.cost_input {cost_name!r} must name an INT32 [1] "
                f"input, one of {[s.name for s in inputs]}"
            )
        cost_input = index
    config = _core.SchedulerConfig(
        name,
        max_batch_size=batching.max_batch_size,
        max_queue_delay_ms=batching.max_queue_delay_ms,
        max_queue_size=queue_size,
        priority_levels=batching.priority_levels,
        instances=instances,
        idle_spin_us=batching.idle_spin_us,
        policy=str(batching.policy),  # resolved by Batching.__post_init__
        max_latency_ms=batching.max_latency_ms or 0.0,
        execution_timeout_ms=batching.execution_timeout_ms or 0.0,
        max_batch_tokens=batching.max_batch_tokens or 0,
        cost_input=cost_input,
        on_loop=on_loop,
    )
    return _core.Scheduler(
        core,
        config,
        [_native_spec(s) for s in inputs],
        [_native_spec(s) for s in outputs],
        model,
    )


def check_identity(name: object, version: object, model: object) -> None:
    """ValueError/TypeError unless ``name``, ``version`` and ``model`` can be registered."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"model name must be a non-empty string without '/', got {name!r}")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive int, got {version!r}")
    if not (callable(model) or isinstance(model, _core.Backend | RepositoryTarget)):
        raise TypeError(f"model must be callable or a native Backend, got {type(model).__name__}")


def _warmup_sizes(name: str, warmup: Sequence[int] | bool, max_batch_size: int) -> list[int]:
    if warmup is True:
        return list(range(1, max_batch_size + 1))
    if warmup is False:
        return []
    sizes = sorted({int(b) for b in warmup})
    bad = [b for b in sizes if not 1 <= b <= max_batch_size]
    if bad:
        raise ValueError(
            f"model {name!r}: warm-up batch sizes {bad} are outside "
            f"1..{max_batch_size} (max_batch_size)"
        )
    return sizes


class ServedVersion:
    """One registered model version: its specs, its native scheduler, its state.

    State: loading -> warming -> ready (or failed) -> draining -> unloaded. Touched on the
    engine's event loop only; the scheduler itself is thread-safe.
    """

    def __init__(
        self,
        core: _core.Core,
        name: str,
        version: int,
        model: Callable[..., Any] | _core.Backend | RepositoryTarget,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        *,
        batching: Batching,
        instances: int,
        isolation: str = "thread",
        warmup: Sequence[int] | bool,
        warmup_inputs: Callable[[int], Sequence[np.ndarray | None]] | None,
        warmup_repeats: int,
        platform: str | None,
        cache: ResultCache | None,
        notes: Sequence[str],
    ) -> None:
        top = LIMITS.max_instances
        if (
            not isinstance(instances, int)
            or isinstance(instances, bool)
            or not 1 <= instances <= top
        ):
            raise ValueError(f"instances must be an int in 1..{top}, got {instances!r}")
        self.name = name
        self.version = version
        self.inputs = inputs
        self.outputs = outputs
        self.batching = batching
        self.instances = instances
        self.isolation = isolation
        self.cache = cache
        self.notes = list(notes)
        self.state = "loading"
        self.reason: str | None = None
        self.started = False
        self.drained: asyncio.Event | None = None  # set once a retired version has no work
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
        self.warmup_sizes = _warmup_sizes(name, warmup, batching.max_batch_size)
        self.warmup_inputs = warmup_inputs
        self.warmup_repeats = max(1, int(warmup_repeats))
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
        # Child processes of a process isolation; shut down with the scheduler (on_shutdown).
        self.process: _core.ProcessBackend | None = None
        runner: Callable[..., Any] | _core.Backend
        if isolation == "process":
            runner = self.process = process_backend(
                name,
                model,
                inputs,
                outputs,
                max_batch_size=batching.max_batch_size,
                instances=instances,
                execution_timeout_ms=batching.execution_timeout_ms or 0.0,
            )
        elif isinstance(model, RepositoryTarget):
            raise ValueError(f"model {name!r}: a RepositoryTarget runs only in process instances")
        else:
            runner = model
        self.sched = _new_scheduler(
            core,
            name,
            runner,
            inputs,
            outputs,
            batching,
            queue_size,
            instances,
            on_loop=isolation == "loop",
        )
        self.platform = platform or self.sched.platform
        self.model = model
        # Stages around the core (Engine.register's pre/post): inputs/outputs above are the
        # core's; the pipeline's are the model's public signature.
        self.pipeline: Pipeline | None = None

    def info(self, versions: list[int], aliases: dict[str, int], default: bool) -> ModelInfo:
        return ModelInfo(
            name=self.name,
            version=self.version,
            versions=versions,
            state=self.state,
            reason=self.reason,
            platform=self.platform,
            inputs=list(self.pipeline.inputs if self.pipeline else self.inputs),
            outputs=list(self.pipeline.outputs if self.pipeline else self.outputs),
            max_batch_size=self.batching.max_batch_size,
            priority_levels=self.batching.priority_levels,
            max_queue_size=self.queue_size,
            aliases={a: v for a, v in aliases.items() if v == self.version},
            default=default,
            notes=list(self.notes),
            stages=list(self.pipeline.stages) if self.pipeline else [],
        )


class VersionView:
    """A read-only view of one live version, for metrics and monitoring.

    Every figure is read live from the version and its native scheduler; safe to read from
    any thread (the native counters are atomics; the Python fields are single reads).
    """

    __slots__ = ("_v",)

    def __init__(self, version: ServedVersion) -> None:
        self._v = version

    @property
    def name(self) -> str:
        return self._v.name

    @property
    def version(self) -> int:
        return self._v.version

    @property
    def state(self) -> str:
        """loading, warming, ready, failed, draining or unloaded."""
        return self._v.state

    @property
    def max_batch_size(self) -> int:
        return self._v.batching.max_batch_size

    @property
    def max_queue_size(self) -> int:
        """Items that may wait at once (the effective bound, after ``max_queue_bytes``)."""
        return self._v.queue_size

    @property
    def queue_depth(self) -> int:
        """Items waiting (a best guess while requests flow)."""
        return int(self._v.sched.queue_depth)

    @property
    def in_flight(self) -> int:
        """Items accepted and not yet answered."""
        return int(self._v.sched.in_flight)

    def stats(self) -> dict[str, Any]:
        """The native scheduler's counters, gauges and latency percentiles."""
        return dict(self._v.sched.stats())

    def instance_pids(self) -> list[int]:
        """Each process instance's child pid (-1 while it restarts); [] for thread instances."""
        return list(self._v.process.pids) if self._v.process is not None else []

    def histogram_buckets(
        self, which: str, bounds: Sequence[float], unit: float
    ) -> tuple[list[int], int, float]:
        """Cumulative counts of native histogram ``which`` at ``bounds`` (in ``unit``s), the
        total count and the sum, from one consistent snapshot."""
        counts, count, total = self._v.sched.histogram_buckets(which, list(bounds), unit)
        return list(counts), int(count), float(total)

    def token_stats(self) -> dict[str, int] | None:
        """A token-counting core's real and computed tokens and batches (a text encoder's
        ``token_stats()``); None for other models."""
        stats = getattr(self._v.model, "token_stats", None)
        return {k: int(x) for k, x in stats().items()} if callable(stats) else None

    @property
    def cache_stats(self) -> dict[str, int] | None:
        """The result cache's hits, misses, entries, bytes and evictions; None without one."""
        return self._v.cache.stats() if self._v.cache is not None else None


class ServedModel:
    """A model name: its versions, aliases and which version answers by default."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[int, ServedVersion] = {}
        self.aliases: dict[str, int] = {}
        self.default_policy: int | str = "latest"
        self.serving: ServedVersion | None = None  # the default version, swapped atomically

    def resolve(self, version: int | str | None) -> ServedVersion:
        """The version a request names (a number, an alias, or None for the default)."""
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

    def pick_default(self) -> ServedVersion | None:
        ready = {n: v for n, v in self.versions.items() if v.state == "ready"}
        if not ready:
            return None
        if isinstance(self.default_policy, int):
            # A pinned version that is not ready yet leaves the current one serving.
            return ready.get(self.default_policy) or self.serving
        if self.default_policy in self.aliases:
            return ready.get(self.aliases[self.default_policy])
        return ready[max(ready)]

    def swap_default(self) -> None:
        """Points ``serving`` at what the policy picks now.

        One assignment on the loop thread: a request routes to the old or the new version,
        never to neither; the old one keeps answering what it accepted.
        """
        new = self.pick_default()
        if new is not self.serving:
            old = self.serving
            self.serving = new
            log.info(
                "model %s now serves version %s (was %s)",
                self.name,
                new.version if new else None,
                old.version if old else None,
            )

    def has_version(self, version: int) -> None:
        """Raises ModelNotFound unless ``version`` is registered."""
        if version not in self.versions:
            raise ModelNotFound(
                f"model {self.name!r} has no version {version} (versions {sorted(self.versions)})"
            )

    def info(self, v: ServedVersion) -> ModelInfo:
        return v.info(sorted(self.versions), self.aliases, v is self.serving)

    def shown(self, version: int | str | None) -> ServedVersion:
        """The version introspection shows: the named one, else the default, else the newest."""
        if version is not None:
            return self.resolve(version)
        return self.serving or self.versions[max(self.versions)]


class Router:
    """Every model by name, plus the retired versions still finishing accepted work.

    Used on the engine's event loop only.
    """

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.retired: list[ServedVersion] = []

    def entry(self, name: str) -> ServedModel:
        """The model ``name``; ModelNotFound naming the registered ones otherwise."""
        entry = self.models.get(name)
        if entry is None:
            raise ModelNotFound(f"no model named {name!r} (models: {sorted(self.models)})")
        return entry

    def add(self, v: ServedVersion) -> ServedModel:
        entry = self.models.get(v.name)
        if entry is None:
            entry = self.models[v.name] = ServedModel(v.name)
        entry.versions[v.version] = v
        return entry

    def all_versions(self) -> list[ServedVersion]:
        """Registered versions (any state) and retired ones still draining."""
        # list() of a dict view runs without releasing the GIL: safe from a scrape thread.
        versions = [v for m in list(self.models.values()) for v in list(m.versions.values())]
        seen = {id(v) for v in versions}
        return versions + [v for v in list(self.retired) if id(v) not in seen]

    def set_alias(self, name: str, alias: str, version: int) -> None:
        entry = self.entry(name)
        if not isinstance(alias, str) or not alias or alias.isdigit() or alias == "latest":
            raise ValueError(f"alias must be a non-numeric name other than 'latest', got {alias!r}")
        entry.has_version(version)
        entry.aliases[alias] = version
        entry.swap_default()

    def remove_alias(self, name: str, alias: str) -> None:
        entry = self.entry(name)
        if entry.aliases.pop(alias, None) is None:
            raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
        entry.swap_default()

    def set_default(self, name: str, version: int | str) -> None:
        entry = self.entry(name)
        if isinstance(version, int) and not isinstance(version, bool):
            entry.has_version(version)
        elif version != "latest" and version not in entry.aliases:
            raise ModelNotFound(f"model {name!r} has no alias {version!r}")
        entry.default_policy = version
        entry.swap_default()

    def apply_policy(self, name: str, default: int | str, aliases: Mapping[str, int]) -> None:
        entry = self.entry(name)
        for alias, number in aliases.items():
            entry.aliases.setdefault(alias, number)
        entry.default_policy = default
        entry.swap_default()
