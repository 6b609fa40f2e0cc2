"""The native model backend: a model.toml ``[native]`` table turned into a ``NativeModel``.

A native model is a sequence of kernel ops whose weights come from one ``.safetensors`` file,
memory-mapped once at load. The engine runs it on its worker threads without the GIL. Schema
of the ``[native]`` table (every key but ``ops`` is optional; an unknown key is an error)::

    [native]
    weights = "weights.safetensors"   # in the version folder
    device = "cpu"                    # "cpu" | "cuda" | "cuda:N"
    allow_cpu_fallback = false        # "cuda" without a CUDA build or device: run on the CPU
    blas_threads = 1                  # OpenBLAS threads, process-wide (default: unchanged)
    ops = [
      { op = "linear", weight = "fc1.weight", bias = "fc1.bias", activation = "gelu" },
      { op = "linear", weight = "fc2.weight", bias = "fc2.bias", activation = "gelu" },
      { op = "linear", weight = "fc3.weight", bias = "fc3.bias" },
      { op = "softmax" },
    ]

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

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import _core
from ..kernels import ACTIVATIONS, LAYOUTS
from ..types import TensorSpec

__all__ = ["OPS", "native_model"]

_K: Any = _core.kernels

# Keys each op accepts besides "op".
OPS: dict[str, tuple[str, ...]] = {
    "linear": ("weight", "bias", "activation", "layout"),
    "activation": ("activation",),
    "softmax": (),
    "layer_norm": ("weight", "bias", "eps"),
    "l2_normalize": ("eps",),
    "mean_pool": (),
    "topk": ("k",),
    "image_to_float": ("mean", "std", "layout"),
}
_TOP_KEYS = ("weights", "device", "allow_cpu_fallback", "blas_threads", "ops")
_TYPES: dict[str, Any] = {
    "FP32": _K.TensorType.f32,
    "FP16": _K.TensorType.f16,
    "BF16": _K.TensorType.bf16,
    "UINT8": _K.TensorType.u8,
    "INT64": _K.TensorType.i64,
}
_IMAGE_LAYOUTS: dict[str, Any] = {"nchw": _K.ImageLayout.nchw, "nhwc": _K.ImageLayout.nhwc}


def _unknown(key: str, known: Sequence[str], where: str) -> ValueError:
    hint = difflib.get_close_matches(key, known, n=1)
    tail = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {', '.join(known)}"
    return ValueError(f"{where}: unknown key {key!r}{tail}")


def _pick(table: Mapping[str, Any], value: Any, where: str) -> Any:
    if isinstance(value, str) and value in table:
        return table[value]
    raise ValueError(f"{where}: expected one of {', '.join(repr(k) for k in table)}, got {value!r}")


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where}: expected a non-empty string, got {v!r}")
    return v


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ValueError(f"{where}: expected a positive number, got {v!r}")
    return float(v)


def _floats(v: Any, where: str) -> list[float]:
    if (
        not isinstance(v, list)
        or not v
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
    ):
        raise ValueError(f"{where}: expected a list of numbers, got {v!r}")
    return [float(x) for x in v]


def _op(spec: Any, i: int) -> Any:
    where = f"[native] ops[{i}]"
    if not isinstance(spec, Mapping):
        raise ValueError(f'{where}: expected a table like {{ op = "linear", ... }}, got {spec!r}')
    kind = spec.get("op")
    if kind not in OPS:
        raise ValueError(f"{where}.op: expected one of {', '.join(OPS)}, got {kind!r}")
    for key in spec:
        if key != "op" and key not in OPS[kind]:
            raise _unknown(key, ("op", *OPS[kind]), f"{where} ({kind})")
    op = _K.NativeOp()
    op.kind = getattr(_K.OpKind, kind)
    if "weight" in spec:
        op.weight = _str(spec["weight"], f"{where}.weight")
    elif kind == "linear":
        raise ValueError(f'{where} (linear): needs weight = "<tensor name>"')
    if "bias" in spec:
        op.bias = _str(spec["bias"], f"{where}.bias")
    if "activation" in spec:
        op.activation = _pick(ACTIVATIONS, spec["activation"], f"{where}.activation")
    elif kind == "activation":
        raise ValueError(f'{where} (activation): needs activation = "relu" | "gelu" | ...')
    if "eps" in spec:
        op.eps = _number(spec["eps"], f"{where}.eps")
    if kind == "linear" and "layout" in spec:
        op.layout = _pick(LAYOUTS, spec["layout"], f"{where}.layout")
    if kind == "topk":
        k = spec.get("k")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"{where}.k: expected a positive integer, got {k!r}")
        op.k = k
    if kind == "image_to_float":
        if "mean" not in spec or "std" not in spec:
            raise ValueError(f"{where} (image_to_float): needs mean = [...] and std = [...]")
        op.mean = _floats(spec["mean"], f"{where}.mean")
        op.std = _floats(spec["std"], f"{where}.std")
        if any(s == 0 for s in op.std):
            raise ValueError(f"{where}.std: values must be non-zero")
        if "layout" in spec:
            op.image_layout = _pick(_IMAGE_LAYOUTS, spec["layout"], f"{where}.layout")
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
    max_batch_size: int = 64,
) -> Any:
    """Builds a ``_core.kernels.NativeModel`` from a ``[native]`` table (a dict).

    ``folder`` is where a relative ``weights`` path is found (the version folder; the
    repository has already refused paths that escape it). ``max_batch_size`` must be at least
    the engine's batching.max_batch_size for the model. Raises ValueError for a bad table or
    a shape that does not fit the weights, RuntimeError for an unreadable weights file or a
    CUDA device that is not there (unless ``allow_cpu_fallback``).
    """
    if not isinstance(native, Mapping):
        raise ValueError(f"[native]: expected a table, got {type(native).__name__}")
    for key in native:
        if key not in _TOP_KEYS:
            raise _unknown(key, _TOP_KEYS, "[native]")
    ops = native.get("ops")
    if not isinstance(ops, list) or not ops:
        raise ValueError("[native] ops: expected a non-empty array of op tables")
    cfg = _K.NativeModelConfig()
    cfg.ops = [_op(spec, i) for i, spec in enumerate(ops)]
    if "weights" in native:
        weights = Path(_str(native["weights"], "[native] weights"))
        if folder is not None and not weights.is_absolute():
            weights = Path(folder) / weights
        cfg.weights_path = str(weights)
    cfg.device = _str(native.get("device", "cpu"), "[native] device")
    fallback = native.get("allow_cpu_fallback", False)
    if not isinstance(fallback, bool):
        raise ValueError(f"[native] allow_cpu_fallback: expected true or false, got {fallback!r}")
    cfg.allow_cpu_fallback = fallback
    threads = native.get("blas_threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"[native] blas_threads: expected a positive integer, got {threads!r}")
    cfg.blas_threads = threads
    if (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, int)
        or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
    cfg.max_batch_size = max_batch_size
    cfg.inputs = [_desc(s, "input") for s in inputs]
    cfg.outputs = [_desc(s, "output") for s in outputs]
    return _K.NativeModel(cfg)
