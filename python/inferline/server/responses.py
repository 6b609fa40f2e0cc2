"""Bodies of the protocol's inference responses: pure functions, no I/O and no engine.

An output goes as JSON data or, when asked (or when a BYTES output is not valid UTF-8), as
binary data after the JSON header (Triton's binary tensor data extension); the header's
length then goes in ``Inference-Header-Content-Length``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..types import DATATYPES
from .codec import WIRE_DTYPES, bf16_bits_to_float32, dumps_response, serialize_bytes_tensor
from .protocol import INFERENCE_HEADER, RequestedOutput

__all__ = ["EncodedResponse", "binary_values", "encode_infer_response"]


@dataclass(frozen=True, slots=True)
class EncodedResponse:
    """An encoded inference response: the body and the headers that go with it."""

    body: bytes
    content_type: str
    header_length: int | None  # value for Inference-Header-Content-Length, None for pure JSON

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers that go with the body, as ASGI's ``http.response.start`` takes them
        (a new list each call: the caller adds its own)."""
        if self.header_length is None and self.content_type == "application/json":
            return [_JSON_CONTENT_TYPE]
        headers = [(b"content-type", self.content_type.encode())]
        if self.header_length is not None:
            headers.append((_INFERENCE_HEADER_KEY, str(self.header_length).encode()))
        return headers


_JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_INFERENCE_HEADER_KEY = INFERENCE_HEADER.lower().encode()
# Datatypes whose arrays orjson writes as they are (the others need a conversion first).
_PLAIN = frozenset(DATATYPES) - {"BYTES", "BF16", "FP16"}


def _json_values(arr: np.ndarray, datatype: str) -> list[Any] | np.ndarray | None:
    """Flat JSON values: a list of str for BYTES (None when not valid UTF-8, so the tensor
    must go as binary), otherwise a flat C-contiguous array that ``dumps_response`` writes."""
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        out: list[Any] = []
        for item in flat:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
                try:
                    out.append(bytes(item).decode("utf-8"))
                except UnicodeDecodeError:
                    return None
            else:
                raise TypeError(f"BYTES output element is {type(item).__name__}")
        return out
    if datatype == "BF16":
        return bf16_bits_to_float32(flat)
    if datatype == "FP16":
        return flat.astype(np.float32)  # exact; orjson has no float16
    return np.ascontiguousarray(flat, dtype=DATATYPES[datatype])


def binary_values(arr: np.ndarray, datatype: str) -> bytes:
    """A tensor in the binary tensor data form (raw little-endian; BYTES length-prefixed)."""
    if datatype == "BYTES":
        return serialize_bytes_tensor(arr)
    wire = WIRE_DTYPES[datatype]
    return np.ascontiguousarray(arr, dtype=wire).tobytes()


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | int | None,
    request_id: str | None,
    outputs: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
    requested: Sequence[RequestedOutput] | None = None,
    binary_data_output: bool = False,
    parameters: Mapping[str, Any] | None = None,
) -> EncodedResponse:
    """Encode an inference response.

    ``outputs`` holds the model's arrays and ``datatypes`` their protocol datatypes (needed for
    BF16, which numpy sees as uint16). ``requested`` selects and orders the outputs (all of
    them, in ``outputs`` order, when ``None``); a requested output's ``binary_data`` overrides
    ``binary_data_output``. BYTES outputs that are not valid UTF-8 cannot be JSON strings and
    are sent as binary data whatever was asked. When any output is binary the body is the
    JSON header followed by the binary tensors and ``header_length`` is set.
    """
    if requested is None and not binary_data_output:
        # The common case, every output as JSON numbers: no per-output dispatch.
        plain: list[dict[str, Any]] = []
        for name, arr in outputs.items():
            datatype = datatypes[name]
            if datatype not in _PLAIN:
                break
            arr = np.asarray(arr)
            plain.append(
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(arr.shape),
                    "data": _json_values(arr, datatype),
                }
            )
        else:
            doc = _document(model_name, model_version, request_id, parameters, plain)
            return EncodedResponse(dumps_response(doc, plain), "application/json", None)
    if requested is None:
        selection = [(name, binary_data_output) for name in outputs]
    else:
        selection = [
            (r.name, binary_data_output if r.binary_data is None else r.binary_data)
            for r in requested
        ]
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, binary in selection:
        arr = np.asarray(outputs[name])
        datatype = datatypes[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        values = None if binary else _json_values(arr, datatype)
        if values is None:
            chunk = binary_values(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = values
        entries.append(entry)
    header = dumps_response(
        _document(model_name, model_version, request_id, parameters, entries), entries
    )
    if not chunks:
        return EncodedResponse(header, "application/json", None)
    return EncodedResponse(header + b"".join(chunks), "application/octet-stream", len(header))


def _document(
    model_name: str,
    model_version: str | int | None,
    request_id: str | None,
    parameters: Mapping[str, Any] | None,
    entries: list[dict[str, Any]],
) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = str(model_version)
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = dict(parameters)
    doc["outputs"] = entries
    return doc
