"""An ONNX graph's inputs and outputs read from its protobuf bytes, without onnxruntime.

The server process of a model with ``isolation = "process"`` needs only the graph's signature
(names, element types, shapes) to size the shared memory and check model.toml; its child
processes build the ``InferenceSession``. This reader gives the signature as onnxruntime's
``get_inputs()``/``get_outputs()`` would: graph inputs that are initializers are left out,
types are spelt ``tensor(float)``, a dimension is an int, a symbol (str) or None, and an input
without a shape has an empty one. One difference: onnxruntime infers what the graph leaves
out of an output's shape, which needs the session; here such an output has the dimensions the
graph gives (None where it gives none) or, without any shape, ``shape`` None.
"""

from __future__ import annotations

from dataclasses import dataclass

from .onnx_external import ProtobufError, fields

__all__ = ["GraphPort", "graph_signature"]

# TensorProto.DataType -> onnxruntime's element names (onnx.proto).
_ELEMENTS = {
    1: "float",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "string",
    9: "bool",
    10: "float16",
    11: "double",
    12: "uint32",
    13: "uint64",
    14: "complex64",
    15: "complex128",
    16: "bfloat16",
}
# ModelProto.graph; GraphProto.initializer, input, output, sparse_initializer;
# ValueInfoProto.name, type; TensorProto.name; SparseTensorProto.values.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE = 5, 11, 12, 15
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TENSOR_NAME, _SPARSE_VALUES = 8, 1
# TypeProto's kinds (the field holding each); Tensor.elem_type and shape; Shape.dim;
# Dimension.dim_value and dim_param.
_TYPE_KINDS = {1: "tensor", 4: "seq", 5: "map", 8: "sparse_tensor", 9: "optional"}
# (Sequence's and Optional's elem_type, Map's key_type, are field 1 too; Map's value_type 2.)
_ELEM_TYPE, _SHAPE, _DIM, _DIM_VALUE, _DIM_PARAM, _MAP_VALUE = 1, 2, 1, 1, 2, 2


@dataclass(frozen=True)
class GraphPort:
    """One graph input or output as onnxruntime describes it (``NodeArg``'s fields)."""

    name: str
    type: str
    shape: tuple[int | str | None, ...] | None  # None: the graph gives no shape (outputs)


def _text(payload: memoryview) -> str:
    return bytes(payload).decode("utf-8", "replace")


def _message(payload: memoryview | int | None, what: str) -> memoryview:
    if not isinstance(payload, memoryview):
        raise ProtobufError(f"{what} is not a message")
    return payload


def _dim(payload: memoryview) -> int | str | None:
    dim: int | str | None = None
    for field, value in fields(payload):
        if field == _DIM_VALUE and isinstance(value, int):
            dim = value
        elif field == _DIM_PARAM and isinstance(value, memoryview):
            dim = _text(value)
    return dim


def _tensor(payload: memoryview) -> tuple[str, tuple[int | str | None, ...] | None]:
    """A (sparse) tensor type's element name and shape (None when the graph gives none)."""
    elem, shape = 0, None
    for field, value in fields(payload):
        if field == _ELEM_TYPE and isinstance(value, int):
            elem = value
        elif field == _SHAPE:
            dims = fields(_message(value, "a shape"))
            shape = tuple(_dim(_message(d, "a dimension")) for n, d in dims if n == _DIM)
    return _ELEMENTS.get(elem, f"type {elem}"), shape


def _type(payload: memoryview, depth: int = 0) -> tuple[str, tuple[int | str | None, ...] | None]:
    """The type's name as onnxruntime spells it, and a tensor's shape."""
    if depth > 16:
        raise ProtobufError("types nested too deeply")
    for field, value in fields(payload):
        kind = _TYPE_KINDS.get(field)
        if kind is None:
            continue
        body = _message(value, f"a {kind} type")
        if kind in ("tensor", "sparse_tensor"):
            elem, shape = _tensor(body)
            return f"{kind}({elem})", shape
        inner = {f: v for f, v in fields(body)}
        value_type = inner.get(_MAP_VALUE if kind == "map" else _ELEM_TYPE)
        held = _type(_message(value_type, f"a {kind}'s element type"), depth + 1)[0]
        if kind == "map":
            key = inner.get(_ELEM_TYPE)
            key_name = _ELEMENTS.get(key, f"type {key}") if isinstance(key, int) else "?"
            return f"map({key_name},{held})", ()
        return f"{kind}({held})", ()
    return "unknown", ()


def _port(payload: memoryview) -> GraphPort:
    name, kind = "", "unknown"
    shape: tuple[int | str | None, ...] | None = ()
    for field, value in fields(payload):
        if field == _VALUE_NAME and isinstance(value, memoryview):
            name = _text(value)
        elif field == _VALUE_TYPE:
            kind, shape = _type(_message(value, "a value's type"))
    return GraphPort(name, kind, shape)


def graph_signature(model: bytes) -> tuple[tuple[GraphPort, ...], tuple[GraphPort, ...]]:
    """The graph's inputs (initializers left out) and outputs, in graph order. Raises
    ProtobufError for bytes that are not a model with a graph."""
    graph = None
    for field, value in fields(memoryview(model)):
        if field == _MODEL_GRAPH:
            graph = _message(value, "the graph")
    if graph is None:
        raise ProtobufError("no graph")
    inputs: list[GraphPort] = []
    outputs: list[GraphPort] = []
    constants: set[str] = set()
    for field, value in fields(graph):
        if field == _GRAPH_INPUT:
            inputs.append(_port(_message(value, "an input")))
        elif field == _GRAPH_OUTPUT:
            outputs.append(_port(_message(value, "an output")))
        elif field == _GRAPH_INITIALIZER:
            constants |= {
                _text(v)
                for f, v in fields(_message(value, "an initializer"))
                if f == _TENSOR_NAME and isinstance(v, memoryview)
            }
        elif field == _GRAPH_SPARSE:
            for f, v in fields(_message(value, "a sparse initializer")):
                if f == _SPARSE_VALUES:
                    constants |= {
                        _text(n)
                        for k, n in fields(_message(v, "a tensor"))
                        if k == _TENSOR_NAME and isinstance(n, memoryview)
                    }
    # An input without a shape is a scalar to onnxruntime (it infers nothing for inputs).
    kept = [GraphPort(p.name, p.type, p.shape or ()) for p in inputs if p.name not in constants]
    return tuple(kept), tuple(outputs)
