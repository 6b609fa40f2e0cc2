"""Repository entries for sentence-embedding models (``backend = "text_encoder"``).

:func:`import_embedding` copies a weights folder (``model.safetensors``, ``config.json``,
``tokenizer.json``, ``sentence_bert_config.json``) into ``REPO/NAME/VERSION/`` and writes its
``model.toml`` with every file's sha256 in ``[artifacts]`` (``inferline import-embedding``).
:func:`package_entry_toml` is the model.toml of an entry whose files stay in an installed
weights package, pinned by sha256 (the bundled example repository's ``minilm``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from ..repository import check_model_name, sha256_file

__all__ = ["EMBEDDING_FILES", "import_embedding", "package_entry_toml"]

# The files a text encoder needs (the last is optional: it gives max_seq_length).
EMBEDDING_FILES = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "sentence_bert_config.json",
)

_HEAD = """\
# Sentence embeddings (backend = "text_encoder"): text (BYTES, one string per item) ->
# embedding (FP32, L2-normalised). Texts longer than max_seq_len tokens are truncated and the
# response's parameters say truncated = true.
backend = "text_encoder"

[batching]
max_batch_size = {max_batch_size}

[text_encoder]
"""


def _table(name: str, digests: Mapping[str, str]) -> str:
    lines = [f"[{name}]"] + [f'"{rel}" = "{d}"' for rel, d in digests.items()]
    return "\n".join(lines) + "\n"


def package_entry_toml(
    package: str,
    digests: Mapping[str, str],
    *,
    comment: str = "",
    max_batch_size: int = 64,
    max_batch_tokens: int = 8192,
) -> str:
    """model.toml of an entry whose files are read from the installed ``package``, each
    file's sha256 in ``digests`` (relative to the package's model folder)."""
    head = "".join(f"# {line}\n".replace("# \n", "#\n") for line in comment.splitlines())
    return (
        head
        + _HEAD.format(max_batch_size=max_batch_size)
        + f'package = "{package}"\nmax_batch_tokens = {max_batch_tokens}\n\n'
        + _table("text_encoder.sha256", digests)
    )


def import_embedding(
    source: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    *,
    name: str = "minilm",
    version: int = 1,
    max_batch_size: int = 64,
    max_batch_tokens: int = 8192,
) -> Path:
    """Copies the weights folder ``source`` into ``repository/name/version/`` and writes
    ``repository/name/model.toml`` with the files' sha256s; returns the model folder.

    ValueError when a needed file is missing, the name is not a valid model name, or the
    model folder already exists (nothing is overwritten)."""
    src = Path(source)
    check_model_name(name, where=Path(repository) / name)
    present = [f for f in EMBEDDING_FILES if (src / f).is_file()]
    missing = [f for f in EMBEDDING_FILES[:3] if f not in present]
    if missing:
        raise ValueError(f"{src} is not a text-encoder weights folder: missing {missing}")
    model_dir = Path(repository) / name
    if model_dir.exists():
        raise ValueError(f"{model_dir} already exists; choose another --name or remove it")
    target = model_dir / str(version)
    target.mkdir(parents=True)
    digests: dict[str, str] = {}
    for f in present:
        shutil.copyfile(src / f, target / f)
        digests[f"{version}/{f}"] = sha256_file(target / f)
    text = (
        f"# Imported from {src.resolve()} by `inferline import-embedding`.\n"
        + _HEAD.format(max_batch_size=max_batch_size)
        + f"max_batch_tokens = {max_batch_tokens}\n\n"
        + _table("artifacts.sha256", digests)
    )
    (model_dir / "model.toml").write_text(text, encoding="utf-8")
    return model_dir
