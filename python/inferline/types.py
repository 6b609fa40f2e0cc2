"""Tensor signatures and the Open Inference Protocol datatype names."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _core

__all__ = [
    "DATATYPES",
    "DEFAULTS",
    "FLOAT_DATATYPES",
    "LIMITS",
    "Defaults",
    "Limits",
    "TensorSpec",
    "datatype_of",
    "numpy_dtype",
]

# Open Inference Protocol (KServe v2) datatype -> numpy dtype. BF16 has no numpy dtype: it is
# carried as uint16 bit patterns (the upper half of a float32), as Triton does.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(np.uint16),
    "BYTES": np.dtype(np.object_),
}

# Floating-point datatypes: the ones a NaN/Inf check (``finite``) applies to.
FLOAT_DATATYPES: tuple[str, ...] = ("FP16", "FP32", "FP64", "BF16")


# The one table of limits and defaults lives in the core (cpp/include/inferline/limits.hpp):
# the native scheduler enforces it, and every Python layer (Batching, model.toml, the HTTP
# protocol) reads these read-only views of it instead of repeating a number.
Limits = _core.LimitsTable
Defaults = _core.DefaultsTable
LIMITS: Limits = _core.limits
DEFAULTS: Defaults = _core.defaults

_FROM_NUMPY: dict[np.dtype, str] = {
    dt: name for name, dt in DATATYPES.items() if name not in ("BF16", "BYTES")
}


def numpy_dtype(datatype: str) -> np.dtype:
    """numpy dtype for a protocol datatype name (case-insensitive); ValueError if unknown."""
    try:
        return DATATYPES[datatype.upper()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(dtype: np.dtype | type) -> str:
    """Protocol datatype name for a numpy dtype; ValueError if the protocol has none."""
    dt = np.dtype(dtype)
    if dt.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _FROM_NUMPY[dt.newbyteorder("=")]
    except KeyError:
        raise ValueError(f"numpy dtype {dt} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a model, per item (no batch dimension).

    ``datatype`` is a protocol name ("FP32", "INT64", ...) or anything ``numpy.dtype`` takes;
    ``shape`` lists the per-item dimensions. ``finite=True`` makes the engine refuse NaN/Inf
    (inputs, as ``InvalidInput``) or report them (outputs, as ``ModelError``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...] = field(default=())
    finite: bool = False

    def __init__(
        self,
        name: str,
        datatype: str | np.dtype | type,
        shape: Iterable[int] = (),
        finite: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor name must be a non-empty string, got {name!r}")
        if isinstance(datatype, str) and datatype.upper() in DATATYPES:
            dt_name = datatype.upper()
        else:
            try:
                dt_name = datatype_of(np.dtype(datatype))
            except TypeError:
                raise ValueError(
                    f"tensor {name!r}: unknown datatype {datatype!r}; expected one of "
                    f"{', '.join(DATATYPES)}"
                ) from None
        dims = tuple(shape) if isinstance(shape, Sequence | Iterable) else (shape,)
        for d in dims:
            if not isinstance(d, int | np.integer) or isinstance(d, bool) or int(d) < 1:
                raise ValueError(
                    f"tensor {name!r}: every dimension must be a positive int, got shape "
                    f"{tuple(dims)!r} (per item, without the batch dimension)"
                )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "datatype", dt_name)
        object.__setattr__(self, "shape", tuple(int(d) for d in dims))
        object.__setattr__(self, "finite", bool(finite))

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the tensor's elements."""
        return DATATYPES[self.datatype]

    @property
    def item_nbytes(self) -> int:
        """Bytes of one item (0 for BYTES, whose size varies)."""
        if self.datatype == "BYTES":
            return 0
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def to_dict(self) -> dict[str, object]:
        """Metadata in the protocol's shape (``-1`` marks the batch dimension)."""
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.shape]}
