"""Serving a repository folder: initial load, ``load`` of one model, watch polling, the index.

``RepositorySync`` is the engine's :class:`~inferline.engine.engine.ModelSource` for
``Engine.from_repository``. It drives the engine through public methods only (``register``
with ``start=False``, ``start_version``, ``retire``, ``unload``, ``set_version_policy``,
``models``) and keeps what is repository-specific: which models and versions failed to load
and why, and the marks that stop a broken version from being retried until its files change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends import LoadedModel, PythonModel, load_version
from ..backends.process import RepositoryTarget
from ..errors import ModelError, ModelNotFound
from ..repository import (
    ModelConfig,
    RepositoryError,
    check_model_name,
    load_model_config,
    load_repository,
    model_directory,
)
from .versions import Batching, ModelInfo

if TYPE_CHECKING:  # the engine imports this module for Engine.from_repository
    from .engine import Engine

__all__ = ["RepositorySync", "loaded_rows"]

log = logging.getLogger("inferline")

_Fingerprint = tuple[float, ...]


def loaded_rows(infos: list[ModelInfo]) -> list[dict[str, Any]]:
    """Index rows (name, version, state, reason) of loaded versions."""
    return [
        {
            "name": i.name,
            "version": str(i.version),
            "state": i.state.upper(),
            "reason": i.reason or "",
        }
        for i in infos
    ]


def _unavailable(name: str, version: str, reason: str) -> dict[str, Any]:
    return {"name": name, "version": version, "state": "UNAVAILABLE", "reason": reason}


def _config_mark(path: Path) -> tuple[int, int]:
    # A model.toml's modification time (ns) and size: an edit changes one of them.
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _fingerprint(cfg: ModelConfig, number: int) -> _Fingerprint:
    # Modification times of model.toml, the version folder and its files: a failed version
    # is retried by the watcher only once one of them changes.
    marks = []
    for p in (cfg.config_file, cfg.directory / str(number)):
        try:
            marks.append(p.stat().st_mtime)
        except OSError:
            marks.append(-1.0)
    try:
        for child in (cfg.directory / str(number)).iterdir():
            marks.append(child.stat().st_mtime)
    except OSError:
        pass
    return tuple(marks)


class RepositorySync:
    """Keeps an engine in step with a repository folder. Used on the engine's event loop."""

    def __init__(
        self, root: Path, *, watch: bool, poll_interval: float, allow_code: bool = False
    ) -> None:
        if not root.is_dir():
            raise FileNotFoundError(f"model repository {str(root)!r} is not a folder")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self._root = root
        self._watch = watch
        self._poll_interval = float(poll_interval)
        self._allow_code = bool(allow_code)  # the operator's key to run model.py
        self._failures: dict[str, str] = {}  # model name -> why it could not load
        self._version_failures: dict[str, dict[int, str]] = {}  # of models that serve
        self._failed_marks: dict[tuple[str, int], _Fingerprint] = {}
        self._ours: set[str] = set()  # models this repository registered
        self._config_marks: dict[str, tuple[int, int]] = {}  # model.toml as last applied
        self._config_failures: dict[str, str] = {}  # a rejected edit of a loaded model
        self._logged_errors: dict[str, str] = {}  # what the watcher last said of a model
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def root(self) -> Path:
        return self._root

    @property
    def failures(self) -> Mapping[str, str]:
        return self._failures

    def has_model(self, name: str) -> bool:
        try:
            check_model_name(name)
            return (model_directory(self._root, name) / "model.toml").is_file()
        except (RepositoryError, OSError):
            return False

    async def start(self, engine: Engine) -> None:
        scan = await asyncio.get_running_loop().run_in_executor(None, self._scan)
        for name, err in scan.errors.items():
            self._failures[name] = str(err)
            log.error("model %s failed to load: %s", name, err)
        for name in sorted(scan.configs):
            await self._sync_model(engine, scan.configs[name], None)
        if self._watch:
            self._spawn(self._watch_loop(engine))

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _scan(self) -> Any:
        return load_repository(self._root, verify=False)

    async def load(self, engine: Engine, name: str, version: int | None) -> ModelInfo:
        try:
            check_model_name(name)
            directory = model_directory(self._root, name)
        except RepositoryError as exc:
            raise ModelNotFound(f"no model {name!r} in the repository: {exc}") from None
        if not (directory / "model.toml").is_file():
            raise ModelNotFound(f"no model {name!r} in the repository {str(self._root)!r}")
        loop = asyncio.get_running_loop()
        async with self._lock:
            try:
                cfg = await loop.run_in_executor(
                    None, lambda: load_model_config(directory, root=self._root, verify=False)
                )
            except RepositoryError as exc:
                self._failures[name] = str(exc)
                raise ModelError(f"model {name!r} failed to load: {exc}") from None
            if version is not None and version not in cfg.version_numbers:
                raise ModelNotFound(
                    f"model {name!r} has no version {version} in the repository "
                    f"(versions {list(cfg.version_numbers)})"
                )
            failures = await self._sync_model(engine, cfg, version)
        if failures:
            raise ModelError(f"model {name!r} failed to load: " + "; ".join(failures))
        return engine.model_info(name, version)

    async def _sync_model(self, engine: Engine, cfg: ModelConfig, only: int | None) -> list[str]:
        """Loads the versions ``cfg`` wants (or just ``only``), makes the default serve, and
        retires versions it no longer wants. Returns the failures."""
        loop = asyncio.get_running_loop()
        name = cfg.name
        wanted = set(cfg.versions_to_load) if only is None else {only}
        failures: list[str] = []
        for number in sorted(wanted):
            if self._versions(engine, name).get(number) in ("ready", "warming", "loading"):
                continue
            try:
                loaded = await loop.run_in_executor(
                    None,
                    functools.partial(load_version, cfg, number, allow_code=self._allow_code),
                )
                self._register(engine, cfg, loaded)
            except Exception as exc:  # a broken version fails alone; the rest keeps serving
                failures.append(f"version {number}: {exc}")
                self._note_failure(engine, cfg, number, str(exc))
                continue
            info = await engine.start_version(name, number, make_default=False)
            if info.state == "failed":
                failures.append(f"version {number}: {info.reason}")
                self._note_failure(engine, cfg, number, info.reason or "failed")
                await engine.retire(name, number)
            else:
                self._version_failures.get(name, {}).pop(number, None)
        if name not in engine.model_names():
            self._failures[name] = "; ".join(failures) or "no version could be loaded"
            return failures
        self._config_marks[name] = _config_mark(cfg.config_file)
        self._config_failures.pop(name, None)
        # Aliases and the default policy come from model.toml; moved aliases win at run time.
        policy = cfg.version_policy
        engine.set_version_policy(name, default=policy.default, aliases=policy.aliases)
        if only is None:
            for info in engine.models():
                if (
                    info.name == name
                    and info.version not in wanted
                    and info.state == "ready"
                    and not info.default
                ):
                    self._spawn(engine.retire(name, info.version))
        return failures

    def _register(self, engine: Engine, cfg: ModelConfig, loaded: LoadedModel) -> None:
        batching = Batching(**loaded.batching.as_kwargs(), **loaded.batching_extra)
        # Process instances load the version themselves, by path, through the same loaders.
        model: Callable[..., Any] | RepositoryTarget = loaded.fn
        if cfg.isolation == "process":
            model = RepositoryTarget(
                str(cfg.directory), str(cfg.root), loaded.version, self._allow_code
            )
        engine.register(
            cfg.name,
            model,  # the batch callable: in the engine's batch form, output checks applied
            inputs=list(loaded.inputs),
            outputs=list(loaded.outputs),
            batching=batching,
            instances=cfg.instances,
            isolation=cfg.isolation,
            version=loaded.version,
            warmup=list(loaded.warmup_sizes(batching.max_batch_size)),
            warmup_inputs=loaded.warmup_inputs,
            warmup_repeats=cfg.warmup.repeats,
            platform=loaded.platform,
            cache=(cfg.cache.max_entries, cfg.cache.max_bytes) if cfg.cache.enabled else None,
            notes=loaded.notes,
            pre=loaded.pre,
            start=False,
        )
        if isinstance(loaded.backend, PythonModel):
            # The engine holds ``loaded`` (its warm-up inputs) for as long as the version
            # lives; the module of its model.py leaves sys.modules with it. (The backend
            # itself may be held a while longer by the native core.)
            weakref.finalize(loaded, loaded.backend.unload)
        self._ours.add(cfg.name)
        self._failures.pop(cfg.name, None)

    def _note_failure(self, engine: Engine, cfg: ModelConfig, number: int, reason: str) -> None:
        log.error("model %s version %s failed to load: %s", cfg.name, number, reason)
        self._failed_marks[(cfg.name, number)] = _fingerprint(cfg, number)
        if not self._versions(engine, cfg.name):
            self._failures[cfg.name] = f"version {number}: {reason}"
        else:
            self._version_failures.setdefault(cfg.name, {})[number] = reason

    @staticmethod
    def _versions(engine: Engine, name: str) -> dict[int, str]:
        """The engine's versions of ``name`` with their states."""
        return {i.version: i.state for i in engine.models() if i.name == name}

    async def _watch_loop(self, engine: Engine) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._poll_interval)
            if engine.state != "ready":
                break
            try:
                scan = await loop.run_in_executor(None, self._scan)
            except Exception as exc:
                log.warning("repository poll failed: %s", exc)
                continue
            async with self._lock:
                await self._apply_scan(engine, scan)

    async def _apply_scan(self, engine: Engine, scan: Any) -> None:
        """One poll's changes, each logged with its outcome (at most once while unchanged)."""
        names = set(engine.model_names())
        for name, err in scan.errors.items():
            if name not in names:
                self._failures[name] = str(err)
                self._log_once(name, f"model {name} not loaded: {err}")
            else:  # an edit that broke the model.toml of a loaded model
                self._config_failures[name] = f"model.toml edit rejected: {err}"
                self._log_once(
                    name, f"model {name}: model.toml edit rejected, the loaded config serves: {err}"
                )
        for name, cfg in sorted(scan.configs.items()):
            have = set(self._versions(engine, name))
            fresh = {
                n
                for n in set(cfg.versions_to_load) - have
                if self._failed_marks.get((name, n)) != _fingerprint(cfg, n)
            }
            stale = have - set(cfg.versions_to_load)
            moved = name in names and engine.default_policy(name) != cfg.version_policy.default
            edited = name in names and self._config_marks.get(name) != _config_mark(cfg.config_file)
            if edited:
                await self._reload_config(engine, cfg)
            if fresh or stale or moved:
                what = "added" if name not in names else "changed"
                log.info(
                    "repository: model %s %s (versions to load %s, to unload %s)",
                    name,
                    what,
                    sorted(fresh),
                    sorted(stale),
                )
                try:
                    failures = await self._sync_model(engine, cfg, None)
                except Exception:
                    log.exception("model %s: repository sync failed", name)
                    continue
                outcome = "failed: " + "; ".join(failures) if failures else "done"
                self._log_once(name, f"model {name}: repository change {outcome}", bool(failures))
            elif name not in names and name in self._failures and not fresh:
                self._log_once(name, f"model {name} not loaded: {self._failures[name]}")
        for name in names - set(scan.models):
            if name in self._ours:
                self._ours.discard(name)
                self._config_marks.pop(name, None)
                log.info("repository: model %s removed; unloading it", name)
                await engine.unload(name)

    async def _reload_config(self, engine: Engine, cfg: ModelConfig) -> None:
        """A changed model.toml of a loaded model: each loaded version it still wants is
        rebuilt with it, warmed beside the serving one and swapped in; a version that fails
        leaves the old one serving, the failure logged and shown in the index."""
        name = cfg.name
        self._config_marks[name] = _config_mark(cfg.config_file)
        loop = asyncio.get_running_loop()
        failures: list[str] = []
        for number, state in sorted(self._versions(engine, name).items()):
            if state != "ready" or number not in cfg.versions_to_load:
                continue
            try:
                loaded = await loop.run_in_executor(
                    None,
                    functools.partial(load_version, cfg, number, allow_code=self._allow_code),
                )
                info = await engine.replace_version(
                    name, number, functools.partial(self._register, engine, cfg, loaded)
                )
            except Exception as exc:  # the old version keeps serving
                failures.append(f"version {number}: {exc}")
                continue
            if info.state != "ready":
                failures.append(f"version {number}: {info.reason}")
        if failures:
            self._config_failures[name] = "model.toml edit rejected: " + "; ".join(failures)
            log.error(
                "model %s: model.toml edit rejected, the loaded config serves: %s",
                name,
                "; ".join(failures),
            )
        else:
            self._config_failures.pop(name, None)
            self._logged_errors.pop(name, None)
            log.info("model %s: model.toml change applied", name)

    def _log_once(self, name: str, message: str, error: bool = True) -> None:
        """Logs ``message`` unless it is what was last logged of ``name`` (a broken file is
        reported when it appears or changes, not at every poll)."""
        if self._logged_errors.get(name) == message:
            return
        self._logged_errors[name] = message
        log.log(logging.ERROR if error else logging.INFO, "repository: %s", message)

    def index(self, engine: Engine) -> list[dict[str, Any]]:
        names = set(engine.model_names()) | set(self._failures)
        try:
            names |= set(self._scan().models)
        except Exception as exc:  # the index still lists what is loaded
            log.warning("repository scan failed: %s", exc)
        infos = engine.models()
        out: list[dict[str, Any]] = []
        for name in sorted(names):
            rows = loaded_rows([i for i in infos if i.name == name])
            failed = self._version_failures.get(name, {})
            if not rows and not failed:
                out.append(_unavailable(name, "", self._failures.get(name) or "not loaded"))
                continue
            have = {r["version"] for r in rows}
            rejected = self._config_failures.get(name)
            if rejected:
                rows = [{**r, "reason": r["reason"] or rejected} for r in rows]
            out += rows
            out += [
                _unavailable(name, str(n), reason)
                for n, reason in sorted(failed.items())
                if str(n) not in have
            ]
        return out
