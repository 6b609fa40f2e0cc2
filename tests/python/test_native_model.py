"""The native model backend: an MLP classifier from a safetensors file against the same model in
numpy (direct and through the engine), a pooled encoder with a mask input, a top-k head, and
the errors of the [native] table and of loading. Tolerance: 1e-5 absolute on probabilities,
1e-4 relative elsewhere (float32 through several ops)."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inferline
from inferline import Batching, TensorSpec, _core
from inferline.backends.native import native_model

safetensors_numpy = pytest.importorskip("safetensors.numpy")

IN, HIDDEN, CLASSES = 32, 64, 10
RNG = np.random.default_rng(1)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def make_mlp(folder: Path) -> dict[str, np.ndarray]:
    w = {
        "fc1.weight": RNG.uniform(-0.3, 0.3, (HIDDEN, IN)).astype(np.float32),
        "fc1.bias": RNG.uniform(-0.1, 0.1, HIDDEN).astype(np.float32),
        "fc2.weight": RNG.uniform(-0.3, 0.3, (HIDDEN, HIDDEN)).astype(np.float32),
        "fc2.bias": RNG.uniform(-0.1, 0.1, HIDDEN).astype(np.float32),
        "fc3.weight": RNG.uniform(-0.3, 0.3, (CLASSES, HIDDEN)).astype(np.float32),
        "fc3.bias": RNG.uniform(-0.1, 0.1, CLASSES).astype(np.float32),
    }
    safetensors_numpy.save_file(w, str(folder / "weights.safetensors"))
    return w


def numpy_mlp(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    h = gelu(x.astype(np.float64) @ w["fc1.weight"].T + w["fc1.bias"])
    h = gelu(h @ w["fc2.weight"].T + w["fc2.bias"])
    logits = h @ w["fc3.weight"].T + w["fc3.bias"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


MLP_TABLE: dict[str, Any] = {
    "weights": "weights.safetensors",
    "device": "cpu",
    "ops": [
        {"op": "linear", "weight": "fc1.weight", "bias": "fc1.bias", "activation": "gelu"},
        {"op": "linear", "weight": "fc2.weight", "bias": "fc2.bias", "activation": "gelu"},
        {"op": "linear", "weight": "fc3.weight", "bias": "fc3.bias"},
        {"op": "softmax"},
    ],
}
X = [TensorSpec("x", "FP32", (IN,))]
PROBS = [TensorSpec("probs", "FP32", (CLASSES,))]


@pytest.fixture
def mlp(tmp_path: Path) -> tuple[Any, dict[str, np.ndarray]]:
    w = make_mlp(tmp_path)
    return native_model(MLP_TABLE, inputs=X, outputs=PROBS, folder=tmp_path, max_batch_size=64), w


@pytest.mark.parametrize("n", [1, 2, 7, 31, 64])
def test_mlp_forward_matches_numpy(mlp: tuple[Any, dict[str, np.ndarray]], n: int) -> None:
    model, w = mlp
    x = RNG.standard_normal((n, IN)).astype(np.float32)
    y = model.forward(x)
    assert y.shape == (n, CLASSES) and y.dtype == np.float32
    np.testing.assert_allclose(y, numpy_mlp(x, w), atol=1e-5)
    assert model.device == "cpu" and model.platform == "native"
    assert "3: softmax [1, 10] -> [1, 10]" in model.describe()


@pytest.mark.asyncio
async def test_mlp_through_the_engine_matches_numpy(
    mlp: tuple[Any, dict[str, np.ndarray]],
) -> None:
    model, w = mlp
    engine = inferline.Engine()
    engine.register(
        "mlp",
        model,
        inputs=X,
        outputs=PROBS,
        batching=Batching(max_batch_size=32, max_queue_delay_ms=1.0),
        warmup=[1, 32],
    )
    async with engine:
        xs = RNG.standard_normal((500, IN)).astype(np.float32)
        ys = await asyncio.gather(*(engine.infer("mlp", x) for x in xs))
        stats = engine.stats("mlp")
    np.testing.assert_allclose(np.stack(ys), numpy_mlp(xs, w), atol=1e-5)
    assert stats["requests"]["success"] == 500


@pytest.mark.asyncio
async def test_topk_head_and_masked_encoder_through_the_engine(tmp_path: Path) -> None:
    t, h, d = 6, 8, 5
    weights = {
        "proj.weight": RNG.uniform(-1, 1, (d, h)).astype(np.float32),
        "proj.bias": RNG.uniform(-1, 1, d).astype(np.float32),
    }
    safetensors_numpy.save_file(weights, str(tmp_path / "enc.safetensors"))
    table = {
        "weights": "enc.safetensors",
        "ops": [
            {"op": "linear", "weight": "proj.weight", "bias": "proj.bias", "activation": "relu"},
            {"op": "mean_pool"},
            {"op": "l2_normalize"},
            {"op": "topk", "k": 2},
        ],
    }
    inputs = [TensorSpec("tokens", "FP32", (t, h)), TensorSpec("mask", "INT64", (t,))]
    outputs = [TensorSpec("scores", "FP32", (2,)), TensorSpec("ids", "INT64", (2,))]
    model = native_model(table, inputs=inputs, outputs=outputs, folder=tmp_path, max_batch_size=8)

    xs = RNG.standard_normal((20, t, h)).astype(np.float32)
    masks = (np.arange(t)[None, :] < (np.arange(20) % t + 1)[:, None]).astype(np.int64)
    tok = np.maximum(xs.astype(np.float64) @ weights["proj.weight"].T + weights["proj.bias"], 0)
    pooled = (tok * masks[..., None]).sum(1) / masks.sum(1, keepdims=True)
    emb = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    want_ids = np.argsort(-emb, axis=-1, kind="stable")[:, :2]

    values, ids = model.forward(xs, masks)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(values, np.take_along_axis(emb, want_ids, -1), rtol=1e-4, atol=1e-6)

    engine = inferline.Engine()
    engine.register(
        "enc",
        model,
        inputs=inputs,
        outputs=outputs,
        batching=Batching(max_batch_size=8, max_queue_delay_ms=1.0),
        warmup=False,
    )
    async with engine:
        answers = await asyncio.gather(
            *(engine.infer("enc", {"tokens": x, "mask": m}) for x, m in zip(xs, masks, strict=True))
        )
    np.testing.assert_array_equal(np.stack([a["ids"] for a in answers]), want_ids)


# ---- errors -----------------------------------------------------------------------------------


def test_table_errors_name_the_key(tmp_path: Path) -> None:
    make_mlp(tmp_path)

    def build(table: dict[str, Any], **kw: Any) -> Any:
        return native_model(
            table, inputs=kw.get("inputs", X), outputs=kw.get("outputs", PROBS), folder=tmp_path
        )

    with pytest.raises(
        ValueError,
        match=r"native\.wieghts: unknown key \(did you mean 'weights'\?\); expected one of",
    ):
        build({**MLP_TABLE, "wieghts": "x"})
    with pytest.raises(
        ValueError, match=r"native\.ops: expected a non-empty array of op tables, got \[\]"
    ):
        build({"ops": []})
    bad_op = {**MLP_TABLE, "ops": [{"op": "conv2d"}]}
    with pytest.raises(
        ValueError, match=r"native\.ops\[0\]\.op: expected one of 'linear', 'activation'"
    ):
        build(bad_op)
    typo = {**MLP_TABLE, "ops": [{"op": "linear", "weight": "fc1.weight", "activaton": "gelu"}]}
    with pytest.raises(
        ValueError,
        match=r"native\.ops\[0\]\.activaton: unknown key \(did you mean 'activation'\?\)",
    ):
        build(typo)
    act = {**MLP_TABLE, "ops": [{"op": "linear", "weight": "fc1.weight", "activation": "swish"}]}
    with pytest.raises(
        ValueError, match=r"native\.ops\[0\]\.activation: expected one of 'none', 'relu'"
    ):
        build(act)
    with pytest.raises(
        ValueError,
        match=r"input 'x': the native backend takes FP32, FP16, BF16, "
        r"UINT8, INT64, got INT32",
    ):
        build(MLP_TABLE, inputs=[TensorSpec("x", "INT32", (IN,))])


def test_load_errors_name_the_op_tensor_and_shape(tmp_path: Path) -> None:
    make_mlp(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"op 0 \(linear\): weight \"fc1.weight\" has shape "
        r"\[64, 32\]; expected \[out, 31\]",
    ):
        native_model(
            MLP_TABLE, inputs=[TensorSpec("x", "FP32", (31,))], outputs=PROBS, folder=tmp_path
        )
    with pytest.raises(
        ValueError,
        match=r"output \"probs\" is declared FP32 \[9\] but the ops "
        r"produce FP32 \[10\]",
    ):
        native_model(
            MLP_TABLE, inputs=X, outputs=[TensorSpec("probs", "FP32", (9,))], folder=tmp_path
        )
    missing = {**MLP_TABLE, "weights": "nope.safetensors"}
    with pytest.raises(RuntimeError, match="cannot open weights file"):
        native_model(missing, inputs=X, outputs=PROBS, folder=tmp_path)
    (tmp_path / "broken.safetensors").write_bytes(b"\x0a\x00\x00\x00\x00\x00\x00\x00{not json}")
    broken = {**MLP_TABLE, "weights": "broken.safetensors"}
    with pytest.raises(RuntimeError, match="bad safetensors header JSON"):
        native_model(broken, inputs=X, outputs=PROBS, folder=tmp_path)


@pytest.mark.skipif(_core.cuda_device_count() > 0, reason="a CUDA device is present")
def test_cuda_without_a_device_is_a_clear_error_unless_fallback(tmp_path: Path) -> None:
    w = make_mlp(tmp_path)
    with pytest.raises(
        RuntimeError,
        match=r"device = \"cuda\" requested but .*; set "
        r"allow_cpu_fallback = true",
    ):
        native_model({**MLP_TABLE, "device": "cuda"}, inputs=X, outputs=PROBS, folder=tmp_path)
    model = native_model(
        {**MLP_TABLE, "device": "cuda", "allow_cpu_fallback": True},
        inputs=X,
        outputs=PROBS,
        folder=tmp_path,
    )
    assert model.device == "cpu" and model.fallback_reason
    x = RNG.standard_normal((3, IN)).astype(np.float32)
    np.testing.assert_allclose(model.forward(x), numpy_mlp(x, w), atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(_core.cuda_device_count() == 0, reason="no CUDA device")
def test_cuda_model_matches_cpu(tmp_path: Path) -> None:
    w = make_mlp(tmp_path)
    gpu = native_model(
        {**MLP_TABLE, "device": "cuda"}, inputs=X, outputs=PROBS, folder=tmp_path, max_batch_size=32
    )
    assert gpu.device == "cuda:0"
    x = RNG.standard_normal((17, IN)).astype(np.float32)
    np.testing.assert_allclose(gpu.forward(x), numpy_mlp(x, w), atol=1e-5)
