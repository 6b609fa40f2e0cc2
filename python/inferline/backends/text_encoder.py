"""``backend = "text_encoder"``: a sentence-embedding model from a repository version.

The files come from the version folder (checked by ``[artifacts]`` like any backend's) or from
an installed package's model folder (``[text_encoder] package``), whose ``sha256`` entries are
checked here before anything is loaded. The version is served as a pipeline
(:mod:`inferline.models.minilm`): a tokenizer stage in front of the native ``TextEncoder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.stages import Stage
from ..models.minilm import (
    TextEncoderFiles,
    core_specs,
    load_text_encoder,
    text_warmup_inputs,
    token_batching,
    tokenizer_stage,
)
from ..repository import ModelConfig, RepositoryError, sha256_file
from ..repository.config import TextEncoderConfig
from ..repository.text_encoder_schema import package_folder
from ..types import DEFAULTS, TensorSpec

__all__ = ["LoadedTextEncoder", "load_text_encoder_version"]


@dataclass(frozen=True)
class LoadedTextEncoder:
    """The pieces ``engine.register`` needs for one text-encoder version."""

    core: Any
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    pre: Stage
    max_seq_len: int
    batching_extra: dict[str, Any]

    def warmup_inputs(self, batch_size: int) -> list[Any]:
        return text_warmup_inputs(self.max_seq_len)(batch_size)


def _folder(config: ModelConfig, te: TextEncoderConfig, directory: Path) -> Path:
    if te.package is None:
        return directory
    folder = package_folder(te.package)
    if folder is None:
        raise RepositoryError(
            config.config_file, "text_encoder.package", f"package {te.package!r} is not installed"
        )
    for rel, expected in te.sha256.items():
        path = folder / rel
        if not path.is_file():
            raise RepositoryError(path, None, "missing (listed in [text_encoder] sha256)")
        actual = sha256_file(path)
        if actual != expected:
            raise RepositoryError(
                path,
                None,
                f"sha256 mismatch: expected {expected} ([text_encoder] sha256 in "
                f"{config.config_file}), got {actual}; refusing to load",
            )
    return folder


def load_text_encoder_version(
    config: ModelConfig, directory: Path, *, core: Any = None
) -> LoadedTextEncoder:
    """The tokenizer stage and the native encoder of one version; RepositoryError naming the
    file or field at fault. ``core`` replaces the native encoder (tests)."""
    te = config.text_encoder
    assert te is not None
    if config.isolation == "process":
        raise RepositoryError(
            config.config_file,
            "isolation",
            "a text encoder runs natively without the GIL; process instances do not apply",
        )
    folder = _folder(config, te, directory)
    try:
        files = TextEncoderFiles.of(
            folder,
            weights=te.weights,
            config=te.config,
            tokenizer=te.tokenizer,
            max_seq_len=te.max_seq_len,
        )
    except ValueError as exc:
        raise RepositoryError(config.config_file, "text_encoder", str(exc)) from None
    mbs = config.batching.max_batch_size or DEFAULTS.max_batch_size
    if core is None:
        try:
            core = load_text_encoder(
                files, device=te.device, blas_threads=te.blas_threads or 1, max_batch_size=mbs
            )
        except (ValueError, RuntimeError, TypeError) as exc:
            raise RepositoryError(config.config_file, "text_encoder", str(exc)) from None
    inputs, outputs = core_specs(files.max_seq_len, files.hidden)
    tokens = te.max_batch_tokens or None
    extra = token_batching(tokens, max_batch_size=mbs)  # checks the cap against the limits
    return LoadedTextEncoder(
        core=core,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        pre=tokenizer_stage(files, threads=te.tokenizer_threads),
        max_seq_len=files.max_seq_len,
        batching_extra={"max_batch_tokens": extra.max_batch_tokens, "cost_input": "length"},
    )
