"""The on-disk model repository: ``repo/<model>/model.toml`` beside numbered version folders.

Layout::

    repo/
      classifier/
        model.toml          # this module's schema, below
        1/model.onnx        # one folder per version: positive integers, no leading zeros
        2/model.onnx
      scaler/
        model.toml
        1/model.py          # runs code: loaded only with [python] allow_code = true

Schema of ``model.toml`` (every key but ``backend`` is optional; an unknown key is an error, so
a typo never silently falls back to a default)::

    backend = "onnx"                  # "onnx" | "python" | "native"
    instances = 1                     # worker threads serving each version (default 1)

    [[inputs]]                        # per item, without the batch dimension. Required for the
    name = "x"                        # python and native backends; for onnx they are read from
    datatype = "FP32"                 # the graph and, when given here, checked against it
    shape = [16]
    finite = true                     # refuse NaN/Inf in this input (default false)

    [[outputs]]
    name = "probs"
    datatype = "FP32"
    shape = [4]
    finite = true                     # report NaN/Inf in this output as ModelError
    probabilities = true              # rows must sum to 1 (see [output_checks])

    [batching]                        # a key left out takes the engine's default
    max_batch_size = 32               # at most 65536
    max_queue_delay_ms = 2.0
    max_queue_size = 1024             # requests queued, all priority lanes together
    priority_levels = 2               # lanes, 0 served first (at most 16)
    idle_spin_us = 0.0                # an idle worker spins this long before sleeping
    max_queue_bytes = 67108864        # bytes of queued input
    max_item_bytes = 1048576          # bytes of one request's input

    [warmup]
    batch_sizes = [1, 8, 32]          # default: powers of two up to max_batch_size, and it
    inputs = "zeros"                  # "zeros" | "random" | "sample"
    sample = "warmup.npz"             # with inputs = "sample": a .npz in each version folder
    seed = 0                          # with inputs = "random"
    repeats = 1                       # calls per batch size

    [versions]
    default = "latest"                # or a version number
    aliases = { stable = 1, canary = 2 }
    load = "all"                      # "all" or a list of numbers; left out: the default
                                      # version and every alias target

    [artifacts]
    sha256 = { "1/model.onnx" = "9f86d0...", "2/model.onnx" = "..." }

    [onnx]                            # only with backend = "onnx"
    file = "model.onnx"               # the graph in each version folder (default model.onnx)
    intra_op_threads = 1              # default: onnxruntime's (one per physical core)
    inter_op_threads = 1

    [python]                          # only with backend = "python"
    allow_code = true                 # required: model.py is code and runs in the server
    file = "model.py"
    entry = "predict"                 # the batch function in model.py

    [native]                          # only with backend = "native"; carried through as a dict
    weights = "weights.safetensors"   # checked like any artifact; everything else is the
    ops = [...]                       # native backend's business

    [cache]                           # an LRU of results, keyed by model, version and input
    enabled = true                    # (default true once the table is present)
    max_entries = 1024
    max_bytes = 67108864

    [output_checks]
    finite = true                     # every output must be finite
    probabilities = ["probs"]         # same as probabilities = true on those outputs
    probabilities_tolerance = 1e-3

Safety: nothing outside the repository root is ever read. Model names must match
``[A-Za-z0-9_.-]+`` and not start with '.'; artifact paths must be relative, without ``..``;
every path is resolved and refused when it (through a symlink or otherwise) lands outside the
root, and so is any symlink inside a version folder. This guards against mistakes and hostile
repository content, not against someone swapping files while they are being read.

Errors: :class:`RepositoryError` names the file, the field and what was expected, e.g.
``models/resnet/model.toml: batching.max_batch_size: expected a positive integer, got -3``.
:func:`load_repository` never raises for one bad model: each model's entry holds either its
config or its error, so the others still load.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from .errors import InferlineError
from .types import DATATYPES, TensorSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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
    "make_warmup_inputs",
    "model_directory",
    "read_artifact",
    "resolve_inside",
    "sha256_file",
    "verify_version",
]

CONFIG_FILE = "model.toml"
BACKENDS = ("onnx", "python", "native")
Backend = Literal["onnx", "python", "native"]

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_ALIAS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_VERSION_RE = re.compile(r"[1-9][0-9]*")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FLOAT_TYPES = ("FP16", "FP32", "FP64", "BF16")
MAX_BATCH_SIZE, MAX_QUEUE_SIZE, MAX_PRIORITY_LEVELS = 1 << 16, 1 << 24, 16


class RepositoryError(InferlineError, ValueError):
    """A model repository entry is invalid: names the file, the field and what was expected.

    ``file`` is the path as built from the root the caller gave; ``field`` is a dotted TOML
    path (``batching.max_batch_size``, ``inputs[0].shape``) or ``None`` when the whole file is
    at fault (missing, unreadable, wrong checksum).
    """

    def __init__(self, file: str | os.PathLike[str], field: str | None, message: str) -> None:
        self.file = os.fspath(file)
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.field:
            return f"{self.file}: {self.field}: {self.message}"
        return f"{self.file}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable despite the 3-arg __init__
        return (type(self), (self.file, self.field, self.message))


# --------------------------------------------------------------------------------------------
# Config dataclasses


@dataclass(frozen=True)
class BatchingConfig:
    """``[batching]``: ``None`` means the key was left out and the engine's default applies."""

    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    priority_levels: int | None = None
    idle_spin_us: float | None = None
    max_queue_bytes: int | None = None
    max_item_bytes: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """The keys that were given, ready for ``inferline.Batching(**kwargs)``."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class WarmupConfig:
    """``[warmup]``: which batch sizes to run before a version is ready, and on what input."""

    batch_sizes: tuple[int, ...] | None = None
    inputs: Literal["zeros", "random", "sample"] = "zeros"
    sample: str | None = None
    seed: int = 0
    repeats: int = 1

    def sizes_for(self, max_batch_size: int) -> tuple[int, ...]:
        """Batch sizes to warm up for a version whose effective max batch size is given.

        The configured sizes, capped at ``max_batch_size`` (an ONNX graph with a fixed batch
        dimension forces 1) and deduplicated; by default the powers of two below
        ``max_batch_size`` and ``max_batch_size`` itself.
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        if self.batch_sizes is None:
            sizes = {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
            sizes.add(max_batch_size)
        else:
            sizes = {min(b, max_batch_size) for b in self.batch_sizes}
        return tuple(sorted(sizes))


@dataclass(frozen=True)
class VersionPolicy:
    """``[versions]``: the default version, the initial aliases and which versions to load."""

    default: int | Literal["latest"] = "latest"
    aliases: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    load: tuple[int, ...] | Literal["all"] | None = None


@dataclass(frozen=True)
class OnnxConfig:
    """``[onnx]``: the graph's file name in each version folder and the session's threads."""

    file: str = "model.onnx"
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None


@dataclass(frozen=True)
class PythonConfig:
    """``[python]``: ``model.py`` runs code in the server, so it loads only with allow_code."""

    allow_code: bool = False
    file: str = "model.py"
    entry: str = "predict"


@dataclass(frozen=True)
class CacheConfig:
    """``[cache]``: an LRU of results by (model, version, input bytes); off unless present."""

    enabled: bool = False
    max_entries: int = 1024
    max_bytes: int = 64 << 20


@dataclass(frozen=True)
class OutputChecks:
    """``[output_checks]``: sanity checks on every batch's outputs (violations: ModelError).

    ``finite`` applies to every output (an output's own ``finite = true`` applies to it
    alone); ``probabilities`` names the outputs whose rows (last axis) must sum to 1 within
    ``probabilities_tolerance``.
    """

    finite: bool = False
    probabilities: tuple[str, ...] = ()
    probabilities_tolerance: float = 1e-3

    @property
    def enabled(self) -> bool:
        return self.finite or bool(self.probabilities)


@dataclass(frozen=True)
class VersionArtifact:
    """One numbered version folder.

    ``directory`` and ``artifact`` are paths as built from the repository root the caller gave
    (not resolved); ``artifact`` is the backend's main file (``model.onnx``, ``model.py``, the
    native weights) or ``None`` for a native model without weights. ``sha256`` maps paths
    relative to ``directory`` to the digests ``[artifacts]`` expects.
    """

    version: int
    directory: Path
    artifact: Path | None
    sha256: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ModelConfig:
    """One model's ``model.toml``, validated, with its version folders.

    ``inputs``/``outputs`` may be empty for ``backend = "onnx"`` (read from the graph then).
    ``native`` is the raw ``[native]`` table (a fresh dict) for the native backend.
    """

    name: str
    root: Path
    directory: Path
    config_file: Path
    backend: Backend
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig
    instances: int
    warmup: WarmupConfig
    version_policy: VersionPolicy
    versions: tuple[VersionArtifact, ...]
    onnx: OnnxConfig | None = None
    python: PythonConfig | None = None
    native: dict[str, Any] | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    output_checks: OutputChecks = field(default_factory=OutputChecks)

    @property
    def version_numbers(self) -> tuple[int, ...]:
        return tuple(v.version for v in self.versions)

    @property
    def default_version(self) -> int:
        """The version served when a request names none (``"latest"``: the highest)."""
        d = self.version_policy.default
        return max(self.version_numbers) if d == "latest" else d

    @property
    def versions_to_load(self) -> tuple[int, ...]:
        """Versions the engine should load: per ``versions.load``, plus default and aliases."""
        load = self.version_policy.load
        wanted = set(self.version_numbers) if load == "all" else set(load or ())
        wanted.add(self.default_version)
        wanted.update(self.version_policy.aliases.values())
        return tuple(sorted(wanted))

    def version(self, version: int) -> VersionArtifact:
        """The folder of one version; RepositoryError if there is none."""
        for v in self.versions:
            if v.version == version:
                return v
        raise RepositoryError(
            self.directory,
            None,
            f"no version folder {version}/; versions found: "
            f"{', '.join(map(str, self.version_numbers)) or 'none'}",
        )

    def resolve_version(self, ref: int | str | None) -> int:
        """Version number for ``None`` (default), ``"latest"``, an alias or a number."""
        if ref is None:
            return self.default_version
        if isinstance(ref, str):
            if ref == "latest":
                return max(self.version_numbers)
            if ref in self.version_policy.aliases:
                return self.version_policy.aliases[ref]
            if _VERSION_RE.fullmatch(ref):
                ref = int(ref)
            else:
                raise RepositoryError(
                    self.config_file,
                    "versions.aliases",
                    f"no alias {ref!r}; aliases: "
                    f"{', '.join(self.version_policy.aliases) or 'none'}",
                )
        return self.version(int(ref)).version


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


# --------------------------------------------------------------------------------------------
# Paths


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
    real_root = _real(Path(root), field)
    real = _real(Path(path), field)
    if real != real_root and not real.is_relative_to(real_root):
        how = "is a symlink that resolves" if _has_symlink(Path(root), Path(path)) else "resolves"
        raise RepositoryError(
            path, field, f"{how} to {real}, outside the repository {real_root}; refused"
        )
    return real


def _real(path: Path, field: str | None = None) -> Path:
    """``path.resolve()``, with a symlink loop reported as a RepositoryError."""
    try:
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


def _check_relative(value: object, file: Path, field: str | None) -> str:
    """A relative path inside a folder: no absolute path, no '..', no backslash."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise RepositoryError(file, field, f"expected a relative file path, got {value!r}")
    if "\\" in value or PureWindowsPath(value).drive or PurePosixPath(value).is_absolute():
        raise RepositoryError(
            file, field, f"expected a relative path with '/' separators, got {value!r}"
        )
    parts = PurePosixPath(value).parts
    if ".." in parts:
        raise RepositoryError(file, field, f"'..' is not allowed in paths, got {value!r}")
    if not parts or parts == (".",):
        raise RepositoryError(file, field, f"expected a file path, got {value!r}")
    return str(PurePosixPath(value))


def model_directory(root: str | os.PathLike[str], name: str) -> Path:
    """The folder of model ``name`` in repository ``root``, after checking the name and that
    the folder (a symlink included) stays inside the root. Use it for any name that comes
    from outside (an API call, an HTTP path)."""
    check_model_name(name, where=root)
    directory = Path(root) / name
    resolve_inside(root, directory)
    return directory


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (constant memory for any file size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# TOML validation helpers


_MISSING: Any = object()


class _Table:
    """A TOML table being validated: typed getters, then ``done()`` refuses unknown keys."""

    def __init__(self, data: object, prefix: str, file: Path) -> None:
        self.file = file
        self.prefix = prefix
        if not isinstance(data, dict):
            raise RepositoryError(file, prefix or None, f"expected a table, got {data!r}")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> RepositoryError:
        return RepositoryError(self.file, self.path(key), message)

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key, _MISSING)

    def has(self, key: str) -> bool:
        return key in self.data

    def get_int(
        self, key: str, default: Any, *, minimum: int = 1, maximum: int | None = None
    ) -> Any:
        v = self.raw(key)
        if v is _MISSING:
            return default
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise self.error(key, f"expected {what}, got {v!r}")
        if maximum is not None and v > maximum:
            raise self.error(key, f"expected at most {maximum}, got {v!r}")
        return v

    def get_number(self, key: str, default: Any, *, positive: bool = False, unit: str = "") -> Any:
        v = self.raw(key)
        if v is _MISSING:
            return default
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < 0 or (positive and v == 0):
            what = "a positive number" if positive else "a non-negative number"
            raise self.error(key, f"expected {what}{unit}, got {v!r}")
        return float(v)

    def get_bool(self, key: str, default: Any) -> Any:
        v = self.raw(key)
        if v is _MISSING:
            return default
        if not isinstance(v, bool):
            raise self.error(key, f"expected true or false, got {v!r}")
        return v

    def get_str(self, key: str, default: Any) -> Any:
        v = self.raw(key)
        if v is _MISSING:
            return default
        if not isinstance(v, str) or not v:
            raise self.error(key, f"expected a non-empty string, got {v!r}")
        return v

    def get_choice(self, key: str, choices: Sequence[str], default: Any) -> Any:
        v = self.raw(key)
        if v is _MISSING:
            if default is _MISSING:
                raise self.error(key, f"required; expected one of {_quoted(choices)}")
            return default
        if v not in choices:
            raise self.error(key, f"expected one of {_quoted(choices)}, got {v!r}")
        return v

    def get_table(self, key: str) -> _Table | None:
        v = self.raw(key)
        if v is _MISSING:
            return None
        return _Table(v, self.path(key), self.file)

    def done(self, known: Iterable[str] | None = None) -> None:
        allowed = set(known) if known is not None else self.seen
        for key in self.data:
            if key not in allowed:
                hint = difflib.get_close_matches(key, sorted(allowed), n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.error(
                    key, f"unknown key{did}; expected one of {_quoted(sorted(allowed))}"
                )


def _quoted(items: Iterable[str]) -> str:
    return ", ".join(repr(i) if isinstance(i, str) else str(i) for i in items)


# --------------------------------------------------------------------------------------------
# Parsing model.toml


_TOP_KEYS = (
    "backend",
    "instances",
    "inputs",
    "outputs",
    "batching",
    "warmup",
    "versions",
    "artifacts",
    "onnx",
    "python",
    "native",
    "cache",
    "output_checks",
)


def _parse_specs(
    top: _Table, key: str, *, outputs: bool
) -> tuple[tuple[TensorSpec, ...], tuple[str, ...]]:
    v = top.raw(key)
    if v is _MISSING:
        return (), ()
    if not isinstance(v, list) or not all(isinstance(e, dict) for e in v):
        raise top.error(key, f"expected an array of tables ([[{key}]]), got {v!r}")
    specs: list[TensorSpec] = []
    probabilities: list[str] = []
    names: set[str] = set()
    for i, entry in enumerate(v):
        t = _Table(entry, f"{key}[{i}]", top.file)
        name = t.raw("name")
        if name is _MISSING:
            raise t.error("name", "required; expected the tensor's name")
        if not isinstance(name, str) or not name:
            raise t.error("name", f"expected a non-empty string, got {name!r}")
        if name in names:
            raise t.error("name", f"duplicate name {name!r}; each {key[:-1]} needs its own")
        names.add(name)
        dt = t.raw("datatype")
        if dt is _MISSING:
            raise t.error("datatype", f"required; expected one of {', '.join(DATATYPES)}")
        if not isinstance(dt, str) or dt.upper() not in DATATYPES:
            raise t.error("datatype", f"expected one of {', '.join(DATATYPES)}, got {dt!r}")
        shape = t.raw("shape")
        if shape is _MISSING:
            raise t.error(
                "shape",
                "required; expected a list of positive integers (per item, [] for one scalar)",
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        ):
            hint = ""
            if isinstance(shape, list) and shape and shape[0] in (-1, 0, "batch"):
                hint = " (leave out the batch dimension: shapes are per item)"
            raise t.error("shape", f"expected a list of positive integers{hint}, got {shape!r}")
        finite = t.get_bool("finite", False)
        if outputs and t.get_bool("probabilities", False):
            if dt.upper() not in _FLOAT_TYPES:
                raise t.error(
                    "probabilities", f"needs a floating-point datatype, but datatype is {dt!r}"
                )
            probabilities.append(name)
        t.done(("name", "datatype", "shape", "finite", *(("probabilities",) if outputs else ())))
        specs.append(TensorSpec(name, dt.upper(), tuple(shape), finite=finite))
    return tuple(specs), tuple(probabilities)


def _parse_batching(top: _Table, inputs: Sequence[TensorSpec]) -> BatchingConfig:
    t = top.get_table("batching")
    if t is None:
        return BatchingConfig()
    # The upper bounds are the engine's (inferline.Batching), checked here so that the error
    # names model.toml and the field.
    cfg = BatchingConfig(
        max_batch_size=t.get_int("max_batch_size", None, maximum=MAX_BATCH_SIZE),
        max_queue_delay_ms=t.get_number("max_queue_delay_ms", None, unit=" of milliseconds"),
        max_queue_size=t.get_int("max_queue_size", None, maximum=MAX_QUEUE_SIZE),
        priority_levels=t.get_int("priority_levels", None, maximum=MAX_PRIORITY_LEVELS),
        idle_spin_us=t.get_number("idle_spin_us", None, unit=" of microseconds"),
        max_queue_bytes=t.get_int("max_queue_bytes", None),
        max_item_bytes=t.get_int("max_item_bytes", None),
    )
    t.done()
    if cfg.max_item_bytes and cfg.max_queue_bytes and cfg.max_item_bytes > cfg.max_queue_bytes:
        raise t.error(
            "max_item_bytes",
            f"expected at most max_queue_bytes ({cfg.max_queue_bytes}), got {cfg.max_item_bytes}",
        )
    if cfg.max_item_bytes and inputs and all(s.datatype != "BYTES" for s in inputs):
        need = sum(s.item_nbytes for s in inputs)
        if need > cfg.max_item_bytes:
            raise t.error(
                "max_item_bytes",
                f"one item of the declared inputs takes {need} bytes, more than "
                f"max_item_bytes = {cfg.max_item_bytes}: every request would be refused",
            )
    return cfg


def _parse_warmup(top: _Table, batching: BatchingConfig) -> WarmupConfig:
    t = top.get_table("warmup")
    if t is None:
        return WarmupConfig()
    sizes = t.raw("batch_sizes")
    if sizes is not _MISSING:
        if not isinstance(sizes, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes
        ):
            raise t.error("batch_sizes", f"expected a list of positive integers, got {sizes!r}")
        mbs = batching.max_batch_size
        if mbs is not None and any(b > mbs for b in sizes):
            raise t.error(
                "batch_sizes",
                f"expected sizes up to batching.max_batch_size ({mbs}), got {sizes!r}",
            )
        sizes = tuple(sorted(set(sizes)))
    else:
        sizes = None
    inputs = t.get_choice("inputs", ("zeros", "random", "sample"), "zeros")
    sample = t.raw("sample")
    if sample is _MISSING:
        sample = None
        if inputs == "sample":
            raise t.error(
                "sample",
                'required with inputs = "sample"; expected a .npz file name in each version folder',
            )
    else:
        sample = _check_relative(sample, t.file, t.path("sample"))
        if not sample.endswith(".npz"):
            raise t.error("sample", f"expected a .npz file, got {sample!r}")
        if inputs != "sample":
            raise t.error("sample", f'only used with inputs = "sample", but inputs = {inputs!r}')
    seed = t.get_int("seed", 0, minimum=0)
    repeats = t.get_int("repeats", 1)
    t.done()
    return WarmupConfig(batch_sizes=sizes, inputs=inputs, sample=sample, seed=seed, repeats=repeats)


def _parse_version_policy(top: _Table, found: Sequence[int]) -> VersionPolicy:
    t = top.get_table("versions")
    if t is None:
        return VersionPolicy()
    listing = ", ".join(map(str, found))

    def existing(key: str, v: int) -> int:
        if v not in found:
            raise t.error(key, f"no version folder {v}/; versions found: {listing}")
        return v

    default = t.raw("default")
    if default is _MISSING or default == "latest":
        default = "latest"
    elif isinstance(default, int) and not isinstance(default, bool) and default >= 1:
        existing("default", default)
    else:
        raise t.error("default", f'expected "latest" or a version number, got {default!r}')

    aliases: dict[str, int] = {}
    av = t.raw("aliases")
    if av is not _MISSING:
        if not isinstance(av, dict):
            raise t.error("aliases", f"expected a table of alias = version, got {av!r}")
        for name, v in av.items():
            key = f"aliases.{name}"
            if not _ALIAS_RE.fullmatch(name) or name == "latest":
                raise t.error(
                    key,
                    "expected an alias name that starts with a letter or '_' and is not "
                    f"'latest', got {name!r}",
                )
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise t.error(key, f"expected a version number, got {v!r}")
            aliases[name] = existing(key, v)

    load = t.raw("load")
    if load is _MISSING:
        load = None
    elif load == "all":
        pass
    elif isinstance(load, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in load
    ):
        load = tuple(sorted({existing("load", v) for v in load}))
    else:
        raise t.error("load", f'expected "all" or a list of version numbers, got {load!r}')
    t.done()
    return VersionPolicy(default=default, aliases=MappingProxyType(aliases), load=load)


def _parse_artifacts(top: _Table, found: Sequence[int]) -> dict[int, dict[str, str]]:
    """``[artifacts] sha256`` -> {version: {path in the version folder: digest}}."""
    t = top.get_table("artifacts")
    per_version: dict[int, dict[str, str]] = {}
    if t is None:
        return per_version
    sha = t.raw("sha256")
    t.done()
    if sha is _MISSING:
        return per_version
    if not isinstance(sha, dict):
        raise t.error(
            "sha256", f'expected a table of "<version>/<file>" = "<hex digest>", got {sha!r}'
        )
    for rel, digest in sha.items():
        key = f'sha256."{rel}"'
        rel_norm = _check_relative(rel, t.file, t.path(key))
        first, *rest = PurePosixPath(rel_norm).parts
        if not _VERSION_RE.fullmatch(first) or not rest:
            raise t.error(key, f'expected a path "<version>/<file>", got {rel!r}')
        if int(first) not in found:
            raise t.error(
                key, f"no version folder {first}/; versions found: {', '.join(map(str, found))}"
            )
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise t.error(key, f"expected 64 hexadecimal digits, got {digest!r}")
        per_version.setdefault(int(first), {})[str(PurePosixPath(*rest))] = digest.lower()
    return per_version


def _backend_table(top: _Table, backend: str, name: str) -> _Table | None:
    t = top.get_table(name)
    if t is not None and backend != name:
        raise RepositoryError(
            top.file, name, f"[{name}] is only for backend = {name!r}, but backend = {backend!r}"
        )
    return t


def _parse_onnx(top: _Table, backend: str) -> OnnxConfig | None:
    t = _backend_table(top, backend, "onnx")
    if backend != "onnx":
        return None
    if t is None:
        return OnnxConfig()
    file = t.raw("file")
    cfg = OnnxConfig(
        file="model.onnx" if file is _MISSING else _check_relative(file, t.file, t.path("file")),
        intra_op_threads=t.get_int("intra_op_threads", None),
        inter_op_threads=t.get_int("inter_op_threads", None),
    )
    t.done()
    return cfg


def _parse_python(top: _Table, backend: str) -> PythonConfig | None:
    t = _backend_table(top, backend, "python")
    if backend != "python":
        return None
    if t is None or not t.get_bool("allow_code", False):
        raise RepositoryError(
            top.file,
            "python.allow_code",
            "backend = 'python' runs the version folder's model.py inside the server; "
            "expected allow_code = true in [python] to opt in",
        )
    file = t.raw("file")
    file = "model.py" if file is _MISSING else _check_relative(file, t.file, t.path("file"))
    if not file.endswith(".py"):
        raise t.error("file", f"expected a .py file, got {file!r}")
    entry = t.get_str("entry", "predict")
    if not _IDENT_RE.fullmatch(entry):
        raise t.error("entry", f"expected a Python function name, got {entry!r}")
    t.done()
    return PythonConfig(allow_code=True, file=file, entry=entry)


def _parse_native(top: _Table, backend: str) -> dict[str, Any] | None:
    t = _backend_table(top, backend, "native")
    if backend != "native":
        return None
    if t is None:
        return {}
    if t.has("weights"):
        _check_relative(t.raw("weights"), t.file, t.path("weights"))
    if t.has("ops") and not isinstance(t.raw("ops"), list):
        raise t.error("ops", f"expected an array, got {t.raw('ops')!r}")
    raw: dict[str, Any] = _deep_copy(t.data)
    return raw


def _deep_copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _deep_copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_deep_copy(x) for x in v]
    return v


def _parse_cache(top: _Table) -> CacheConfig:
    t = top.get_table("cache")
    if t is None:
        return CacheConfig()
    cfg = CacheConfig(
        enabled=t.get_bool("enabled", True),
        max_entries=t.get_int("max_entries", CacheConfig.max_entries),
        max_bytes=t.get_int("max_bytes", CacheConfig.max_bytes),
    )
    t.done()
    return cfg


def _parse_output_checks(
    top: _Table, outputs: Sequence[TensorSpec], declared_probabilities: Sequence[str]
) -> OutputChecks:
    t = top.get_table("output_checks")
    probs = list(declared_probabilities)
    if t is None:
        return OutputChecks(probabilities=tuple(probs))
    finite = t.get_bool("finite", False)
    tol = t.get_number("probabilities_tolerance", 1e-3, positive=True)
    pv = t.raw("probabilities")
    if pv is not _MISSING:
        if not isinstance(pv, list) or not all(isinstance(n, str) and n for n in pv):
            raise t.error("probabilities", f"expected a list of output names, got {pv!r}")
        by_name = {s.name: s for s in outputs}
        for n in pv:
            if outputs and n not in by_name:
                raise t.error(
                    "probabilities",
                    f"no output named {n!r}; outputs: {_quoted(by_name)}",
                )
            if n in by_name and by_name[n].datatype not in _FLOAT_TYPES:
                raise t.error(
                    "probabilities",
                    f"output {n!r} has datatype {by_name[n].datatype}; expected a "
                    "floating-point output",
                )
            if n not in probs:
                probs.append(n)
    t.done()
    return OutputChecks(finite=finite, probabilities=tuple(probs), probabilities_tolerance=tol)


def _artifact_name(
    backend: str,
    onnx: OnnxConfig | None,
    python: PythonConfig | None,
    native: dict[str, Any] | None,
) -> str | None:
    if backend == "onnx":
        assert onnx is not None
        return onnx.file
    if backend == "python":
        assert python is not None
        return python.file
    weights = (native or {}).get("weights")
    return str(PurePosixPath(weights)) if weights else None


def _discover_versions(root: Path, directory: Path) -> list[int]:
    found: list[int] = []
    for entry in sorted(os.listdir(directory)):
        path = directory / entry
        if entry.isdigit() and path.is_dir():
            if not _VERSION_RE.fullmatch(entry):
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
    top = _Table(data, "", config_file)
    top.done(_TOP_KEYS)  # unknown top-level keys first: a misspelt table explains later errors
    backend = top.get_choice("backend", BACKENDS, _MISSING)
    inputs, _ = _parse_specs(top, "inputs", outputs=False)
    outputs, probabilities = _parse_specs(top, "outputs", outputs=True)
    if backend != "onnx" and (not inputs or not outputs):
        missing = "inputs" if not inputs else "outputs"
        raise RepositoryError(
            config_file,
            missing,
            f"required for backend = {backend!r}; expected [[{missing}]] "
            "tables with name, datatype and shape",
        )
    batching = _parse_batching(top, inputs)
    instances = top.get_int("instances", 1)
    warmup = _parse_warmup(top, batching)
    policy = _parse_version_policy(top, found)
    sha = _parse_artifacts(top, found)
    onnx = _parse_onnx(top, backend)
    python = _parse_python(top, backend)
    native = _parse_native(top, backend)
    cache = _parse_cache(top)
    checks = _parse_output_checks(top, outputs, probabilities)

    artifact = _artifact_name(backend, onnx, python, native)
    versions = tuple(
        VersionArtifact(
            version=v,
            directory=directory / str(v),
            artifact=(directory / str(v) / artifact) if artifact else None,
            sha256=MappingProxyType(dict(sha.get(v, {}))),
        )
        for v in found
    )
    if checks.finite:
        outputs = tuple(TensorSpec(s.name, s.datatype, s.shape, finite=True) for s in outputs)
    config = ModelConfig(
        name=name,
        root=root_path,
        directory=directory,
        config_file=config_file,
        backend=backend,
        inputs=inputs,
        outputs=outputs,
        batching=batching,
        instances=instances,
        warmup=warmup,
        version_policy=policy,
        versions=versions,
        onnx=onnx,
        python=python,
        native=native,
        cache=cache,
        output_checks=checks,
    )
    if verify:
        for v in config.versions_to_load:
            verify_version(config, v)
    return config


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
                real = _real(p)
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
    rel = _check_relative(rel, va.directory, None)
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
        except RepositoryError as e:
            models[entry] = ModelScan(name=entry, directory=directory, error=e)
        except OSError as e:  # unreadable folder, permissions: that model fails, not the scan
            err = RepositoryError(e.filename or directory, None, f"cannot be read: {e.strerror}")
            models[entry] = ModelScan(name=entry, directory=directory, error=err)
        else:
            models[entry] = ModelScan(name=entry, directory=directory, config=config)
    return RepositoryScan(root=root, models=MappingProxyType(models))


# --------------------------------------------------------------------------------------------
# Warm-up inputs


def make_warmup_inputs(
    warmup: WarmupConfig,
    inputs: Sequence[TensorSpec],
    batch_size: int,
    *,
    config: ModelConfig | None = None,
    version: int | None = None,
) -> list[np.ndarray]:
    """One warm-up batch: an array of ``[batch_size, *spec.shape]`` per input, in order.

    ``zeros``: zeros (empty bytes for BYTES); ``random``: seeded standard normal values for
    floats, small non-negative integers, random booleans; ``sample``: the rows of the version
    folder's .npz (one array per input name, either one item or ``[N, *shape]`` rows, cycled
    to fill the batch; read without pickle). ``config`` and ``version`` are needed for
    ``sample``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if warmup.inputs == "sample":
        if config is None or version is None or warmup.sample is None:
            raise ValueError('warm-up inputs = "sample" needs the model config and version')
        return _sample_batch(warmup.sample, inputs, batch_size, config, version)
    rng = np.random.default_rng(warmup.seed)
    out = []
    for spec in inputs:
        shape = (batch_size, *spec.shape)
        if spec.datatype == "BYTES":
            a = np.full(shape, b"", dtype=object)
        elif warmup.inputs == "zeros":
            a = np.zeros(shape, dtype=spec.dtype)
        elif spec.datatype == "BOOL":
            a = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif spec.datatype == "BF16":  # bit patterns: the upper half of float32 values
            f32 = rng.standard_normal(size=shape).astype(np.float32)
            a = (f32.view(np.uint32) >> 16).astype(np.uint16)
        elif spec.dtype.kind in "iu":
            a = rng.integers(0, 10, size=shape).astype(spec.dtype)
        else:
            a = rng.standard_normal(size=shape).astype(spec.dtype)
        out.append(a)
    return out


def _sample_batch(
    sample: str,
    inputs: Sequence[TensorSpec],
    batch_size: int,
    config: ModelConfig,
    version: int,
) -> list[np.ndarray]:
    va = config.version(version)
    path = va.directory / sample
    if not path.exists():
        raise RepositoryError(path, None, "missing (the warm-up sample)")
    real = resolve_inside(config.root, path)
    try:
        with np.load(real, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise RepositoryError(path, None, f"not a readable .npz file: {e}") from None
    out = []
    for spec in inputs:
        if spec.name not in arrays:
            raise RepositoryError(
                path,
                spec.name,
                f"missing; the sample needs one array per input "
                f"({_quoted(s.name for s in inputs)}), found {_quoted(arrays)}",
            )
        a = arrays[spec.name]
        if a.shape == spec.shape:
            a = a[None]
        if a.shape[1:] != spec.shape or a.shape[0] == 0:
            raise RepositoryError(
                path,
                spec.name,
                f"expected shape {list(spec.shape)} or [N, "
                f"{', '.join(map(str, spec.shape))}], got {list(a.shape)}",
            )
        if not np.can_cast(a.dtype, spec.dtype, casting="same_kind"):
            raise RepositoryError(
                path, spec.name, f"expected dtype {spec.dtype} ({spec.datatype}), got {a.dtype}"
            )
        idx = np.arange(batch_size) % a.shape[0]
        out.append(np.ascontiguousarray(a[idx].astype(spec.dtype, copy=False)))
    return out
