"""Path safety: model names, relative artifact paths, and nothing read outside the root.

Model names must match ``[A-Za-z0-9_.-]+`` and not start with '.'; artifact paths must be
relative, without ``..``; every path is resolved and refused when it (through a symlink or
otherwise) lands outside the root. This guards against mistakes and hostile repository
content, not against someone swapping files while they are being read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from .errors import RepositoryError

__all__ = [
    "VERSION_RE",
    "check_model_name",
    "check_relative",
    "model_directory",
    "real_path",
    "relative_path_problem",
    "resolve_inside",
]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# A version folder's name: a positive integer without leading zeros.
VERSION_RE = re.compile(r"[1-9][0-9]*")


def check_model_name(name: object, *, where: str | os.PathLike[str] = "<repository>") -> str:
    """Return ``name`` if it is a valid model name, else raise RepositoryError.

    Valid: ``[A-Za-z0-9_.-]+``, not starting with '.' (so never ``..`` or a hidden folder).
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("."):
        raise RepositoryError(
            where,
            "name",
            f"expected a model name of letters, digits, '_', '.' and '-' not starting with "
            f"'.', got {name!r}",
        )
    return name


def resolve_inside(
    root: str | os.PathLike[str], path: str | os.PathLike[str], *, field: str | None = None
) -> Path:
    """Resolve ``path`` (following symlinks) and return it if it lies inside ``root``.

    RepositoryError names ``path`` when it resolves outside the resolved root, which is how a
    symlink pointing out of the repository is refused.
    """
    real_root = real_path(Path(root), field)
    real = real_path(Path(path), field)
    if real != real_root and not real.is_relative_to(real_root):
        how = "is a symlink that resolves" if _has_symlink(Path(root), Path(path)) else "resolves"
        raise RepositoryError(
            path, field, f"{how} to {real}, outside the repository {real_root}; refused"
        )
    return real


def real_path(path: Path, field: str | None = None) -> Path:
    """``path.resolve()``, with a symlink loop reported as a RepositoryError."""
    try:
        try:  # strict: from Python 3.13 a non-strict resolve() returns a symlink loop unresolved
            return path.resolve(strict=True)
        except FileNotFoundError:  # as far as it exists; the caller reports what is missing
            return path.resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: symlink loop before Python 3.13
        raise RepositoryError(path, field, f"cannot be resolved: {e}") from None


def _has_symlink(root: Path, path: Path) -> bool:
    try:
        rel = path.relative_to(root)
    except ValueError:
        return path.is_symlink()
    p = root
    for part in rel.parts:
        p = p / part
        if p.is_symlink():
            return True
    return False


def relative_path_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a relative file path inside a folder, or ``None``.

    Refused: anything but a non-empty string, an absolute path, a drive, a backslash, '..'.
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        return f"expected a relative file path, got {value!r}"
    if "\\" in value or PureWindowsPath(value).drive or PurePosixPath(value).is_absolute():
        return f"expected a relative path with '/' separators, got {value!r}"
    parts = PurePosixPath(value).parts
    if ".." in parts:
        return f"'..' is not allowed in paths, got {value!r}"
    if not parts or parts == (".",):
        return f"expected a file path, got {value!r}"
    return None


def check_relative(value: object, file: str | os.PathLike[str], field: str | None) -> str:
    """``value`` normalised as a relative POSIX path; RepositoryError if it is not one."""
    problem = relative_path_problem(value)
    if problem is not None:
        raise RepositoryError(file, field, problem)
    return str(PurePosixPath(str(value)))


def model_directory(root: str | os.PathLike[str], name: str) -> Path:
    """The folder of model ``name`` in repository ``root``, after checking the name and that
    the folder (a symlink included) stays inside the root. Use it for any name that comes
    from outside (an API call, an HTTP path)."""
    check_model_name(name, where=root)
    directory = Path(root) / name
    resolve_inside(root, directory)
    return directory
