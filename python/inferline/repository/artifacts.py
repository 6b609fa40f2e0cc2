"""Version folders' files: presence, regular files, sha256 digests, bytes read as verified."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from .config import ModelConfig, VersionArtifact
from .errors import RepositoryError
from .paths import check_relative, real_path, resolve_inside

__all__ = ["read_artifact", "sha256_file", "verify_version"]


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory for any file size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def verify_version(config: ModelConfig, version: int) -> VersionArtifact:
    """Check one version folder before it is loaded, and return it.

    The backend's main file (and the warm-up sample, if any) must exist as regular files;
    every file ``[artifacts] sha256`` lists for the version must exist and match (streamed,
    constant memory); no symlink in the folder may lead outside the repository (the ONNX
    runtime may read external-data files from it). RepositoryError names the failing file.
    """
    va = config.version(version)
    root = config.root
    resolve_inside(root, va.directory)
    real_root = Path(root).resolve()
    for dirpath, dirnames, filenames in os.walk(va.directory, followlinks=False):
        for entry in (*dirnames, *filenames):
            p = Path(dirpath) / entry
            if p.is_symlink():
                real = real_path(p)
                if not real.is_relative_to(real_root):
                    raise RepositoryError(
                        p,
                        None,
                        f"is a symlink to {real}, outside the repository {real_root}; refused",
                    )
    required: list[tuple[Path, str]] = []
    if va.artifact is not None:
        required.append((va.artifact, f"the {config.backend} backend's model file"))
    if config.warmup.sample:
        required.append((va.directory / config.warmup.sample, "the warm-up sample"))
    for rel in va.sha256:
        required.append((va.directory / rel, "listed in [artifacts] sha256"))
    for path, why in required:
        if not path.exists():
            raise RepositoryError(path, None, f"missing ({why})")
        real = resolve_inside(root, path)
        if not real.is_file():
            raise RepositoryError(path, None, f"expected a file ({why})")
    for rel, expected in va.sha256.items():
        path = va.directory / rel
        try:
            actual = sha256_file(resolve_inside(root, path))
        except OSError as e:
            raise RepositoryError(path, None, f"cannot be read: {e.strerror or e}") from None
        if actual != expected:
            raise RepositoryError(
                path,
                None,
                f"sha256 mismatch: expected {expected} ([artifacts] in "
                f"{config.config_file}), got {actual}; refusing to load version {version}",
            )
    return va


def read_artifact(config: ModelConfig, version: int, rel: str | None = None) -> bytes:
    """Read a file of a version folder (default: the backend's main file) into memory.

    The path is resolved inside the repository, and when ``[artifacts] sha256`` lists it,
    the digest is checked on the very bytes returned, so what is loaded is what was verified.
    """
    va = config.version(version)
    if rel is None:
        if va.artifact is None:
            raise RepositoryError(va.directory, None, "this model has no artifact file")
        rel = str(PurePosixPath(*va.artifact.relative_to(va.directory).parts))
    rel = check_relative(rel, va.directory, None)
    path = va.directory / rel
    if not path.exists():
        raise RepositoryError(path, None, "missing")
    real = resolve_inside(config.root, path)
    try:
        data = real.read_bytes()
    except OSError as e:
        raise RepositoryError(path, None, f"cannot be read: {e.strerror or e}") from None
    expected = va.sha256.get(rel)
    if expected is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise RepositoryError(
                path,
                None,
                f"sha256 mismatch: expected {expected}, got {actual}; refusing "
                f"to load version {version}",
            )
    return data
