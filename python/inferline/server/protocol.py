"""Parser of the Open Inference Protocol (KServe v2) REST requests and Triton's extensions.

Pure functions, no I/O and no engine: bytes in, validated numpy arrays out (the responses
are encoded by :mod:`.responses`, the tensors' wire forms are in :mod:`.codec`).

* Requests are JSON, or JSON followed by binary tensor data when the
  ``Inference-Header-Content-Length`` header gives the JSON's length (Triton's binary tensor
  data extension). Every tensor is checked: known datatype (case-sensitive, as the protocol
  says), shape a list of non-negative ints, data length equal to the product of the shape,
  element types that fit the datatype (no bool for an int, no NaN for an int, no int beyond
  the datatype's range), nested or flat JSON data.
* JSON numbers given for BF16 are rounded to the nearest BF16, ties to even.
* Request parameters of the schedule-policy extension: ``priority`` (int >= 0; 0 means the
  default priority, 1 the highest, as in Triton) and ``timeout`` in **microseconds**
  (int >= 0; 0 means no timeout), the unit Triton uses. :attr:`InferRequest.timeout_s`
  gives it in seconds, the unit of ``Engine.infer``.

Anything malformed raises :class:`ProtocolError` with a 4xx status and a message that says
what was wrong and what was expected. No other exception escapes :func:`parse_infer_request`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..types import DATATYPES, LIMITS
from .codec import WIRE_DTYPES, loads
from .errors import ProtocolError
from .tensor_data import bad as _bad
from .tensor_data import binary_tensor, json_tensor
from .tensor_data import jtype as _jtype

__all__ = [
    "INFERENCE_HEADER",
    "MAX_TIMEOUT_US",
    "DeclaredInput",
    "InferHeader",
    "InferRequest",
    "ProtocolError",
    "RequestedOutput",
    "check_infer_doc",
    "check_json_length",
    "parse_header_length",
    "parse_infer_header",
    "parse_infer_request",
]

_EMPTY = memoryview(b"")

#: Header giving the length of the JSON part of a body that carries binary tensor data.
INFERENCE_HEADER = "Inference-Header-Content-Length"

# Bound on the product of a shape's non-zero dimensions. A tensor with a zero dimension has
# no elements, but numpy still refuses shapes whose other dimensions multiply past its index
# range; this keeps such shapes a clean 400. 2**40 elements is far more than any body holds.
_MAX_NONZERO_PRODUCT = 1 << 40
_MAX_DIM = (1 << 63) - 1

#: Largest ``timeout`` parameter (microseconds): one day. Larger values are refused with 400
#: rather than passed on as deadlines no clock arithmetic should have to carry.
MAX_TIMEOUT_US = 86_400 * 1_000_000


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's ``outputs``: a name and how to return it.

    ``binary_data`` is the output's own ``binary_data`` parameter, or ``None`` when it has
    none (the request's ``binary_data_output`` then decides).
    """

    name: str
    binary_data: bool | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class InferRequest:
    """A parsed, validated inference request.

    ``inputs`` maps each input name to its array (BF16 as uint16 bits, BYTES as an object
    array of ``bytes``), in the order the request gave them; ``datatypes`` holds the protocol
    datatype of each, since uint16 alone cannot tell UINT16 from BF16.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: list[RequestedOutput] | None = None
    binary_data_output: bool = False
    priority: int | None = None
    timeout_us: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def timeout_s(self) -> float | None:
        """The ``timeout`` parameter in seconds; ``None`` when absent or 0 (no timeout)."""
        if not self.timeout_us:
            return None
        return self.timeout_us / 1e6


# --------------------------------------------------------------------------------- parsing


def parse_header_length(value: str | bytes | None, body_length: int) -> int | None:
    """Validate an ``Inference-Header-Content-Length`` value against the body's length."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = value.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 19:
        raise _bad(f"{INFERENCE_HEADER} must be a non-negative decimal integer, got {value[:40]!r}")
    length = int(text)
    if length == 0 or length > body_length:
        raise _bad(
            f"{INFERENCE_HEADER} is {length} but the body has {body_length} bytes; it must "
            "give the length of the JSON object at the start of the body"
        )
    return length


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is a subclass of int and is not a number here


def _parameters(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise _bad(f"{where}: 'parameters' must be a JSON object, got {_jtype(params)}")
    return params


def _bool_param(params: Mapping[str, Any], key: str, where: str) -> bool | None:
    if key not in params:
        return None
    v = params[key]
    if not isinstance(v, bool):
        raise _bad(f"{where}: parameter '{key}' must be a boolean, got {_jtype(v)}")
    return v


def _uint_param(params: Mapping[str, Any], key: str, where: str) -> int | None:
    if key not in params:
        return None
    v = params[key]
    if not _is_int(v) or v < 0 or v > _MAX_DIM:
        raise _bad(f"{where}: parameter '{key}' must be a non-negative integer, got {json_repr(v)}")
    return int(v)


def json_repr(v: Any, limit: int = 60) -> str:
    """Short JSON-ish text of a value for an error message."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError, RecursionError):
        text = _jtype(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape(raw: Any, where: str) -> tuple[tuple[int, ...], int]:
    """Validated shape and element count."""
    if not isinstance(raw, list):
        raise _bad(f"{where}: 'shape' must be an array of non-negative integers, got {_jtype(raw)}")
    if len(raw) > LIMITS.max_ndim:
        raise _bad(
            f"{where}: shape has {len(raw)} dimensions; at most {LIMITS.max_ndim} are allowed"
        )
    count = 1
    nonzero = 1
    for d in raw:
        if not _is_int(d) or d < 0 or d > _MAX_DIM:
            raise _bad(
                f"{where}: 'shape' must be an array of non-negative integers, got {json_repr(raw)}"
            )
        count *= d
        if d:
            nonzero *= d
            if nonzero > _MAX_NONZERO_PRODUCT:
                raise _bad(f"{where}: shape {json_repr(raw)} is too large")
    return tuple(raw), count


_UNSUPPORTED_TENSOR_PARAMS = (
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
)


@dataclass(frozen=True)
class DeclaredInput:
    """One input as the request's JSON declares it, before any of its data is converted.

    ``binary`` is the ``(offset, size)`` of its binary data after the JSON header, or
    ``None`` when ``data`` (the JSON value, not yet looked at) carries it.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int
    data: Any = None
    binary: tuple[int, int] | None = None

    @property
    def where(self) -> str:
        return f"input '{_short(self.name, 80)}'"


@dataclass
class InferHeader:
    """A request's JSON part, checked, with its tensors declared but not converted.

    Everything the server checks against the model (names, datatypes, shapes, rows) is here,
    so a request that will be refused is refused before any per-element work;
    :meth:`tensors` then converts the data.
    """

    id: str | None
    inputs: list[DeclaredInput]
    outputs: list[RequestedOutput] | None
    binary_data_output: bool
    priority: int | None
    timeout_us: int | None
    parameters: dict[str, Any]
    binary_bytes: int  # total binary_data_size of the inputs

    def tensors(self, tail: bytes | bytearray | memoryview = b"") -> InferRequest:
        """The request with its arrays: JSON data converted, binary data viewed in ``tail``
        (the bytes after the JSON header), which must hold exactly the declared binary data.
        Raises :class:`ProtocolError`."""
        mv = memoryview(tail).cast("B") if self.binary_bytes or tail else _EMPTY
        if len(mv) != self.binary_bytes:
            raise _bad(
                f"the body has {len(mv)} bytes after the JSON header but the inputs' "
                f"binary_data_size add up to {self.binary_bytes}"
            )
        inputs: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        for d in self.inputs:
            if d.binary is not None:
                off, size = d.binary
                arr = binary_tensor(mv[off : off + size], d.datatype, d.shape, d.count, d.where)
            else:
                arr = json_tensor(d.data, d.datatype, d.shape, d.count, d.where)
            inputs[d.name] = arr
            datatypes[d.name] = d.datatype
        return InferRequest(
            id=self.id,
            inputs=inputs,
            datatypes=datatypes,
            outputs=self.outputs,
            binary_data_output=self.binary_data_output,
            priority=self.priority,
            timeout_us=self.timeout_us,
            parameters=self.parameters,
        )


def parse_infer_request(
    body: bytes | bytearray | memoryview,
    header_length: str | bytes | int | None = None,
    *,
    max_json_bytes: int | None = None,
) -> InferRequest:
    """Parse and validate an inference request body.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (text or int) or
    ``None`` when the whole body is JSON. ``max_json_bytes`` bounds the JSON part (parsing
    JSON costs about ten times its size in memory; binary data costs its size): a larger JSON
    part is refused with 413. Raises :class:`ProtocolError` for anything malformed.

    The same as :func:`parse_infer_header` followed by :meth:`InferHeader.tensors`; the
    server calls the two apart, to check the declared sizes against the model in between.
    """
    mv = memoryview(body).cast("B")
    if isinstance(header_length, int) and not isinstance(header_length, bool):
        header_length = str(header_length)
    hl = parse_header_length(header_length, len(mv))  # type: ignore[arg-type]
    json_end = len(mv) if hl is None else hl
    check_json_length(json_end, max_json_bytes)
    text = body if hl is None and isinstance(body, bytes) else bytes(mv[:json_end])
    binary = None if hl is None else len(mv) - hl
    return parse_infer_header(text, binary_length=binary).tensors(mv[json_end:])


def check_json_length(length: int, max_json_bytes: int | None) -> None:
    """413 when the JSON part of a request is longer than ``max_json_bytes``."""
    if max_json_bytes is not None and length > max_json_bytes:
        raise ProtocolError(
            413,
            f"the JSON part of the request is {length} bytes; the limit is {max_json_bytes} "
            "(send large tensors as binary data)",
        )


def parse_infer_header(
    text: bytes | bytearray | memoryview, *, binary_length: int | None
) -> InferHeader:
    """Parse and check a request's JSON part without converting any tensor data.

    ``binary_length`` is the number of bytes that follow the JSON (the binary tensor data),
    or ``None`` when the request has no ``Inference-Header-Content-Length`` (all JSON).
    Raises :class:`ProtocolError`.
    """
    try:
        doc = loads(bytes(text) if not isinstance(text, bytes) else text)
    except RecursionError:
        raise _bad("request JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise _bad(f"request body is not valid JSON: {_short(str(e))}") from None
    if not isinstance(doc, dict):
        raise _bad(f"request body must be a JSON object, got {_jtype(doc)}")
    return check_infer_doc(doc, binary_length=binary_length)


def check_infer_doc(doc: Mapping[str, Any], *, binary_length: int | None) -> InferHeader:
    """The checks of :func:`parse_infer_header` on a request already decoded into a dict of
    the JSON form (the gRPC server builds one from its message, with typed contents as
    ``data`` and raw contents as ``binary_data_size``). Raises :class:`ProtocolError`."""
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad(f"'id' must be a string, got {_jtype(request_id)}")

    params = _parameters(doc, "request")
    priority = timeout_us = None
    binary_out = False
    if params:
        priority = _uint_param(params, "priority", "request")
        timeout_us = _uint_param(params, "timeout", "request")
        if timeout_us is not None and timeout_us > MAX_TIMEOUT_US:
            raise _bad(
                f"request: parameter 'timeout' is {timeout_us} microseconds; at most "
                f"{MAX_TIMEOUT_US} (one day) is allowed, and 0 means no timeout"
            )
        binary_out = _bool_param(params, "binary_data_output", "request") or False

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("'inputs' must be a non-empty array of input tensors")

    offset = 0
    declared: list[DeclaredInput] = []
    seen_inputs: set[str] = set()
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise _bad(f"input {i}: must be a JSON object, got {_jtype(raw)}")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"input {i}: 'name' must be a non-empty string")
        where = f"input '{_short(name, 80)}'"
        if name in seen_inputs:
            raise _bad(f"{where} is given more than once")
        seen_inputs.add(name)
        datatype = raw.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise _bad(
                f"{where}: unknown datatype {json_repr(datatype)}; expected one of "
                f"{', '.join(DATATYPES)}"
            )
        shape, count = _shape(raw.get("shape"), where)
        tparams = _parameters(raw, where)
        size = None
        if tparams:
            for key in _UNSUPPORTED_TENSOR_PARAMS:
                if key in tparams:
                    raise _bad(f"{where}: parameter '{key}' (shared memory) is not supported")
            size = _uint_param(tparams, "binary_data_size", where)
        if size is not None:
            if "data" in raw:
                raise _bad(f"{where}: give either 'data' or 'binary_data_size', not both")
            if binary_length is None:
                raise _bad(
                    f"{where} has binary_data_size but the request has no {INFERENCE_HEADER} header"
                )
            if offset + size > binary_length:
                raise _bad(
                    f"{where}: binary_data_size {size} runs past the end of the body "
                    f"({binary_length - offset} bytes of binary data remain)"
                )
            if datatype != "BYTES" and size != count * WIRE_DTYPES[datatype].itemsize:
                raise _bad(
                    f"{where}: binary_data_size is {size} bytes but shape {list(shape)} of "
                    f"{datatype} needs {count * WIRE_DTYPES[datatype].itemsize}"
                )
            declared.append(DeclaredInput(name, datatype, shape, count, binary=(offset, size)))
            offset += size
        else:
            if "data" not in raw:
                raise _bad(f"{where}: 'data' is missing (or give binary_data_size)")
            if not isinstance(raw["data"], list):
                raise _bad(f"{where}: 'data' must be an array, got {_jtype(raw['data'])}")
            declared.append(DeclaredInput(name, datatype, shape, count, data=raw["data"]))
    if binary_length is not None and offset != binary_length:
        raise _bad(
            f"the body has {binary_length} bytes after the JSON header but the inputs' "
            f"binary_data_size add up to {offset}"
        )

    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise _bad(f"'outputs' must be an array, got {_jtype(raw_outputs)}")
        outputs = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict):
                raise _bad(f"output {i}: must be a JSON object, got {_jtype(raw)}")
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                raise _bad(f"output {i}: 'name' must be a non-empty string")
            where = f"output '{_short(name, 80)}'"
            if name in seen:
                raise _bad(f"{where} is requested more than once")
            seen.add(name)
            oparams = _parameters(raw, where)
            if "classification" in oparams:
                raise _bad(f"{where}: the classification extension is not supported")
            for key in _UNSUPPORTED_TENSOR_PARAMS:
                if key in oparams:
                    raise _bad(f"{where}: parameter '{key}' (shared memory) is not supported")
            outputs.append(
                RequestedOutput(name, _bool_param(oparams, "binary_data", where), oparams)
            )

    return InferHeader(
        id=request_id,
        inputs=declared,
        outputs=outputs,
        binary_data_output=binary_out,
        priority=priority,
        timeout_us=timeout_us,
        parameters=params,
        binary_bytes=offset,
    )


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
