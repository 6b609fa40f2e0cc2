"""The external-data locations an ONNX model names, read from its protobuf wire format.

onnxruntime refuses external-data paths that are absolute or leave the model's folder only
since 1.24, and Python 3.10 has no wheel of 1.24 or later: inferline checks the locations
itself, whatever onnxruntime is installed. The reader walks only the messages that can hold a
tensor (the ``onnx`` package is a test dependency, not a runtime one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

__all__ = ["ProtobufError", "escaping_location", "fields"]


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


# field numbers from onnx.proto: message -> {field: message it holds}
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ProtobufError("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf: memoryview) -> Iterator[tuple[int, memoryview | int | None]]:
    """(field number, payload) for each field: the bytes of a length-delimited field, the
    value of a varint, None for a fixed-width field."""
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ProtobufError("field number 0")
        if wire == 0:
            value, i = _varint(buf, i)
            yield field, value
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            if i > len(buf):
                raise ProtobufError("truncated fixed-width field")
            yield field, None
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ProtobufError("truncated length-delimited field")
            yield field, buf[i : i + n]
            i += n
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def _locations(buf: memoryview, kind: str, depth: int = 0) -> Iterator[str]:
    if depth > 64:
        raise ProtobufError("messages nested too deeply")
    children = _CHILDREN.get(kind, {})
    for field, payload in fields(buf):
        child = children.get(field)
        if not isinstance(payload, memoryview) or child is None:
            continue
        if child == "entry":
            entry = {f: bytes(p) for f, p in fields(payload) if isinstance(p, memoryview)}
            if entry.get(_ENTRY_KEY) == b"location":
                yield entry.get(_ENTRY_VALUE, b"").decode("utf-8", "replace")
        else:
            yield from _locations(payload, child, depth + 1)


def escaping_location(model: bytes) -> str | None:
    """The first external-data location in ``model`` that is absolute or climbs out of the
    model's folder with ``..``, or None. Raises ProtobufError for malformed bytes."""
    for location in _locations(memoryview(model), "model"):
        path = PurePosixPath(location.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts or (location[1:2] == ":"):
            return location
    return None
