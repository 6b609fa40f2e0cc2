"""Wire forms of tensors and JSON text for the Open Inference Protocol: pure functions.

* BF16 has no numpy dtype: tensors are carried as ``uint16`` bit patterns (the upper half of
  a float32); :func:`float_to_bf16_bits` rounds to the nearest BF16, ties to even.
* BYTES tensors are numpy object arrays of ``bytes``; in binary form each element is a
  4-byte little-endian length followed by that many bytes.
* Fixed-size tensors travel as little-endian arrays of :data:`WIRE_DTYPES`.
* JSON goes through orjson (a dependency: several times faster than the standard library on
  large tensors); the standard library takes only what orjson refuses or cannot write (NaN and
  infinities, UTF-16/32 text, integers beyond 64 bits, very deep nesting).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import orjson

from ..types import DATATYPES
from .errors import ProtocolError

__all__ = [
    "WIRE_DTYPES",
    "bf16_bits_to_float32",
    "deserialize_bytes_tensor",
    "dumps_response",
    "float_to_bf16_bits",
    "loads",
    "serialize_bytes_tensor",
]

# Fixed-size datatypes: the little-endian numpy dtype of the wire format.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: dt.newbyteorder("<") for name, dt in DATATYPES.items() if name != "BYTES"
}
_U32 = struct.Struct("<I")


# --------------------------------------------------------------------------------- BF16


def float_to_bf16_bits(values: Any) -> np.ndarray:
    """BF16 bit patterns (uint16) of ``values``, rounded to nearest, ties to even.

    Float64 input is first narrowed to float32 with round-to-odd, which makes the second
    rounding to BF16 exact (float32 has more than 8 + 2 significand bits), so the result is
    the correctly rounded BF16 of the float64 value. NaN becomes a quiet NaN with its sign;
    values beyond BF16's range become infinities.
    """
    x = np.asarray(values)
    if x.dtype == np.float32:
        bits = x.view(np.uint32).copy()
    else:
        x64 = x.astype(np.float64, copy=False)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            f32 = x64.astype(np.float32)
            back = f32.astype(np.float64)
        bits = f32.view(np.uint32).copy()
        inexact = (back != x64) & np.isfinite(back) & np.isfinite(x64)
        if inexact.any():
            # Round to odd: truncate toward zero, then set the lowest bit (sticky).
            overshoot = inexact & (np.abs(back) > np.abs(x64))
            bits[overshoot] -= np.uint32(1)
            bits[inexact] |= np.uint32(1)
    sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
    is_nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    bias = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    out: np.ndarray = ((bits + bias) >> np.uint32(16)).astype(np.uint16)
    if is_nan.any():
        out[is_nan] = (sign[is_nan] | np.uint32(0x7FC0)).astype(np.uint16)
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of BF16 bit patterns (exact: every BF16 is a float32)."""
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    out: np.ndarray = wide.view(np.float32)
    return out


# --------------------------------------------------------------------------------- BYTES


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Binary form of a BYTES tensor: each element (row-major) as 4-byte LE length + bytes.

    Elements may be ``bytes``, ``bytearray``, ``memoryview`` or ``str`` (encoded as UTF-8);
    anything else raises ``TypeError``.
    """
    parts: list[bytes] = []
    append = parts.append
    for item in np.asarray(array, dtype=object).ravel(order="C"):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif isinstance(item, (bytearray, memoryview, np.bytes_)):
            item = bytes(item)
        elif not isinstance(item, bytes):
            raise TypeError(f"BYTES element must be bytes or str, got {type(item).__name__}")
        if len(item) > 0xFFFFFFFF:
            raise ValueError("BYTES element longer than 2**32 - 1 bytes")
        append(_U32.pack(len(item)))
        append(item)
    return b"".join(parts)


def deserialize_bytes_tensor(buf: bytes | memoryview, count: int) -> np.ndarray:
    """Parse exactly ``count`` length-prefixed elements that fill ``buf`` exactly.

    Returns a 1-D object array of ``bytes``; raises :class:`ProtocolError` (400) when the
    buffer is short, long, or a length runs past its end.
    """
    mv = memoryview(buf).cast("B")
    n = len(mv)
    # Each element takes at least its 4-byte prefix: a count beyond that cannot fit.
    if count * 4 > n:
        raise ProtocolError(
            400, f"BYTES data of {n} bytes cannot hold {count} elements (4-byte prefix each)"
        )
    out = np.empty(count, dtype=object)
    pos = 0
    unpack = _U32.unpack_from
    for i in range(count):
        if pos + 4 > n:
            raise ProtocolError(400, f"BYTES data ends inside the length prefix of element {i}")
        (length,) = unpack(mv, pos)
        pos += 4
        end = pos + length
        if end > n:
            raise ProtocolError(
                400, f"BYTES element {i} claims {length} bytes but only {n - pos} remain"
            )
        out[i] = bytes(mv[pos:end])
        pos = end
    if pos != n:
        raise ProtocolError(400, f"BYTES data has {n - pos} bytes left over after {count} elements")
    return out


# --------------------------------------------------------------------------------- JSON


def dumps_response(doc: dict[str, Any], entries: list[dict[str, Any]]) -> bytes:
    """JSON text of a response whose entries' ``data`` may be numpy arrays.

    orjson writes the arrays directly (about 25x faster than
    ``tolist`` + ``json.dumps`` for float tensors). orjson writes NaN and infinities as
    ``null``, so a tensor holding them goes through the standard library, which writes
    ``NaN``/``Infinity``: not standard JSON, but what Triton's clients (rapidjson) and
    Python's json read back.
    """
    try:
        text: bytes = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except (TypeError, orjson.JSONEncodeError):
        pass  # something orjson cannot write (an int beyond 64 bits): use json
    else:
        # The document holds no None, so ``null`` in the text is a NaN or an infinity
        # (or those letters inside a string, when the slower path is merely unneeded).
        if b"null" not in text:
            return text
    for e in entries:
        data = e.get("data")
        if isinstance(data, np.ndarray):
            e["data"] = data.tolist()
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


# orjson (3.8 at least) recurses without a bound and crashes the process on JSON nested a
# million deep. Nesting depth cannot exceed the number of opening brackets, which
# ``bytes.count`` finds at memory speed, so orjson only sees documents that cannot be deep.
_ORJSON_MAX_OPENERS = 512


def loads(data: bytes) -> Any:
    """Parse JSON: orjson when it is safe, else the standard library, which also takes what
    orjson refuses (NaN/Infinity tokens, UTF-16/32 text)."""
    if data.count(b"[") + data.count(b"{") <= _ORJSON_MAX_OPENERS:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)
