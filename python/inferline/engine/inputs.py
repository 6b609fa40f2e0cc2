"""Input checks and coercion: the slow path for anything but exact, contiguous arrays.

Plain functions over a model's list of :class:`~inferline.types.TensorSpec`, so the server can
use them too. Each error is an ``InvalidInput`` naming the model, the input and what was
expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..types import TensorSpec

__all__ = ["as_rows", "check_specs", "coerce", "convert"]


def check_specs(kind: str, specs: object, *, allow_empty: bool) -> list[TensorSpec]:
    """``specs`` (one TensorSpec or a list) as a list; ValueError naming ``kind`` if it is
    not a list of uniquely named TensorSpecs (or is empty and must not be)."""
    if specs is None:
        if allow_empty:
            return []
        raise ValueError(f"{kind} must list at least one TensorSpec")
    if isinstance(specs, TensorSpec):
        specs = [specs]
    if not isinstance(specs, Sequence | Iterable) or isinstance(specs, str | bytes):
        raise ValueError(f"{kind} must be a list of TensorSpec, got {type(specs).__name__}")
    out = list(specs)
    if not out and not allow_empty:
        raise ValueError(f"{kind} must list at least one TensorSpec")
    for s in out:
        if not isinstance(s, TensorSpec):
            raise ValueError(f"{kind} must hold TensorSpec objects, got {type(s).__name__}")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{kind} has duplicate names: {names}")
    return out


def convert(model: str, inputs: Sequence[TensorSpec], x: Any) -> Any:
    """One item as the model takes it: an array for one input, else a dict name -> array,
    each of the spec's dtype and shape and C-contiguous. Raises InvalidInput."""
    if len(inputs) == 1:
        spec = inputs[0]
        if isinstance(x, Mapping):
            if set(x) != {spec.name}:
                raise InvalidInput(
                    f"model {model!r}: got inputs {sorted(map(str, x))}; expected ['{spec.name}']"
                )
            x = x[spec.name]
        return coerce(model, spec, x)
    if not isinstance(x, Mapping):
        raise InvalidInput(
            f"model {model!r} takes {len(inputs)} inputs; pass a dict "
            f"{{name: array}} with keys {[s.name for s in inputs]}"
        )
    want = {s.name for s in inputs}
    got = set(x)
    if got != want:
        missing, extra = sorted(want - got), sorted(map(str, got - want))
        raise InvalidInput(
            f"model {model!r}: inputs do not match; missing {missing}, unexpected {extra}"
        )
    return {s.name: coerce(model, s, x[s.name]) for s in inputs}


def coerce(model: str, spec: TensorSpec, value: Any) -> np.ndarray:
    """``value`` as a C-contiguous array of ``spec``'s dtype and shape; InvalidInput if it
    cannot be one without losing its kind (ints may become floats, not the reverse)."""
    where = f"model {model!r}: input {spec.name!r}"
    arr = _of_dtype(where, spec, value)
    if arr.shape != spec.shape:
        hint = ""
        if arr.shape == (1, *spec.shape) or (
            arr.ndim == len(spec.shape) + 1 and arr.shape[1:] == spec.shape
        ):
            hint = " (infer takes one item without the batch dimension; use infer_batch)"
        raise InvalidInput(f"{where} has shape {arr.shape}; expected {spec.shape} per item{hint}")
    arr = np.ascontiguousarray(arr)
    if spec.finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInput(f"{where} contains NaN or Inf; the model accepts finite values only")
    return arr


def _of_dtype(where: str, spec: TensorSpec, value: Any) -> np.ndarray:
    # ``value`` as an array of the spec's dtype (any shape); InvalidInput naming ``where``.
    if isinstance(value, np.ndarray):
        if value.dtype != spec.dtype:
            raise InvalidInput(
                f"{where} has dtype {value.dtype}; expected {spec.datatype} ({spec.dtype})"
            )
        return value
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where} is not array-like: {exc}") from None
    if arr.dtype.kind in "OSUV":
        raise InvalidInput(f"{where} holds {arr.dtype} values; expected {spec.datatype} numbers")
    if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind") and not (
        arr.dtype.kind in "biu" and spec.dtype.kind in "fc"
    ):
        raise InvalidInput(
            f"{where} holds {arr.dtype} values; expected {spec.datatype} ({spec.dtype})"
        )
    return arr.astype(spec.dtype)


def as_rows(model: str, inputs: Sequence[TensorSpec], batch: Any) -> Any:
    """N items given with a leading dimension N (one array, or a dict name -> array) as the
    model takes them: an array ``[N, *shape]`` for one input, else a dict name -> array, each
    of the spec's dtype and C-contiguous, N >= 1. Raises InvalidInput (NaN/Inf is left to the
    core's check)."""
    arrays = batch if isinstance(batch, Mapping) else {inputs[0].name: batch}
    want = [s.name for s in inputs]
    if set(arrays) != set(want):
        raise InvalidInput(
            f"model {model!r}: got inputs {sorted(map(str, arrays))}; expected {want}"
        )
    cols = {s.name: _rows_of(model, s, arrays[s.name]) for s in inputs}
    sizes = {a.shape[0] for a in cols.values()}
    if len(sizes) != 1:
        raise InvalidInput(
            f"model {model!r}: every input needs the same leading batch dimension; got "
            + ", ".join(f"{k}: {cols[k].shape}" for k in want)
        )
    if sizes == {0}:
        raise InvalidInput(f"model {model!r}: the batch is empty")
    return cols[want[0]] if len(want) == 1 else cols


def _rows_of(model: str, spec: TensorSpec, value: Any) -> np.ndarray:
    where = f"model {model!r}: input {spec.name!r}"
    arr = _of_dtype(where, spec, value)
    if arr.ndim != len(spec.shape) + 1 or arr.shape[1:] != spec.shape:
        dims = "".join(f", {d}" for d in spec.shape) or ","
        raise InvalidInput(
            f"{where} has shape {arr.shape}; infer_batch takes a leading batch dimension: "
            f"expected (N{dims})"
        )
    return np.ascontiguousarray(arr)
