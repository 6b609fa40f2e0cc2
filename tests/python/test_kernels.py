"""The native kernels against numpy references over many shapes, their argument errors, and the
CUDA kernels against the CPU ones (marked ``cuda``, skipped without a device).

Tolerances (float32 outputs vs float64 numpy references):
  linear        |y - ref| <= 2e-5 * (1 + |b| + sum_k |x * w|)
  softmax       |y - ref| <= 1e-6 + 1e-5 * ref
  layer_norm    |y - ref| <= 1e-4 * (1 + |ref|)
  l2, pooling   |y - ref| <= 1e-5 * (1 + |ref|)
  top-k, fp16   exact (fp16 packing matches numpy's astype(float16) bit for bit)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from inferline import kernels as K

RNG = np.random.default_rng(0)
SHAPES_MNK = [
    (1, 1, 1),
    (1, 7, 3),
    (3, 5, 7),
    (13, 17, 19),
    (64, 64, 64),
    (65, 63, 67),
    (1, 257, 129),
    (200, 129, 97),
]
ROWS_COLS = [(1, 1), (1, 2), (3, 7), (5, 16), (7, 31), (4, 1000), (3, 4099), (64, 65)]


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def ref_act(x: np.ndarray, act: str) -> np.ndarray:
    if act == "relu":
        return np.maximum(x, 0)
    if act == "gelu":
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    if act == "gelu_tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return x


@pytest.mark.parametrize("m,n,k", SHAPES_MNK)
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("layout", ["out_in", "in_out"])
def test_linear_matches_numpy(m: int, n: int, k: int, act: str, layout: str) -> None:
    x = RNG.uniform(-1, 1, (m, k)).astype(np.float32)
    w_out_in = RNG.uniform(-1, 1, (n, k)).astype(np.float32)
    b = RNG.uniform(-1, 1, n).astype(np.float32)
    w = w_out_in if layout == "out_in" else np.ascontiguousarray(w_out_in.T)
    y = K.linear(x, w, b, activation=act, layout=layout)
    x64, w64 = x.astype(np.float64), w_out_in.astype(np.float64)
    ref = ref_act(x64 @ w64.T + b, act)
    tol = 2e-5 * (1 + np.abs(b) + np.abs(x64) @ np.abs(w64).T)
    assert y.shape == (m, n) and y.dtype == np.float32
    assert np.all(np.abs(y - ref) <= tol)


def test_linear_without_bias_and_errors() -> None:
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    w = RNG.standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(K.linear(x, w), x @ w.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="activation must be one of 'none', 'relu'"):
        K.linear(x, w, activation="swish")
    with pytest.raises(
        ValueError,
        match=r"w has shape \(5, 3\) but x has 3 features; with "
        r"layout='in_out' w must be \[in, out\]",
    ):
        K.linear(x, w, layout="in_out")
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\), got \(4,\)"):
        K.linear(x, w, np.zeros(4))
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        K.linear(x[0], w)


@pytest.mark.parametrize("rows,cols", ROWS_COLS)
def test_softmax_matches_numpy(rows: int, cols: int) -> None:
    x = RNG.uniform(-20, 20, (rows, cols)).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    ref = e / e.sum(axis=-1, keepdims=True)
    y = K.softmax(x)
    assert np.all(np.abs(y - ref) <= 1e-6 + 1e-5 * ref)


def test_softmax_keeps_leading_axes_and_nan_rows() -> None:
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    x[1, 2, 0] = np.nan
    y = K.softmax(x)
    assert y.shape == (2, 3, 5)
    assert np.isnan(y[1, 2]).all()
    np.testing.assert_allclose(y[0].sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("rows,cols", ROWS_COLS)
def test_layer_norm_matches_numpy(rows: int, cols: int) -> None:
    x = RNG.uniform(95, 105, (rows, cols)).astype(np.float32)
    g = RNG.uniform(0.5, 1.5, cols).astype(np.float32)
    b = RNG.uniform(-1, 1, cols).astype(np.float32)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = x64.var(-1, keepdims=True)
    ref = (x64 - mean) / np.sqrt(var + 1e-5) * g + b
    y = K.layer_norm(x, g, b)
    assert np.all(np.abs(y - ref) <= 1e-4 * (1 + np.abs(ref)))
    plain = K.layer_norm(x)
    ref_plain = (x64 - mean) / np.sqrt(var + 1e-5)
    assert np.all(np.abs(plain - ref_plain) <= 1e-4 * (1 + np.abs(ref_plain)))


@pytest.mark.parametrize("rows,cols", ROWS_COLS)
def test_l2_normalize_matches_numpy(rows: int, cols: int) -> None:
    x = RNG.uniform(-3, 3, (rows, cols)).astype(np.float32)
    x[0] = 0  # a zero row stays zero
    x64 = x.astype(np.float64)
    ref = x64 / np.maximum(np.linalg.norm(x64, axis=-1, keepdims=True), 1e-12)
    y = K.l2_normalize(x)
    assert np.all(np.abs(y - ref) <= 1e-5 * (1 + np.abs(ref)))
    assert not y[0].any()


@pytest.mark.parametrize("b,t,h", [(1, 1, 1), (2, 3, 5), (3, 7, 31), (4, 16, 384), (2, 13, 129)])
def test_masked_mean_pool_matches_numpy(b: int, t: int, h: int) -> None:
    x = RNG.uniform(-1, 1, (b, t, h)).astype(np.float32)
    mask = (RNG.uniform(size=(b, t)) < 0.6).astype(np.float32)
    mask[0, 0] = 1
    x64 = x.astype(np.float64)
    count = mask.sum(1, keepdims=True)
    ref = np.where(count > 0, (x64 * mask[..., None]).sum(1) / np.maximum(count, 1e-9), 0)
    y = K.masked_mean_pool(x, mask)
    assert np.all(np.abs(y - ref) <= 1e-5 * (1 + np.abs(ref)))
    np.testing.assert_allclose(K.masked_mean_pool(x), x64.mean(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mask must have shape"):
        K.masked_mean_pool(x, mask[:, :0])


@pytest.mark.parametrize(
    "rows,cols,k", [(1, 1, 1), (3, 7, 2), (2, 31, 31), (4, 1000, 5), (3, 1000, 33), (2, 4099, 100)]
)
def test_topk_matches_stable_argsort(rows: int, cols: int, k: int) -> None:
    x = RNG.integers(0, 9, (rows, cols)).astype(np.float32)  # many ties
    x[0, min(3, cols - 1)] = np.nan
    values, indices = K.topk(x, k)
    # numpy: NaN first (by index), then a stable argsort of -x: descending, ties by index.
    order = np.argsort(-x, axis=-1, kind="stable")
    for r in range(rows):
        nans = [int(i) for i in np.flatnonzero(np.isnan(x[r]))]
        rest = [int(i) for i in order[r] if not np.isnan(x[r, i])]
        want = (nans + rest)[:k]
        assert indices[r].tolist() == want
        np.testing.assert_array_equal(values[r], x[r, want])
    assert indices.dtype == np.int64
    with pytest.raises(ValueError, match="k must be an int between 0 and"):
        K.topk(x, cols + 1)


def test_f16_matches_numpy_bit_for_bit() -> None:
    bits = RNG.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.concatenate([x, np.float32([0, -0.0, 65504, 65519.99, 65520, 1e-8, np.inf, -np.inf])])
    got = K.f32_to_f16(x)
    with np.errstate(over="ignore", invalid="ignore"):
        want = x.astype(np.float16)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(got.view(np.uint16)[finite], want.view(np.uint16)[finite])
    assert np.isnan(got[~finite]).all()
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    widened = every.view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(K.f16_to_f32(every), widened)
    np.testing.assert_array_equal(K.f16_to_f32(every.view(np.float16)), widened)


def test_bf16_round_to_nearest_even_and_nan() -> None:
    x = RNG.standard_normal(100_000).astype(np.float32) * 1e3
    x = np.concatenate([x, np.float32([0, -0.0, np.inf, -np.inf, 3.4028235e38])])
    u = x.view(np.uint32).astype(np.uint64)
    want = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(K.f32_to_bf16(x), want)
    nan_low = np.array([0x7F800001, 0xFF800001], dtype=np.uint32).view(np.float32)
    back = K.bf16_to_f32(K.f32_to_bf16(nan_low))
    assert np.isnan(back).all() and np.signbit(back).tolist() == [False, True]
    np.testing.assert_array_equal(
        K.bf16_to_f32(want), (want.astype(np.uint32) << 16).view(np.float32)
    )


@pytest.mark.parametrize("n,h,w,c", [(1, 1, 1, 1), (2, 3, 5, 3), (1, 7, 9, 4), (2, 33, 17, 3)])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_image_to_float_matches_numpy(n: int, h: int, w: int, c: int, layout: str) -> None:
    img = RNG.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    mean = RNG.uniform(0.3, 0.6, c)
    std = RNG.uniform(0.2, 0.3, c)
    ref = (img / 255.0 - mean) / std
    if layout == "nchw":
        ref = ref.transpose(0, 3, 1, 2)
    y = K.image_to_float(img, list(mean), list(std), layout=layout)
    assert y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= 1e-6 * (1 + np.abs(ref)))
    with pytest.raises(ValueError, match="image must be uint8"):
        K.image_to_float(img.astype(np.float32), list(mean), list(std))
    with pytest.raises(ValueError, match="one per channel"):
        K.image_to_float(img, [0.5] * (c + 1), [0.5] * (c + 1))


def test_blas_threads_round_trip() -> None:
    before = K.blas_threads()
    K.set_blas_threads(1)
    assert K.blas_threads() == 1
    K.set_blas_threads(before)
    assert "OpenBLAS" in K.blas_config()
    with pytest.raises(ValueError, match="threads must be a positive int"):
        K.set_blas_threads(0)


# ---- CUDA: the GPU kernels against the CPU ones -----------------------------------------------

cuda = pytest.mark.skipif(not K.cuda_available(), reason="no CUDA build or device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("m,n,k", SHAPES_MNK)
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "gelu_tanh"])
def test_cuda_linear_matches_cpu(m: int, n: int, k: int, act: str) -> None:
    from inferline import _core

    x = RNG.uniform(-1, 1, (m, k)).astype(np.float32)
    w = RNG.uniform(-1, 1, (n, k)).astype(np.float32)
    b = RNG.uniform(-1, 1, n).astype(np.float32)
    got = _core.kernels.cuda_linear(x, w, b, K.ACTIVATIONS[act], K.LAYOUTS["out_in"])
    tol = 2e-5 * (1 + np.abs(b) + np.abs(x) @ np.abs(w).T)
    assert np.all(np.abs(got - K.linear(x, w, b, activation=act)) <= tol)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("rows,cols", ROWS_COLS)
def test_cuda_row_kernels_match_cpu(rows: int, cols: int) -> None:
    from inferline import _core

    x = RNG.uniform(-5, 5, (rows, cols)).astype(np.float32)
    ref = K.softmax(x)
    assert np.all(np.abs(_core.kernels.cuda_softmax(x) - ref) <= 1e-6 + 1e-5 * ref)
    ln = K.layer_norm(x)
    assert np.all(np.abs(_core.kernels.cuda_layer_norm(x) - ln) <= 1e-4 * (1 + np.abs(ln)))
    l2 = K.l2_normalize(x)
    assert np.all(np.abs(_core.kernels.cuda_l2_normalize(x) - l2) <= 1e-6 + 1e-5 * np.abs(l2))
    kk = min(5, cols)
    v, i = _core.kernels.cuda_topk(x, kk)
    cv, ci = K.topk(x, kk)
    np.testing.assert_array_equal(i, ci)
    np.testing.assert_array_equal(v, cv)
