"""The on-disk model repository: ``repo/<model>/model.toml`` beside numbered version folders.

One module per job: :mod:`.config` (the validated configuration, frozen dataclasses),
:mod:`.schema` (every model.toml table, validated with pydantic: the file's format is
documented there), :mod:`.paths` (names and path safety: nothing outside the root is read),
:mod:`.artifacts` (files present, sha256, bytes read as verified) and :mod:`.scan` (version
folders, one model, the whole repository). Warm-up data and model loading live in
:mod:`inferline.backends`.

Errors: :class:`RepositoryError` names the file, the field and what was expected, e.g.
``models/resnet/model.toml: batching.max_batch_size: expected a positive integer, got -3``.
"""

from __future__ import annotations

from .artifacts import read_artifact, sha256_file, verify_version
from .config import (
    BACKENDS,
    BatchingConfig,
    CacheConfig,
    ModelConfig,
    OnnxConfig,
    OutputChecks,
    PythonConfig,
    VersionArtifact,
    VersionPolicy,
    WarmupConfig,
)
from .errors import RepositoryError
from .paths import check_model_name, model_directory, resolve_inside
from .scan import CONFIG_FILE, ModelScan, RepositoryScan, load_model_config, load_repository

__all__ = [
    "BACKENDS",
    "CONFIG_FILE",
    "BatchingConfig",
    "CacheConfig",
    "ModelConfig",
    "ModelScan",
    "OnnxConfig",
    "OutputChecks",
    "PythonConfig",
    "RepositoryError",
    "RepositoryScan",
    "VersionArtifact",
    "VersionPolicy",
    "WarmupConfig",
    "check_model_name",
    "load_model_config",
    "load_repository",
    "model_directory",
    "read_artifact",
    "resolve_inside",
    "sha256_file",
    "verify_version",
]
