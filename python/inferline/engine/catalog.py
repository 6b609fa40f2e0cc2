"""What an engine serves and how a request finds it: state, routing, aliases, introspection.

``ModelCatalog`` is the part of :class:`~inferline.engine.Engine` that reads and re-points the
routing table (``Router``) without touching the runtime: which version answers a request (or
why none can), moving an alias or the default version (one assignment on the loop thread),
readiness, and the figures read live from the native schedulers. ``ModelSource`` is where
models come from besides ``register``. Lifecycle, registration and inference stay on the
engine itself (engine.py), which moves ``_state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import EngineStopped, ModelNotFound, ModelNotReady
from .versions import ModelInfo, Router, ServedVersion, VersionView

if TYPE_CHECKING:  # the engine is built on this module: its type only, for ModelSource
    from .engine import Engine

__all__ = ["ModelCatalog", "ModelSource"]


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


class ModelCatalog:
    """The models an engine holds: their aliases and default version, and what they show.

    Used on the engine's event loop, except ``live_versions`` (safe from a scrape thread).
    """

    def __init__(self) -> None:
        self._router = Router()
        self._state = "created"  # moved by the engine's lifecycle
        self._not_ready_reason: str | None = None
        self._source: ModelSource | None = None

    # -- state and routing --------------------------------------------------------------------
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

    @property
    def repository(self) -> Path | None:
        """The repository folder this engine serves, if any."""
        return self._source.root if self._source is not None else None

    # -- aliases and default version ----------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Points ``alias`` (e.g. ``"stable"``) of model ``name`` at ``version`` (moves it if it
        exists). Usable wherever a version is accepted."""
        self._router.set_alias(name, alias, version)

    def remove_alias(self, name: str, alias: str) -> None:
        """Removes an alias of model ``name``."""
        self._router.remove_alias(name, alias)

    def set_default(self, name: str, version: int | str) -> None:
        """Which version answers requests naming none: a number, an alias (followed when it
        moves) or ``"latest"`` (the highest ready version)."""
        self._router.set_default(name, version)

    def set_version_policy(
        self, name: str, *, default: int | str, aliases: Mapping[str, int]
    ) -> None:
        """A model's policy as a configuration file states it: ``default`` as in
        ``set_default`` (not checked against the loaded versions) and ``aliases`` added where
        the model has none of that name yet (aliases moved at run time win)."""
        self._router.apply_policy(name, default, aliases)

    def default_policy(self, name: str) -> int | str:
        """What ``set_default`` (or ``set_version_policy``) last said for ``name``."""
        return self._router.entry(name).default_policy

    # -- introspection ------------------------------------------------------------------------
    def stats(self, name: str, version: int | str | None = None) -> dict[str, Any]:
        """Counters, gauges and latency percentiles (seconds) of a model version, live."""
        v = self._router.entry(name).shown(version)
        s: dict[str, Any] = v.sched.stats()
        s["model"] = name
        s["version"] = v.version
        s["state"] = v.state
        return s

    def model_info(self, name: str, version: int | str | None = None) -> ModelInfo:
        """Metadata and state of a model version (the default one when ``version`` is None)."""
        entry = self._router.entry(name)
        return entry.info(entry.shown(version))

    def models(self) -> list[ModelInfo]:
        """Every registered model version with its state."""
        return [
            entry.info(entry.versions[n])
            for entry in self._router.models.values()
            for n in sorted(entry.versions)
        ]

    def model_names(self) -> list[str]:
        """Registered model names, including those with no version left (all failed)."""
        return sorted(self._router.models)

    def live_versions(self) -> list[VersionView]:
        """A read-only view of every version the engine holds: registered (any state) and
        retired ones still finishing accepted work. Safe to call from a scrape thread."""
        return [VersionView(v) for v in self._router.all_versions()]
