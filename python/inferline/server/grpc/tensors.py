"""ModelInfer's messages in the HTTP path's forms: the request as the dict the REST parser
checks, the answer from the engine's arrays.

A request's tensors come either all in ``raw_input_contents`` (one entry per input, in order,
in the binary tensor data form; what tritonclient sends) or each in its input's typed
``contents`` field (``fp32_contents`` for FP32, ``int_contents`` for INT8/16/32, ...; FP16
and BF16 have none). The request becomes the REST form's dict, raw data declared as
``binary_data_size`` and typed data as ``data``, and goes through the same checks as an HTTP
request (:func:`..protocol.check_infer_doc`), so both transports refuse the same requests
with the same messages. A plain request as tritonclient sends it (raw contents only, no
parameters, no requested outputs, numeric data that matches the model's signature) takes a
shorter way straight to its arrays (:func:`raw_request`); anything else, including anything
those checks would refuse, goes the full way, so every refusal keeps its message. The answer
is raw when the request was (or when an output's datatype
has no typed field), typed otherwise; the parameters a model's stages report (the text
encoder's ``{"truncated": true}``) go in the response's ``parameters`` map, where the REST
answer has them (:func:`set_parameters`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...types import DATATYPES, LIMITS
from ..codec import WIRE_DTYPES
from ..errors import ProtocolError
from ..protocol import InferHeader, InferRequest, check_infer_doc
from ..responses import binary_values
from . import kserve_v2_pb2 as pb

__all__ = ["TYPED_FIELD", "encode_response", "raw_request", "request_header", "set_parameters"]

#: The typed ``contents`` field of each datatype that has one.
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

_U32 = struct.Struct("<I")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def _params(entries: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A parameters map as the REST form's JSON object (the set member of each oneof)."""
    out: dict[str, Any] = {}
    for key, p in entries.items():
        which = p.WhichOneof("parameter_choice")
        out[key] = None if which is None else getattr(p, which)
    return out


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    """Writes ``values`` (the REST form's JSON object) into a message's ``parameters`` map:
    bool as ``bool_param``, int as ``int64_param`` (``uint64_param`` past int64), float as
    ``double_param``, str as ``string_param``, anything else as its JSON text in
    ``string_param`` (the REST answer's value, which gRPC has no field for)."""
    for key, value in values.items():
        p = target[key]
        if isinstance(value, bool):  # before int: bool is an int
            p.bool_param = value
        elif isinstance(value, int):
            if value >= 1 << 63:
                p.uint64_param = value
            else:
                p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        elif isinstance(value, str):
            p.string_param = value
        else:
            p.string_param = json.dumps(value, default=str)


def request_header(msg: pb.ModelInferRequest) -> tuple[InferHeader, bytes | memoryview, bool]:
    """The request checked as :func:`..protocol.parse_infer_header` checks a REST one, the
    bytes its binary inputs refer to (for :meth:`InferHeader.tensors`), and whether it sent
    raw contents. Raises :class:`ProtocolError`."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise _bad(
            f"raw_input_contents has {len(raw)} entries but the request has "
            f"{len(msg.inputs)} inputs; give one entry per input, in order"
        )
    chunks: list[bytes] = []
    inputs = []
    for i, t in enumerate(msg.inputs):
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        params = _params(t.parameters)
        where = f"input {t.name[:80]!r}"
        if raw:
            if t.HasField("contents"):
                raise _bad(f"{where}: give raw_input_contents or typed contents, not both")
            chunk: bytes | None = raw[i]
        else:
            chunk, data = _typed(t, where)
            if chunk is None:
                entry["data"] = data
        if chunk is not None:
            params["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        if params:
            entry["parameters"] = params
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs}
    if msg.id:
        doc["id"] = msg.id
    if msg.parameters:
        doc["parameters"] = _params(msg.parameters)
    if msg.outputs:
        doc["outputs"] = [
            {"name": o.name, "parameters": _params(o.parameters)} for o in msg.outputs
        ]
    if not chunks:
        return check_infer_doc(doc, binary_length=None), b"", False
    tail = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return check_infer_doc(doc, binary_length=len(tail)), tail, bool(raw)


def raw_request(msg: pb.ModelInferRequest, info: Any) -> tuple[InferRequest, int] | None:
    """The request with its arrays and its number of rows, when it is the plain form that
    tritonclient sends and it fits ``info`` (the model version's info) exactly: every input
    in ``raw_input_contents``, in the model's input order, with the model's datatype (not
    BYTES or BOOL, whose data need element checks), the model's shape behind a batch
    dimension of at least 1 shared by all, and exactly the bytes that shape needs; no
    parameters, no typed contents, no requested outputs. ``None`` otherwise: the request
    then goes through :func:`request_header` and the route's checks, which accept what is
    valid and refuse the rest with their messages. What passes here passes those checks
    too (the row limits are still the caller's to check), with the same arrays."""
    raw = msg.raw_input_contents
    tensors = msg.inputs
    specs = info.inputs
    n_inputs = len(specs)
    if len(raw) != n_inputs or len(tensors) != n_inputs or not n_inputs:
        return None
    if msg.parameters or msg.outputs:
        return None
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    rows = 0
    for t, spec, chunk in zip(tensors, specs, raw, strict=True):
        name = t.name
        datatype = t.datatype
        if name != spec.name or datatype != spec.datatype or t.parameters:
            return None
        wire = WIRE_DTYPES.get(datatype)
        if wire is None or datatype == "BOOL" or t.HasField("contents"):
            return None
        shape = t.shape[:]  # a list: the cheapest copy out of the message
        n = shape[0] if shape else 0
        if n < 1 or (rows and n != rows) or shape[1:] != list(spec.shape):
            return None
        if len(shape) > LIMITS.max_ndim:
            return None
        rows = n
        count = 1
        for d in shape:
            count *= d
        if len(chunk) != count * wire.itemsize:
            return None
        arr = np.frombuffer(chunk, dtype=wire, count=count)
        native = DATATYPES[datatype]
        if arr.dtype != native or not arr.flags.aligned:  # a big-endian host
            arr = arr.astype(native)
        inputs[name] = arr.reshape(shape)
        datatypes[name] = datatype
    return InferRequest(id=msg.id or None, inputs=inputs, datatypes=datatypes), rows


def _typed(t: pb.ModelInferRequest.InferInputTensor, where: str) -> tuple[bytes | None, Any]:
    """A typed input as the REST form gives it: BYTES as binary data (its elements need not
    be UTF-8), anything else as a flat ``data`` list."""
    field = TYPED_FIELD.get(t.datatype)
    given = [f.name for f, _ in t.contents.ListFields()]
    if field is None:
        if t.datatype in DATATYPES:  # FP16, BF16
            raise _bad(
                f"{where}: {t.datatype} has no typed contents field; send the tensor in "
                "raw_input_contents"
            )
        return None, []  # the checks name the unknown datatype
    if given and given != [field]:
        raise _bad(f"{where}: {t.datatype} data goes in contents.{field}, got {', '.join(given)}")
    values = getattr(t.contents, field)
    if t.datatype == "BYTES":
        return b"".join(_U32.pack(len(v)) + v for v in values), None
    return None, list(values)


def encode_response(
    model_name: str,
    model_version: int | str,
    req: InferRequest,
    outputs: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
    *,
    raw: bool,
    parameters: Mapping[str, Any] | None = None,
    into: pb.ModelInferResponse | None = None,
) -> pb.ModelInferResponse:
    """The answer to ``req``: the outputs it asked for (all, in ``outputs`` order, when it
    named none), raw when ``raw`` or when one of them has no typed field, else typed.
    ``parameters`` (what the model's stages reported) go in the response's map, as the REST
    answer carries them in its ``parameters`` object; the REST answer has none per output
    but ``binary_data_size``, which gRPC does not need, so no output carries any. ``into``:
    an empty message to fill and return (a stream answer's ``infer_response``, so that the
    answer is not copied into it), else a new one."""
    names = list(outputs) if req.outputs is None else [r.name for r in req.outputs]
    typed = not raw and all(datatypes[n] in TYPED_FIELD for n in names)
    resp = pb.ModelInferResponse() if into is None else into
    resp.model_name = model_name
    resp.model_version = str(model_version)
    if req.id:
        resp.id = req.id
    if parameters:
        set_parameters(resp.parameters, parameters)
    for name in names:
        arr = np.asarray(outputs[name])
        datatype = datatypes[name]
        tensor = resp.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        if not typed:
            resp.raw_output_contents.append(binary_values(arr, datatype))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(
                v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in arr.reshape(-1)
            )
        else:
            getattr(tensor.contents, TYPED_FIELD[datatype]).extend(arr.reshape(-1).tolist())
    return resp
