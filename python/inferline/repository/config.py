"""The validated configuration of a model: what ``model.toml`` says, as frozen dataclasses.

These are the results of :mod:`.schema` (which validates the file) and :mod:`.scan` (which
adds the version folders); ``None`` in a field means "left out: the engine's default applies".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from ..types import TensorSpec
from .errors import RepositoryError
from .paths import VERSION_RE

__all__ = [
    "BACKENDS",
    "ISOLATIONS",
    "Backend",
    "BatchingConfig",
    "CacheConfig",
    "Isolation",
    "ModelConfig",
    "OnnxConfig",
    "OutputChecks",
    "PythonConfig",
    "TextEncoderConfig",
    "VersionArtifact",
    "VersionPolicy",
    "WarmupConfig",
]

BACKENDS = ("onnx", "python", "native", "text_encoder")
Backend = Literal["onnx", "python", "native", "text_encoder"]
ISOLATIONS = ("thread", "process", "loop")  # where a model instance runs
Isolation = Literal["thread", "process", "loop"]


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
    policy: str | None = None
    max_latency_ms: float | None = None
    execution_timeout_ms: float | None = None

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
class TextEncoderConfig:
    """``[text_encoder]``: a sentence-embedding model's files (in each version folder, or in
    the installed ``package``'s model folder, pinned by ``sha256``) and how it runs."""

    weights: str = "model.safetensors"
    config: str = "config.json"
    tokenizer: str = "tokenizer.json"
    max_seq_len: int | None = None
    package: str | None = None
    sha256: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    device: str = "cpu"
    blas_threads: int = 0
    max_batch_tokens: int = 8192
    tokenizer_threads: int = 1


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
    text_encoder: TextEncoderConfig | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    output_checks: OutputChecks = field(default_factory=OutputChecks)
    isolation: Isolation = "thread"

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
            if VERSION_RE.fullmatch(ref):
                ref = int(ref)
            else:
                raise RepositoryError(
                    self.config_file,
                    "versions.aliases",
                    f"no alias {ref!r}; aliases: "
                    f"{', '.join(self.version_policy.aliases) or 'none'}",
                )
        return self.version(int(ref)).version
