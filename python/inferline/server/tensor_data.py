"""A tensor's data, decoded from its wire form into numpy: JSON values (flat or nested, checked
element by element against the datatype) or Triton's binary tensor bytes.

Pure functions used by :mod:`.protocol`'s request parser; every fault raises
:class:`ProtocolError` 400 with a message that names the tensor (``where``) and what was wrong.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ..types import DATATYPES, FLOAT_DATATYPES
from .codec import WIRE_DTYPES, deserialize_bytes_tensor, float_to_bf16_bits
from .errors import ProtocolError

__all__ = ["bad", "binary_tensor", "json_tensor", "jtype"]

_INT_TYPES = frozenset(("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"))
_FLOAT_ONLY = {float}
_FLOAT_MAX = {name: float(np.finfo(DATATYPES[name]).max) for name in ("FP16", "FP32")}


def bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def flatten(data: list[Any], shape: tuple[int, ...], count: int, where: str) -> list[Any]:
    """Row-major leaves of JSON ``data`` given flat, nested (natural form) or nested with
    the trailing dimensions flattened. Nesting must be regular and match the shape."""
    level: list[Any] = data
    dims = [len(data)]
    ndim = max(len(shape), 1)
    while level:
        first = level[0]
        if not isinstance(first, list):
            break
        if len(dims) >= ndim:
            raise bad(f"{where}: 'data' is nested deeper than the shape {list(shape)} allows")
        if not all(type(v) is list for v in level):
            raise bad(f"{where}: 'data' mixes arrays and values at the same depth")
        lengths = set(map(len, level))
        if len(lengths) != 1:
            raise bad(f"{where}: nested 'data' is ragged (rows of lengths {sorted(lengths)[:5]})")
        dims.append(lengths.pop())
        level = list(itertools.chain.from_iterable(level))
    if len(level) != count:
        raise bad(
            f"{where}: 'data' has {len(level)} elements but shape {list(shape)} needs {count}"
        )
    if len(dims) > 1 and tuple(dims[:-1]) != shape[: len(dims) - 1]:
        raise bad(
            f"{where}: nested 'data' has dimensions {dims}, which do not match shape {list(shape)}"
        )
    return level


def json_tensor(
    data: Any, datatype: str, shape: tuple[int, ...], count: int, where: str
) -> np.ndarray:
    if not isinstance(data, list):
        raise bad(f"{where}: 'data' must be an array, got {jtype(data)}")
    flat = flatten(data, shape, count, where)
    kinds = set(map(type, flat))
    if kinds == _FLOAT_ONLY and datatype in _FLOAT_MAX:
        # The common case, JSON floats for FP32 (or FP16) within range: converted directly,
        # which rounds each value as the way through float64 below does. (max() and min()
        # end on NaN only when it comes first; NaN fails the test and takes that way.)
        fmax = _FLOAT_MAX[datatype]
        if -fmax <= min(flat) and max(flat) <= fmax:
            return np.array(flat, dtype=DATATYPES[datatype]).reshape(shape)
    if datatype == "BYTES":
        if kinds - {str}:
            raise bad(f"{where}: BYTES data must be strings, found {kind_names(kinds - {str})}")
        arr = np.empty(count, dtype=object)
        try:
            arr[:] = [s.encode("utf-8") for s in flat]
        except UnicodeEncodeError:
            raise bad(f"{where}: BYTES data holds a string that is not valid UTF-8") from None
        return arr.reshape(shape)
    if datatype == "BOOL":
        if kinds - {bool}:
            raise bad(f"{where}: BOOL data must be true/false, found {kind_names(kinds - {bool})}")
        return np.array(flat, dtype=np.bool_).reshape(shape)
    if datatype in _INT_TYPES:
        if kinds - {int}:
            extra = kinds - {int}
            floats = [v for v in flat if type(v) is float]
            if extra == {float} and all(v.is_integer() and abs(v) >= 2**63 for v in floats):
                # orjson reads integers beyond 64 bits as floats: still an integer out of range
                raise bad(
                    f"{where}: value {int(floats[0])} is out of range for {datatype} "
                    f"[{np.iinfo(DATATYPES[datatype]).min}, {np.iinfo(DATATYPES[datatype]).max}]"
                )
            nan = any(math.isnan(v) for v in floats)
            found = "NaN" if nan else kind_names(extra)
            raise bad(f"{where}: {datatype} data must be integers, found {found}")
        target = DATATYPES[datatype]
        info = np.iinfo(target)
        if not flat:
            return np.empty(shape, dtype=target)
        # Python ints: the exact range check needs no numpy overflow semantics.
        lo, hi = min(flat), max(flat)
        if lo < info.min or hi > info.max:
            out_of_range = lo if lo < info.min else hi
            raise bad(
                f"{where}: value {out_of_range} is out of range for {datatype} "
                f"[{info.min}, {info.max}]"
            )
        return np.array(flat, dtype=target).reshape(shape)
    if datatype in FLOAT_DATATYPES:
        if kinds - {int, float}:
            found = kind_names(kinds - {int, float})
            raise bad(f"{where}: {datatype} data must be numbers, found {found}")
        try:
            values = np.array(flat, dtype=np.float64)
        except OverflowError:
            raise bad(f"{where}: an integer in {datatype} data is too large for a float") from None
        if datatype == "BF16":
            return float_to_bf16_bits(values).reshape(shape)
        if datatype == "FP64":
            return values.reshape(shape)
        # Finite values beyond the datatype's range round to +-inf, as IEEE casts do. The
        # errstate that silences numpy's overflow warning costs more than parsing a small
        # tensor, so it is entered only when a value may overflow. (Python's max() ends on
        # NaN only when the first value is NaN; NaN fails the test and takes the safe path.)
        target = DATATYPES[datatype]
        fmax = _FLOAT_MAX[datatype]
        if flat and -fmax <= min(flat) and max(flat) <= fmax:
            return values.astype(target).reshape(shape)
        with np.errstate(over="ignore"):
            return values.astype(target).reshape(shape)
    raise bad(f"{where}: unknown datatype {datatype!r}")  # unreachable: checked by caller


def kind_names(kinds: set[type]) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        dict: "object",
        list: "array",
        type(None): "null",
    }
    return ", ".join(sorted(names.get(k, k.__name__) for k in kinds))


def binary_tensor(
    chunk: memoryview, datatype: str, shape: tuple[int, ...], count: int, where: str
) -> np.ndarray:
    if datatype == "BYTES":
        return deserialize_bytes_tensor(chunk, count).reshape(shape)
    wire = WIRE_DTYPES[datatype]
    expected = count * wire.itemsize
    if len(chunk) != expected:
        raise bad(
            f"{where}: binary_data_size is {len(chunk)} bytes but shape {list(shape)} of "
            f"{datatype} needs {expected}"
        )
    arr = np.frombuffer(chunk, dtype=wire, count=count)
    if datatype == "BOOL":
        raw = arr.view(np.uint8)
        if count and int(raw.max()) > 1:
            raise bad(f"{where}: BOOL binary data must hold bytes 0 or 1")
    native = DATATYPES[datatype]
    if arr.dtype != native or not arr.flags.aligned:
        # Big-endian host, or an element offset that is not a multiple of its size.
        arr = arr.astype(native)
    return arr.reshape(shape)
