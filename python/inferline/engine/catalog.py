"""What an engine serves, as administrators see it: aliases, default versions, introspection.

``ModelCatalog`` is the part of :class:`~inferline.engine.Engine` that reads and re-points the
routing table (``Router``) without touching the runtime: moving an alias or the default version
is one assignment on the loop thread, and the figures are read live from the native
schedulers. Registration, lifecycle and inference stay on the engine itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .versions import ModelInfo, Router, VersionView

__all__ = ["ModelCatalog"]


class ModelCatalog:
    """The models an engine holds: their aliases and default version, and what they show.

    Used on the engine's event loop, except ``live_versions`` (safe from a scrape thread).
    """

    def __init__(self) -> None:
        self._router = Router()

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
