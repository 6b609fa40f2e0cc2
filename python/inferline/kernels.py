"""The native kernels on numpy arrays: the same code the native model backend runs.

CPU kernels run on the calling thread with the GIL released (``linear`` may use OpenBLAS's own
threads; see :func:`set_blas_threads`). Inputs are converted to C-contiguous float32 (uint8
for images); results are new arrays. GELU: ``"gelu"`` is the exact erf form (PyTorch's
default), ``"gelu_tanh"`` the tanh approximation. ``cuda_*`` helpers exist only in builds with
CUDA (:func:`cuda_available` says whether one can run now); they upload, run and download on
every call and are meant for tests and comparisons.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _core

__all__ = [
    "ACTIVATIONS",
    "IMAGE_LAYOUTS",
    "LAYOUTS",
    "bf16_to_f32",
    "blas_config",
    "blas_threads",
    "cuda_available",
    "f16_to_f32",
    "f32_to_bf16",
    "f32_to_f16",
    "image_to_float",
    "l2_normalize",
    "layer_norm",
    "linear",
    "masked_mean_pool",
    "set_blas_threads",
    "softmax",
    "topk",
]

_K: Any = _core.kernels

ACTIVATIONS: dict[str, Any] = {
    "none": _K.Activation.none,
    "relu": _K.Activation.relu,
    "gelu": _K.Activation.gelu,
    "gelu_tanh": _K.Activation.gelu_tanh,
}
LAYOUTS: dict[str, Any] = {"out_in": _K.WeightLayout.out_in, "in_out": _K.WeightLayout.in_out}
IMAGE_LAYOUTS: dict[str, Any] = {"nchw": _K.ImageLayout.nchw, "nhwc": _K.ImageLayout.nhwc}


def _choice(table: dict[str, Any], value: str, what: str) -> Any:
    try:
        return table[value]
    except (KeyError, TypeError):
        raise ValueError(
            f"{what} must be one of {', '.join(repr(k) for k in table)}, got {value!r}"
        ) from None


def _f32(x: Any, what: str, ndim: int | None = None, min_ndim: int = 1) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {a.shape}")
    if a.ndim < min_ndim:
        raise ValueError(f"{what} must have at least {min_ndim} dimension(s), got shape {a.shape}")
    return a


def _vector(v: Any, n: int, what: str) -> np.ndarray | None:
    if v is None:
        return None
    a = _f32(v, what, ndim=1)
    if a.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},), got {a.shape}")
    return a


def linear(
    x: Any, w: Any, bias: Any = None, activation: str = "none", layout: str = "out_in"
) -> np.ndarray:
    """``act(x @ w.T + bias)`` for ``w`` [out, in] (``layout="out_in"``, PyTorch's), or
    ``act(x @ w + bias)`` for ``w`` [in, out] (``"in_out"``). ``x`` is [m, in]."""
    act = _choice(ACTIVATIONS, activation, "activation")
    lay = _choice(LAYOUTS, layout, "layout")
    xa = _f32(x, "x", ndim=2)
    wa = _f32(w, "w", ndim=2)
    k_axis = 1 if layout == "out_in" else 0
    if wa.shape[k_axis] != xa.shape[1]:
        raise ValueError(
            f"w has shape {wa.shape} but x has {xa.shape[1]} features; with layout={layout!r} "
            f"w must be {'[out, in]' if layout == 'out_in' else '[in, out]'}"
        )
    b = _vector(bias, wa.shape[1 - k_axis], "bias")
    return _K.linear(xa, wa, b, act, lay)  # type: ignore[no-any-return]


def softmax(x: Any) -> np.ndarray:
    """Softmax over the last axis (a row with NaN, or only -inf, becomes NaN)."""
    return _K.softmax(_f32(x, "x"))  # type: ignore[no-any-return]


def layer_norm(x: Any, gamma: Any = None, beta: Any = None, eps: float = 1e-5) -> np.ndarray:
    """Layer norm over the last axis (biased variance, as torch.nn.LayerNorm)."""
    xa = _f32(x, "x")
    n = xa.shape[-1]
    return _K.layer_norm(  # type: ignore[no-any-return]
        xa, _vector(gamma, n, "gamma"), _vector(beta, n, "beta"), float(eps)
    )


def l2_normalize(x: Any, eps: float = 1e-12) -> np.ndarray:
    """``x / max(||x||, eps)`` over the last axis (torch.nn.functional.normalize)."""
    return _K.l2_normalize(_f32(x, "x"), float(eps))  # type: ignore[no-any-return]


def masked_mean_pool(x: Any, mask: Any = None) -> np.ndarray:
    """Mean of ``x`` [B, T, H] over tokens weighted by ``mask`` [B, T] -> [B, H]; tokens with
    mask 0 are skipped, a row whose mask sums to 0 gives zeros."""
    xa = _f32(x, "x", ndim=3)
    m = None
    if mask is not None:
        m = _f32(mask, "mask", ndim=2)
        if m.shape != xa.shape[:2]:
            raise ValueError(f"mask must have shape {xa.shape[:2]}, got {m.shape}")
    return _K.masked_mean_pool(xa, m)  # type: ignore[no-any-return]


def topk(x: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, int64 indices) of the ``k`` largest along the last axis, in descending order;
    NaN ranks first, ties go to the lower index."""
    xa = _f32(x, "x")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= xa.shape[-1]:
        raise ValueError(f"k must be an int between 0 and {xa.shape[-1]}, got {k!r}")
    values, indices = _K.topk(xa, k)
    return values, indices


def image_to_float(
    image: Any, mean: Sequence[float], std: Sequence[float], layout: str = "nchw"
) -> np.ndarray:
    """uint8 images [N, H, W, C] -> float32 ``(x / 255 - mean) / std`` in ``layout`` order."""
    lay = _choice(IMAGE_LAYOUTS, layout, "layout")
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim != 4:
        raise ValueError(f"image must be [N, H, W, C], got shape {img.shape}")
    c = img.shape[3]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean and std need {c} values (one per channel)")
    if any(s == 0 for s in std):
        raise ValueError("std values must be non-zero")
    return _K.image_to_float(  # type: ignore[no-any-return]
        np.ascontiguousarray(img), [float(v) for v in mean], [float(v) for v in std], lay
    )


def f32_to_f16(x: Any) -> np.ndarray:
    """float32 -> float16 (round to nearest even), returned as a numpy float16 array."""
    return _K.f32_to_f16(_f32(x, "x", min_ndim=0)).view(np.float16)  # type: ignore[no-any-return]


def f16_to_f32(x: Any) -> np.ndarray:
    """float16 (or its uint16 bit patterns) -> float32."""
    a = np.asarray(x)
    if a.dtype not in (np.float16, np.uint16):
        raise ValueError(f"expected float16 or uint16 bits, got {a.dtype}")
    return _K.f16_to_f32(a)  # type: ignore[no-any-return]


def f32_to_bf16(x: Any) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16; round to nearest even, NaN stays NaN)."""
    return _K.f32_to_bf16(_f32(x, "x", min_ndim=0))  # type: ignore[no-any-return]


def bf16_to_f32(bits: Any) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32."""
    a = np.asarray(bits)
    if a.dtype != np.uint16:
        raise ValueError(f"expected uint16 bfloat16 bits, got {a.dtype}")
    return _K.bf16_to_f32(a)  # type: ignore[no-any-return]


def set_blas_threads(threads: int) -> None:
    """Threads OpenBLAS uses for every later matmul in this process (1: the caller's only)."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    _K.set_blas_threads(threads)


def blas_threads() -> int:
    """OpenBLAS's current thread count."""
    return int(_K.blas_threads())


def blas_config() -> str:
    """The linked BLAS library and its build configuration."""
    return str(_K.blas_config())


def cuda_available() -> bool:
    """True when CUDA kernels are compiled in and a device is visible now."""
    return bool(_core.cuda_compiled()) and _core.cuda_device_count() > 0
