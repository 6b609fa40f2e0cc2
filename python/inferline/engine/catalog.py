"""What an engine serves and how a request finds it: state, routing, aliases, introspection.

``ModelCatalog`` is the part of :class:`~inferline.engine.Engine` that reads and re-points the
routing table (``Router``) without touching the runtime: which version answers a request (or
why none can), moving an alias or the default version (one assignment on the loop thread),
readiness, and the figures read live from the native schedulers. ``ModelSource`` is where
models come from besides ``register``. Lifecycle, registration and inference stay on the
engine itself (engine.py), which moves ``_state``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import EngineStopped, ModelNotFound, ModelNotReady
from .runtime import Runtime
from .versions import ModelInfo, Router, ServedModel, ServedVersion, VersionView

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

    def has_model(self, name: str) -> bool:
        """Whether the source holds a model ``name`` (loaded or not)."""

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

    _runtime: Runtime  # the engine's, set by Engine.__init__

    def __init__(self, *, strict: bool = False) -> None:
        self._router = Router()
        self._state = "created"  # moved by the engine's lifecycle
        self._not_ready_reason: str | None = None
        self._source: ModelSource | None = None
        self._strict = bool(strict)

    @property
    def strict(self) -> bool:
        """Whether a model that fails to load or warm up fails ``start`` (``Engine(strict=)``)."""
        return self._strict

    # -- state and routing --------------------------------------------------------------------
    @property
    def state(self) -> str:
        """created, loading, warming, ready, draining or stopped."""
        return self._state

    @property
    def ready(self) -> bool:
        """True when started, not draining, and every model has a ready default version
        (a model that failed makes it false: ``readiness(require_all=False)`` ignores those)."""
        return self.readiness() is None

    def readiness(self, *, require_all: bool = True) -> str | None:
        """None when ready, else why not (one clause per model that is not ready).

        ``require_all=False`` counts only the models that loaded: a model whose every version
        failed (or that the repository could not load) does not make the engine unready,
        while one still loading or warming does. The server's ``/v2/health/ready`` uses it
        unless ``--strict-readiness``.
        """
        if self._state != "ready":
            return f"the engine is {self._state}"
        if self._not_ready_reason is not None:
            return self._not_ready_reason
        reasons: list[str] = []
        for _, entry in sorted(self._router.models.items()):
            if entry.serving is not None:
                continue
            pending = [v for v in entry.versions.values() if v.state in ("loading", "warming")]
            if pending or require_all:
                reasons.append(self._why_not_serving(entry))
        if require_all and self._source is not None:
            reasons += [
                f"model {name!r} failed to load: {why}"
                for name, why in sorted(self._source.failures.items())
                if name not in self._router.models
            ]
        return "; ".join(reasons) or None

    def failed_models(self) -> list[str]:
        """Why each model that cannot serve at all failed (empty when none did): what
        ``Engine(strict=True)`` raises at ``start``."""
        out = [
            self._why_not_serving(entry)
            for _, entry in sorted(self._router.models.items())
            if entry.serving is None
            and not any(v.state in ("loading", "warming") for v in entry.versions.values())
        ]
        if self._source is not None:
            out += [
                f"model {name!r} failed to load: {why}"
                for name, why in sorted(self._source.failures.items())
                if name not in self._router.models
            ]
        return out

    def _why_not_serving(self, entry: ServedModel) -> str:
        """Why ``entry`` has no ready default version, with each version's reason, e.g.
        "model 'm' has no ready version; version 1 failed: warm-up failed: <reason>"."""
        parts = [
            f"version {n} "
            + (f"failed: {v.reason}" if v.state == "failed" and v.reason else f"is {v.state}")
            for n, v in sorted(entry.versions.items())
        ]
        if parts:
            return f"model {entry.name!r} has no ready version; " + "; ".join(parts)
        why = self._source.failures.get(entry.name) if self._source is not None else None
        if why:
            return f"model {entry.name!r} failed to load: {why}"
        return f"model {entry.name!r} has no version loaded"

    def mark_draining(self, reason: str = "shutting down") -> None:
        """Turns readiness false (for load balancers) while requests are still accepted."""
        self._not_ready_reason = reason

    def _route(self, name: str, version: int | str | None) -> ServedVersion:
        if self._state == "created":
            raise EngineStopped(
                "the engine is not started; use `async with engine:` or `await engine.start()`"
            )
        entry = self._entry(name)
        if version is None and entry.serving is None:
            if self._state in ("draining", "stopped"):
                raise EngineStopped(
                    f"the engine is {self._state}; model {name!r} takes no requests"
                )
            raise ModelNotReady(self._why_not_serving(entry))
        v = entry.resolve(version)
        if v.state != "ready":
            if self._state in ("draining", "stopped"):
                raise EngineStopped(
                    f"the engine is {self._state}; model {name!r} takes no requests"
                )
            state = "failed" if v.state == "failed" else f"is {v.state}"
            raise ModelNotReady(
                f"model {name!r} version {v.version} {state}"
                + (f": {v.reason}" if v.reason else "")
            )
        return v

    def _entry(self, name: str) -> ServedModel:
        """The model ``name``; a model of the repository that is not loaded (it failed, or
        was unloaded) is ``ModelNotReady`` saying so, as the repository index lists it."""
        entry = self._router.models.get(name)
        if entry is not None:
            return entry
        if self._source is not None:
            reason = self._source.failures.get(name)
            if reason is not None:
                raise ModelNotReady(f"model {name!r} failed to load: {reason}")
            if self._source.has_model(name):
                raise ModelNotReady(
                    f"model {name!r} is not loaded (POST /v2/repository/models/{name}/load, "
                    "or Engine.load, loads it)"
                )
        raise ModelNotFound(f"no model named {name!r} (models: {sorted(self._router.models)})")

    @property
    def repository(self) -> Path | None:
        """The repository folder this engine serves, if any."""
        return self._source.root if self._source is not None else None

    async def replace_version(
        self, name: str, version: int, register: Callable[[], None]
    ) -> ModelInfo:
        """Replaces version ``version`` of ``name`` by the one ``register()`` registers under
        the same number (``register(..., start=False)``, e.g. after its model.toml changed).

        The new one is started and warmed beside the serving one, then takes its place in one
        step (routing, aliases and the default follow it); the old one finishes what it
        accepted and is unloaded in the background. If the new one fails to register or warm
        up, the old one keeps serving: the error is raised, or the failed info returned.
        """
        entry = self._router.entry(name)
        entry.has_version(version)
        old = entry.versions.pop(version)
        try:
            register()  # adds the new version to entry.versions, which we take back out
        finally:
            new = entry.versions.get(version)
            entry.versions[version] = old
        if new is None or new is old:
            raise ValueError(f"register() did not register model {name!r} version {version}")
        await self._runtime.bring_up(entry, new, set_default=False)
        if new.state != "ready" or entry.versions.get(version) is not old:
            return new.info(sorted(entry.versions), entry.aliases, False)
        entry.versions[version] = new
        if entry.serving is old:
            entry.serving = new  # one assignment on the loop thread: old or new, never neither
        self._runtime.spawn(self._runtime.retire(entry, old, 60.0))
        return entry.info(new)

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
        v = self._entry(name).shown(version)
        s: dict[str, Any] = v.sched.stats()
        s["model"] = name
        s["version"] = v.version
        s["state"] = v.state
        return s

    def model_info(self, name: str, version: int | str | None = None) -> ModelInfo:
        """Metadata and state of a model version (the default one when ``version`` is None)."""
        entry = self._entry(name)
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
