"""The native model backend: a model.toml ``[native]`` table turned into a ``NativeModel``.

A native model is a sequence of kernel ops whose weights come from one ``.safetensors`` file,
memory-mapped once at load. The engine runs it on its worker threads without the GIL. The
``[native]`` table's keys are validated by :mod:`inferline.repository.schema` (``OPS`` lists
the keys each op takes); this module turns the validated table into the core's config.

Ops and their keys:

- ``linear``: ``weight`` (required), ``bias``, ``activation`` = ``"none"`` | ``"relu"`` |
  ``"gelu"`` (exact erf form) | ``"gelu_tanh"``, ``layout`` = ``"out_in"`` (weight
  [out, in], PyTorch's; default) | ``"in_out"``.
- ``activation``: ``activation``.
- ``softmax``: none.  ``l2_normalize``: ``eps`` (1e-12).
- ``layer_norm``: ``weight`` (gamma), ``bias`` (beta), ``eps`` (1e-5).
- ``mean_pool``: none; reduces a [seq, width] input to [width], weighted by the second model
  input (the mask, FP32 or INT64 [seq]) when the model declares one.
- ``topk``: ``k``; last op only; the model then has two outputs, FP32 values and INT64
  indices, both [k].
- ``image_to_float``: first op only, for a UINT8 [H, W, C] input: ``mean``, ``std`` (one per
  channel, [0, 1] scale), ``layout`` = ``"nchw"`` (default) | ``"nhwc"``.

The first input is FP32, FP16 or BF16, shaped [features] or [seq, width]. Floating-point
weights of any of F32, F16, BF16 and F64 are accepted (F32 is used in place).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import _core
from ..kernels import ACTIVATIONS, IMAGE_LAYOUTS, LAYOUTS
from ..repository.native_schema import OPS, NativeOp, parse_native
from ..types import DEFAULTS, TensorSpec

__all__ = ["OPS", "native_model"]

_K: Any = _core.kernels

_TYPES: dict[str, Any] = {
    "FP32": _K.TensorType.f32,
    "FP16": _K.TensorType.f16,
    "BF16": _K.TensorType.bf16,
    "UINT8": _K.TensorType.u8,
    "INT64": _K.TensorType.i64,
}


def _op(spec: NativeOp) -> Any:
    """The core's op from a validated op table (keys already checked against OPS)."""
    op = _K.NativeOp()
    op.kind = getattr(_K.OpKind, spec.op)
    if spec.weight is not None:
        op.weight = spec.weight
    if spec.bias is not None:
        op.bias = spec.bias
    if spec.activation is not None:
        op.activation = ACTIVATIONS[spec.activation]
    if spec.eps is not None:
        op.eps = spec.eps
    if spec.k is not None:
        op.k = spec.k
    if spec.mean is not None and spec.std is not None:
        op.mean, op.std = spec.mean, spec.std
    if spec.layout is not None:
        if spec.op == "image_to_float":
            op.image_layout = IMAGE_LAYOUTS[spec.layout]
        else:
            op.layout = LAYOUTS[spec.layout]
    return op


def _desc(spec: TensorSpec, what: str) -> Any:
    if spec.datatype not in _TYPES:
        raise ValueError(
            f"{what} {spec.name!r}: the native backend takes {', '.join(_TYPES)}, "
            f"got {spec.datatype}"
        )
    return _K.TensorDesc(spec.name, _TYPES[spec.datatype], [int(d) for d in spec.shape])


def native_model(
    native: Mapping[str, Any],
    *,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    folder: str | os.PathLike[str] | None = None,
    max_batch_size: int = DEFAULTS.max_batch_size,
) -> Any:
    """Builds a ``_core.kernels.NativeModel`` from a ``[native]`` table (a dict).

    ``folder`` is where a relative ``weights`` path is found (the version folder; the
    repository has already refused paths that escape it). ``max_batch_size`` must be at least
    the engine's batching.max_batch_size for the model (default: the engine's default).
    Raises ValueError for a bad table (naming the field, e.g. ``native.ops[0].activation``)
    or a shape that does not fit the weights, RuntimeError for an unreadable weights file or
    a CUDA device that is not there (unless ``allow_cpu_fallback``).
    """
    table = parse_native(dict(native) if isinstance(native, Mapping) else native)
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, int)
        or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
    cfg = _K.NativeModelConfig()
    cfg.ops = [_op(spec) for spec in table.ops]
    if table.weights is not None:
        weights = Path(table.weights)
        if folder is not None:
            weights = Path(folder) / weights
        cfg.weights_path = str(weights)
    cfg.device = table.device
    cfg.allow_cpu_fallback = table.allow_cpu_fallback
    cfg.blas_threads = table.blas_threads
    cfg.max_batch_size = max_batch_size
    cfg.inputs = [_desc(s, "input") for s in inputs]
    cfg.outputs = [_desc(s, "output") for s in outputs]
    return _K.NativeModel(cfg)
