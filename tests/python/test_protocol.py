"""Open Inference Protocol codec: requests built by tritonclient, hostile bodies, BF16, BYTES.

The codec is pure, so these tests need neither the native core nor a server. Requests are
built with ``tritonclient.http`` (the client that real users run) wherever it can express
them, and responses are decoded with it, so a round trip proves wire compatibility rather
than agreement with ourselves.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from inferline.server.codec import (
    bf16_bits_to_float32,
    deserialize_bytes_tensor,
    float_to_bf16_bits,
    serialize_bytes_tensor,
)
from inferline.server.errors import encode_error
from inferline.server.protocol import (
    InferRequest,
    ProtocolError,
    RequestedOutput,
    parse_header_length,
    parse_infer_request,
)
from inferline.server.responses import encode_infer_response
from inferline.types import DATATYPES

tc = pytest.importorskip("tritonclient.http")
ml_dtypes = pytest.importorskip("ml_dtypes")

# The numeric protocol datatypes (BF16 has its own tests: JSON carries it as floats).
NUMERIC = [d for d in DATATYPES if d not in ("BYTES", "BF16")]
NP = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def client_body(
    tensors: list[tuple[str, np.ndarray, str]],
    *,
    binary: bool,
    outputs: list[Any] | None = None,
    request_id: str = "",
    priority: int = 0,
    timeout: int | None = None,
) -> tuple[bytes, int | None]:
    """A request body as tritonclient.http builds it (JSON, or JSON + binary tail)."""
    inputs = []
    for name, arr, datatype in tensors:
        ii = tc.InferInput(name, list(arr.shape), datatype)
        ii.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(ii)
    body, json_size = tc.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, priority=priority, timeout=timeout
    )
    return (body.encode() if isinstance(body, str) else body), json_size


def body_of(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def one(datatype: str, shape: list[int], data: Any, **extra: Any) -> bytes:
    return body_of(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data, **extra}]}
    )


def err(body: bytes, header: Any = None, status: int = 400, **kw: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_infer_request(body, header, **kw)
    assert info.value.status == status
    assert str(info.value) == info.value.message
    return info.value.message


# ------------------------------------------------------------------ JSON inputs, every datatype


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("binary", [False, True])
def test_numeric_round_trip_from_tritonclient(datatype: str, binary: bool) -> None:
    rng = np.random.default_rng(7)
    dt = np.dtype(NP[datatype])
    if dt.kind == "b":
        arr = rng.integers(0, 2, size=(3, 4)).astype(bool)
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        arr = rng.integers(info.min, info.max, size=(3, 4), dtype=dt, endpoint=True)
        arr.flat[0], arr.flat[1] = info.min, info.max
    else:
        arr = (rng.standard_normal((3, 4)) * 100).astype(dt)
    body, hl = client_body([("x", arr, datatype)], binary=binary)
    assert (hl is not None) == binary
    req = parse_infer_request(body, hl)
    got = req.inputs["x"]
    assert got.dtype == dt and got.shape == (3, 4)
    np.testing.assert_array_equal(got, arr)
    assert req.datatypes == {"x": datatype}


def test_json_float_specials_and_nested_forms() -> None:
    data = [[1.0, float("nan")], [float("inf"), -float("inf")]]
    req = parse_infer_request(
        json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": data}]}
        ).encode()
    )
    x = req.inputs["x"]
    assert x[0, 0] == 1 and math.isnan(x[0, 1]) and x[1, 0] == np.inf and x[1, 1] == -np.inf
    # natural, flat and partly flattened forms give the same tensor
    want = np.arange(8, dtype=np.int32).reshape(2, 2, 2)
    for d in ([[[0, 1], [2, 3]], [[4, 5], [6, 7]]], list(range(8)), [[0, 1, 2, 3], [4, 5, 6, 7]]):
        got = parse_infer_request(one("INT32", [2, 2, 2], d)).inputs["x"]
        np.testing.assert_array_equal(got, want)


def test_json_ints_accepted_for_floats_and_fp16_rounds_correctly() -> None:
    got = parse_infer_request(one("FP16", [3], [1, 0.1, 65504])).inputs["x"]
    np.testing.assert_array_equal(got, np.array([1, 0.1, 65504], dtype=np.float16))
    # beyond FP16's range: IEEE overflow to inf, no warning escapes (pytest runs -W error)
    assert parse_infer_request(one("FP16", [1], [1e6])).inputs["x"][0] == np.inf


def test_scalar_and_empty_tensors() -> None:
    assert parse_infer_request(one("INT64", [], [5])).inputs["x"].shape == ()
    x = parse_infer_request(one("FP32", [0, 3], [])).inputs["x"]
    assert x.shape == (0, 3) and x.dtype == np.float32
    x = parse_infer_request(one("INT8", [2, 0], [[], []])).inputs["x"]
    assert x.shape == (2, 0)
    x = parse_infer_request(one("BYTES", [0], [])).inputs["x"]
    assert x.shape == (0,) and x.dtype == object


def test_bytes_json_and_binary() -> None:
    arr = np.array([[b"hello", b""], ["\u00e9t\u00e9".encode(), b"x" * 300]], dtype=object)
    for binary in (False, True):
        body, hl = client_body([("s", arr, "BYTES")], binary=binary)
        got = parse_infer_request(body, hl).inputs["s"]
        assert got.dtype == object and got.shape == (2, 2)
        assert got.tolist() == arr.tolist()
    # non-UTF-8 bytes only travel in binary form
    raw = np.array([b"\xff\x00\xfe"], dtype=object)
    body, hl = client_body([("s", raw, "BYTES")], binary=True)
    assert parse_infer_request(body, hl).inputs["s"][0] == b"\xff\x00\xfe"


def test_bf16_binary_from_tritonclient_and_json_floats() -> None:
    vals = np.array([1.0, -2.5, 3.14159, 1e-40, 3e38, np.nan], dtype=np.float32)
    arr = vals.astype(ml_dtypes.bfloat16)
    body, hl = client_body([("b", arr, "BF16")], binary=True)
    got = parse_infer_request(body, hl).inputs["b"]
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, arr.view(np.uint16))
    # JSON carries BF16 as numbers; they are rounded to nearest-even BF16 bits
    got = parse_infer_request(one("BF16", [6], [float(v) for v in vals])).inputs["x"]
    np.testing.assert_array_equal(got[:5], arr.view(np.uint16)[:5])
    assert got[5] & 0x7FFF == 0x7FC0  # quiet NaN


def test_many_inputs_mixed_binary_and_json_keep_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[True], [False]])
    c = np.array([[b"a"], [b"bc"]], dtype=object)
    inputs = []
    for name, arr, dt, binary in (
        ("a", a, "FP32", True),
        ("b", b, "BOOL", False),
        ("c", c, "BYTES", True),
    ):
        ii = tc.InferInput(name, list(arr.shape), dt)
        ii.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(ii)
    body, hl = tc.InferenceServerClient.generate_request_body(inputs, request_id="r-1")
    req = parse_infer_request(body, hl)
    assert list(req.inputs) == ["a", "b", "c"] and req.id == "r-1"
    np.testing.assert_array_equal(req.inputs["a"], a)
    np.testing.assert_array_equal(req.inputs["b"], b)
    assert req.inputs["c"].tolist() == c.tolist()


def test_binary_input_at_unaligned_offset_is_aligned() -> None:
    a = np.array([1], dtype=np.uint8)
    b = np.array([1.5, 2.5], dtype=np.float64)
    body, hl = client_body([("a", a, "UINT8"), ("b", b, "FP64")], binary=True)
    got = parse_infer_request(body, hl).inputs["b"]
    assert got.flags.aligned
    np.testing.assert_array_equal(got, b)


# ------------------------------------------------------------------ parameters and outputs


def test_parameters_priority_timeout_and_outputs() -> None:
    x = np.zeros((1, 2), dtype=np.float32)
    outs = [
        tc.InferRequestedOutput("y", binary_data=True),
        tc.InferRequestedOutput("z", binary_data=False),
    ]
    body, hl = client_body(
        [("x", x, "FP32")], binary=False, outputs=outs, request_id="abc", priority=2, timeout=1500
    )
    req = parse_infer_request(body, hl)
    assert req.id == "abc" and req.priority == 2 and req.timeout_us == 1500
    assert req.timeout_s == pytest.approx(0.0015)
    assert [(o.name, o.binary_data) for o in req.outputs or []] == [("y", True), ("z", False)]
    assert req.binary_data_output is False


def test_no_outputs_means_all_and_tritonclient_asks_binary() -> None:
    body, hl = client_body([("x", np.zeros(1, np.int32), "INT32")], binary=False)
    req = parse_infer_request(body, hl)
    assert req.outputs is None and req.binary_data_output is True
    assert req.priority is None and req.timeout_us is None and req.timeout_s is None


def test_timeout_zero_means_none_and_custom_parameters_kept() -> None:
    doc = {
        "parameters": {"timeout": 0, "custom": "v", "n": 3},
        "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}],
    }
    req = parse_infer_request(body_of(doc))
    assert req.timeout_us == 0 and req.timeout_s is None
    assert req.parameters["custom"] == "v" and req.parameters["n"] == 3


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"priority": -1}, "'priority' must be a non-negative integer"),
        ({"priority": True}, "'priority' must be a non-negative integer"),
        ({"priority": 1.5}, "'priority' must be a non-negative integer"),
        ({"timeout": "10"}, "'timeout' must be a non-negative integer"),
        ({"timeout": -5}, "'timeout' must be a non-negative integer"),
        ({"binary_data_output": 1}, "'binary_data_output' must be a boolean"),
        ([], "'parameters' must be a JSON object"),
    ],
)
def test_bad_request_parameters(params: Any, needle: str) -> None:
    doc = {
        "parameters": params,
        "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}],
    }
    assert needle in err(body_of(doc))


@pytest.mark.parametrize(
    ("outputs", "needle"),
    [
        ({"name": "y"}, "'outputs' must be an array"),
        (["y"], "output 0: must be a JSON object"),
        ([{"name": ""}], "output 0: 'name' must be a non-empty string"),
        ([{"name": "y"}, {"name": "y"}], "output 'y' is requested more than once"),
        ([{"name": "y", "parameters": {"binary_data": "yes"}}], "'binary_data' must be a boolean"),
        ([{"name": "y", "parameters": {"classification": 3}}], "classification extension"),
        ([{"name": "y", "parameters": {"shared_memory_region": "r"}}], "shared memory"),
    ],
)
def test_bad_outputs(outputs: Any, needle: str) -> None:
    doc = {
        "outputs": outputs,
        "inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}],
    }
    assert needle in err(body_of(doc))


# ------------------------------------------------------------------ malformed requests


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got array"),
        (b'"inputs"', "must be a JSON object, got string"),
        (b"{}", "'inputs' must be a non-empty array"),
        (b'{"inputs": []}', "'inputs' must be a non-empty array"),
        (b'{"inputs": {}}', "'inputs' must be a non-empty array"),
        (b'{"inputs": [3]}', "input 0: must be a JSON object, got number"),
        (b'{"id": 5, "inputs": []}', "'id' must be a string"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (
            b'{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [1'
            + b"0" * 5000
            + b"]}]}",
            "not valid JSON",
        ),
    ],
)
def test_malformed_documents(body: bytes, needle: str) -> None:
    assert needle in err(body)


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "input 0: 'name' must be a non-empty"),
        ({"name": 3, "datatype": "FP32", "shape": [1], "data": [1]}, "'name' must be a non-empty"),
        ({"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}, 'unknown datatype "FP8"'),
        ({"name": "x", "datatype": "fp32", "shape": [1], "data": [1]}, 'unknown datatype "fp32"'),
        ({"name": "x", "shape": [1], "data": [1]}, "unknown datatype null"),
        ({"name": "x", "datatype": "FP32", "data": [1]}, "'shape' must be an array"),
        ({"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}, "'shape' must be an array"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
        ({"name": "x", "datatype": "FP32", "shape": [1.0], "data": [1]}, "non-negative integers"),
        ({"name": "x", "datatype": "FP32", "shape": [True], "data": [1]}, "non-negative integers"),
        ({"name": "x", "datatype": "FP32", "shape": [2**64], "data": [1]}, "non-negative integers"),
        ({"name": "x", "datatype": "FP32", "shape": [1] * 33, "data": [1]}, "at most 32"),
        ({"name": "x", "datatype": "FP32", "shape": [2**31, 2**31], "data": []}, "too large"),
        ({"name": "x", "datatype": "FP32", "shape": [0, 2**62, 2**62], "data": []}, "too large"),
        ({"name": "x", "datatype": "FP32", "shape": [3]}, "'data' is missing"),
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": 1.0}, "'data' must be an array"),
        (
            {"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]},
            "'data' has 2 elements but shape [3] needs 3",
        ),
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}, "ragged"),
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], 3, 4]}, "mixes"),
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2]]}, "nested deeper"),
        (
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2, 3, 4]]},
            "do not match shape",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]},
            "must be numbers, found string",
        ),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": [True]}, "found boolean"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": [None]}, "found null"),
        (
            {"name": "x", "datatype": "FP64", "shape": [1], "data": [10**400]},
            "too large for a float",
        ),
        (
            {"name": "x", "datatype": "INT32", "shape": [2], "data": [1, float("nan")]},
            "INT32 data must be integers, found NaN",
        ),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}, "found number"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [True]}, "found boolean"),
        (
            {"name": "x", "datatype": "INT8", "shape": [1], "data": [128]},
            "value 128 is out of range for INT8 [-128, 127]",
        ),
        ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}, "out of range for UINT8"),
        ({"name": "x", "datatype": "UINT64", "shape": [1], "data": [2**64]}, "out of range"),
        ({"name": "x", "datatype": "INT64", "shape": [1], "data": [2**63]}, "out of range"),
        (
            {"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]},
            "BOOL data must be true/false",
        ),
        (
            {"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]},
            "BYTES data must be strings",
        ),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\ud800"]}, "not valid UTF-8"),
        (
            {"name": "x", "datatype": "FP32", "shape": [1], "data": [1], "parameters": 3},
            "'parameters' must be a JSON object",
        ),
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "data": [1],
                "parameters": {"binary_data_size": 4},
            },
            "either 'data' or 'binary_data_size'",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
            "has no Inference-Header-Content-Length header",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": -4}},
            "'binary_data_size' must be a non-negative integer",
        ),
        (
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1],
                "parameters": {"shared_memory_region": "r"},
            },
            "shared memory",
        ),
    ],
)
def test_malformed_tensors(tensor: dict[str, Any], needle: str) -> None:
    message = err(body_of({"inputs": [tensor]}))
    assert needle in message, message


def test_duplicate_input_name() -> None:
    t = {"name": "x", "datatype": "INT8", "shape": [1], "data": [1]}
    assert "input 'x' is given more than once" in err(body_of({"inputs": [t, t]}))


def test_long_names_are_cut_in_messages() -> None:
    name = "n" * 10_000
    msg = err(one("FP32", [1], ["a"]).replace(b'"x"', json.dumps(name).encode()))
    assert len(msg) < 400


# ------------------------------------------------------------------ binary framing


def framed(header: dict[str, Any], tail: bytes) -> tuple[bytes, int]:
    h = json.dumps(header).encode()
    return h + tail, len(h)


def bin_input(name: str, datatype: str, shape: list[int], size: int) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


@pytest.mark.parametrize(
    ("header", "tail", "needle"),
    [
        ({"inputs": [bin_input("x", "FP32", [2], 8)]}, b"\0" * 7, "runs past the end"),
        ({"inputs": [bin_input("x", "FP32", [2], 8)]}, b"\0" * 9, "add up to 8"),
        ({"inputs": [bin_input("x", "FP32", [2], 4)]}, b"\0" * 4, "needs 8"),
        ({"inputs": [bin_input("x", "FP32", [2], 12)]}, b"\0" * 12, "needs 8"),
        ({"inputs": [bin_input("x", "BOOL", [2], 2)]}, b"\x01\x02", "bytes 0 or 1"),
        ({"inputs": [bin_input("x", "BYTES", [1], 3)]}, b"\x01\0\0", "cannot hold 1 elements"),
        (
            {"inputs": [bin_input("x", "BYTES", [1], 6)]},
            struct.pack("<I", 9) + b"ab",
            "claims 9 bytes but only 2 remain",
        ),
        (
            {"inputs": [bin_input("x", "BYTES", [1], 7)]},
            struct.pack("<I", 2) + b"abc",
            "1 bytes left over",
        ),
        (
            {"inputs": [bin_input("x", "BYTES", [2], 8)]},
            struct.pack("<I", 2) + b"ab\0\0",
            "ends inside the length prefix of element 1",
        ),
        (
            {"inputs": [bin_input("x", "BYTES", [1], 4)]},
            struct.pack("<I", 2**32 - 1),
            "claims 4294967295 bytes",
        ),
        ({"inputs": [bin_input("x", "BYTES", [10**9], 8)]}, b"\0" * 8, "cannot hold"),
    ],
)
def test_malformed_binary(header: dict[str, Any], tail: bytes, needle: str) -> None:
    body, hl = framed(header, tail)
    message = err(body, hl)
    assert needle in message, message


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("abc", "non-negative decimal integer"),
        ("-3", "non-negative decimal integer"),
        ("0", "is 0 but the body"),
        ("999999", "the body has"),
        ("1" * 40, "decimal integer"),
        ("\u0663", "decimal integer"),
    ],
)
def test_bad_header_length(value: str, needle: str) -> None:
    body = one("INT8", [1], [1])
    assert needle in err(body, value)
    with pytest.raises(ProtocolError):
        parse_header_length(value, len(body))


def test_header_length_as_bytes_and_int() -> None:
    body, hl = framed({"inputs": [bin_input("x", "INT16", [2], 4)]}, b"\x01\0\x02\0")
    for h in (hl, str(hl), str(hl).encode()):
        np.testing.assert_array_equal(parse_infer_request(body, h).inputs["x"], [1, 2])


def test_json_limit_is_413() -> None:
    body = one("FP32", [1000], [0.5] * 1000)
    assert "limit is 100" in err(body, None, status=413, max_json_bytes=100)
    body2, hl = framed({"inputs": [bin_input("x", "FP32", [1000], 4000)]}, b"\0" * 4000)
    assert parse_infer_request(body2, hl, max_json_bytes=200).inputs["x"].shape == (1000,)


def test_protocol_error_requires_4xx() -> None:
    with pytest.raises(ValueError, match="must be 4xx"):
        ProtocolError(500, "no")


# ------------------------------------------------------------------ BYTES helpers


def test_bytes_serialization_round_trip_and_types() -> None:
    arr = np.array([[b"a", "\u00e9"], [bytearray(b"xy"), b""]], dtype=object)
    buf = serialize_bytes_tensor(arr)
    assert buf == b"\1\0\0\0a\2\0\0\0\xc3\xa9\2\0\0\0xy\0\0\0\0"
    assert deserialize_bytes_tensor(buf, 4).tolist() == [b"a", "\u00e9".encode(), b"xy", b""]
    with pytest.raises(TypeError, match="must be bytes or str, got int"):
        serialize_bytes_tensor(np.array([1], dtype=object))


# ------------------------------------------------------------------ BF16


BF16_VALUES = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16)
_B32 = bf16_bits_to_float32(BF16_VALUES)
_FINITE = np.isfinite(_B32)
_SORTED = np.unique(_B32[_FINITE].astype(np.float64))  # -0.0 and 0.0 merge; fine for distance


def reference_bf16(x: float) -> int:
    """Correctly rounded BF16 (nearest, ties to even) by search over every finite BF16."""
    if math.isnan(x):
        return 0x7FC0 | (0x8000 if math.copysign(1, x) < 0 else 0)
    max_finite = float(_SORTED[-1])
    # halfway between max finite and the next (unrepresentable) step rounds to infinity
    ulp = 2.0 ** (127 - 7)
    if abs(x) >= max_finite + ulp / 2:
        return 0xFF80 if x < 0 else 0x7F80
    i = int(np.searchsorted(_SORTED, x))
    cands = [float(_SORTED[j]) for j in (i - 1, i) if 0 <= j < len(_SORTED)]
    best = min(cands, key=lambda c: abs(c - x))
    ties = [c for c in cands if abs(c - x) == abs(best - x)]
    bits = [int(float_bits(c)) for c in ties]
    pick = min(bits, key=lambda b: b & 1)  # even mantissa wins a tie
    if pick & 0x7FFF == 0:  # zero keeps the sign of x
        return 0x8000 if math.copysign(1, x) < 0 else 0
    return pick


def float_bits(c: float) -> int:
    return int(np.array([c], dtype=np.float32).view(np.uint32)[0] >> 16)


def test_bf16_every_pattern_round_trips() -> None:
    finite_bits = BF16_VALUES[_FINITE]
    got = float_to_bf16_bits(bf16_bits_to_float32(finite_bits))
    np.testing.assert_array_equal(got, finite_bits)
    got64 = float_to_bf16_bits(bf16_bits_to_float32(finite_bits).astype(np.float64))
    np.testing.assert_array_equal(got64, finite_bits)


def test_bf16_ties_go_to_even_and_overflow_to_inf() -> None:
    # 1 + 2**-8 is halfway between 1 and 1 + 2**-7: even (1.0) wins
    assert float_to_bf16_bits([1 + 2**-8])[0] == 0x3F80
    # 1 + 3 * 2**-8 is halfway between 1 + 2**-7 and 1 + 2**-6: even (1 + 2**-6) wins
    assert float_to_bf16_bits([1 + 3 * 2**-8])[0] == 0x3F82
    # just above the halfway point rounds up, even though float32 would round it to the tie
    assert float_to_bf16_bits([1 + 2**-8 + 2**-40])[0] == 0x3F81
    assert float_to_bf16_bits([1e300])[0] == 0x7F80
    assert float_to_bf16_bits([-1e300])[0] == 0xFF80
    assert float_to_bf16_bits([-0.0])[0] == 0x8000


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_bf16_from_float64_is_correctly_rounded(x: float) -> None:
    assert int(float_to_bf16_bits(np.array([x]))[0]) == reference_bf16(x)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.floats(allow_nan=False, width=32))
def test_bf16_from_float32_matches_ml_dtypes(x: float) -> None:
    f = np.array([x], dtype=np.float32)
    assert float_to_bf16_bits(f)[0] == f.astype(ml_dtypes.bfloat16).view(np.uint16)[0]


# ------------------------------------------------------------------ responses


def decode(resp: Any) -> Any:
    return tc.InferenceServerClient.parse_response_body(resp.body, header_length=resp.header_length)


@pytest.mark.parametrize("binary", [False, True])
def test_response_round_trip_through_tritonclient(binary: bool) -> None:
    outputs = {
        "f": np.array([[1.5, np.nan], [np.inf, -2]], dtype=np.float32),
        "h": np.array([0.5, 1.5], dtype=np.float16),
        "i": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        "u": np.array([2**64 - 1], dtype=np.uint64),
        "b": np.array([True, False]),
        "s": np.array([b"ab", "\u00e9".encode()], dtype=object),
        "bf": float_to_bf16_bits(np.array([1.0, -3.5], dtype=np.float32)),
    }
    dts = {
        "f": "FP32",
        "h": "FP16",
        "i": "INT64",
        "u": "UINT64",
        "b": "BOOL",
        "s": "BYTES",
        "bf": "BF16",
    }
    resp = encode_infer_response(
        model_name="m",
        model_version=3,
        request_id="q",
        outputs=outputs,
        datatypes=dts,
        binary_data_output=binary,
    )
    assert (resp.header_length is not None) == binary
    assert resp.content_type == ("application/octet-stream" if binary else "application/json")
    result = decode(resp)
    doc = result.get_response()
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "q"
    for name, arr in outputs.items():
        got = result.as_numpy(name)
        if dts[name] == "BF16":
            np.testing.assert_array_equal(
                got.view(np.uint16) if binary else got.astype(np.float32),
                arr if binary else bf16_bits_to_float32(arr),
            )
        elif dts[name] == "BYTES":
            assert [
                bytes(v) if isinstance(v, bytes) else v.encode() for v in got.tolist()
            ] == arr.tolist()
        else:
            np.testing.assert_array_equal(got, arr)


def test_requested_outputs_select_order_and_override_binary() -> None:
    outputs = {"a": np.arange(3, dtype=np.int32), "b": np.ones(2, np.float64)}
    req = [RequestedOutput("b", True), RequestedOutput("a", None)]
    resp = encode_infer_response(
        model_name="m",
        model_version=None,
        request_id=None,
        outputs=outputs,
        datatypes={"a": "INT32", "b": "FP64"},
        requested=req,
        binary_data_output=False,
    )
    header = json.loads(resp.body[: resp.header_length])
    assert [o["name"] for o in header["outputs"]] == ["b", "a"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert header["outputs"][1]["data"] == [0, 1, 2]
    assert "model_version" not in header and "id" not in header
    assert len(resp.body) == resp.header_length + 16


def test_non_utf8_bytes_output_falls_back_to_binary() -> None:
    outputs = {"s": np.array([b"\xff"], dtype=object), "t": np.array(["ok"], dtype=object)}
    resp = encode_infer_response(
        model_name="m",
        model_version=1,
        request_id=None,
        outputs=outputs,
        datatypes={"s": "BYTES", "t": "BYTES"},
    )
    assert resp.header_length is not None
    result = decode(resp)
    assert result.as_numpy("s").tolist() == [b"\xff"]
    assert result.get_output("t")["data"] == ["ok"]


def test_error_body() -> None:
    assert json.loads(encode_error('bad "x"')) == {"error": 'bad "x"'}


# ------------------------------------------------------------------ hypothesis


def arrays_for(datatype: str) -> st.SearchStrategy[np.ndarray]:
    shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
    if datatype == "BYTES":
        elem = st.binary(max_size=8)
        return shapes.flatmap(
            lambda s: st.lists(elem, min_size=int(np.prod(s)), max_size=int(np.prod(s))).map(
                lambda v, s=s: np.array([*v, b""], dtype=object)[:-1].reshape(s)
            )
        )
    dt = np.dtype(NP[datatype])
    if dt.kind == "b":
        elem: st.SearchStrategy[Any] = st.booleans()
    elif dt.kind in "iu":
        info = np.iinfo(dt)
        elem = st.integers(int(info.min), int(info.max))
    else:
        elem = st.floats(width=8 * dt.itemsize if dt.itemsize > 2 else 16, allow_nan=False)
    return shapes.flatmap(
        lambda s: st.lists(elem, min_size=int(np.prod(s)), max_size=int(np.prod(s))).map(
            lambda v, s=s: np.array(v, dtype=dt).reshape(s)
        )
    )


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.sampled_from([*NUMERIC, "BYTES"]).flatmap(
        lambda d: st.tuples(st.just(d), arrays_for(d), st.booleans())
    )
)
def test_any_tensor_round_trips(case: tuple[str, np.ndarray, bool]) -> None:
    datatype, arr, binary = case
    if datatype == "BYTES" and not binary:
        assume(all(_utf8(v) for v in arr.ravel()))
    body, hl = client_body([("x", arr, datatype)], binary=binary)
    got = parse_infer_request(body, hl).inputs["x"]
    assert got.shape == arr.shape
    if datatype == "BYTES":
        assert got.tolist() == arr.tolist()
    else:
        np.testing.assert_array_equal(got, arr)
    # and back out through the response encoder and tritonclient's decoder
    resp = encode_infer_response(
        model_name="m",
        model_version=1,
        request_id=None,
        outputs={"x": got},
        datatypes={"x": datatype},
        binary_data_output=binary,
    )
    out = decode(resp).as_numpy("x")
    if datatype == "BYTES":
        assert [
            v if isinstance(v, bytes) else v.encode() for v in out.ravel().tolist()
        ] == arr.ravel().tolist()
    else:
        np.testing.assert_array_equal(out.reshape(arr.shape), arr)


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=5),
)
json_value = st.recursive(
    json_leaf,
    lambda c: st.one_of(
        st.lists(c, max_size=4), st.dictionaries(st.text(max_size=5), c, max_size=4)
    ),
    max_leaves=20,
)
tensor_like = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(max_size=3), json_value),
        "datatype": st.one_of(st.sampled_from([*NUMERIC, "BYTES", "BF16", "fp32"]), json_value),
        "shape": st.one_of(st.lists(st.integers(-2, 2**64), max_size=4), json_value),
        "data": json_value,
        "parameters": st.one_of(
            st.fixed_dictionaries(
                {}, optional={"binary_data_size": st.one_of(st.integers(-2, 64), json_value)}
            ),
            json_value,
        ),
    },
)
request_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_value,
        "inputs": st.one_of(st.lists(tensor_like, max_size=3), json_value),
        "outputs": st.one_of(
            st.lists(
                st.fixed_dictionaries({}, optional={"name": json_value, "parameters": json_value}),
                max_size=2,
            ),
            json_value,
        ),
        "parameters": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "priority": json_value,
                    "timeout": json_value,
                    "binary_data_output": json_value,
                },
            ),
            json_value,
        ),
    },
)


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    request_like,
    st.binary(max_size=64),
    st.one_of(st.none(), st.just("len"), st.integers(-5, 2000), st.text(max_size=6)),
)
def test_hostile_documents_only_raise_protocol_error(
    doc: dict[str, Any], tail: bytes, header: Any
) -> None:
    head = json.dumps(doc).encode()
    body = head + tail
    if header == "len":
        header = len(head)
    try:
        req = parse_infer_request(body, header)
    except ProtocolError as e:
        assert 400 <= e.status < 500 and e.message
    else:
        assert isinstance(req, InferRequest)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200), st.one_of(st.none(), st.text(max_size=6)))
def test_random_bytes_only_raise_protocol_error(body: bytes, header: str | None) -> None:
    try:
        parse_infer_request(body, header)
    except ProtocolError as e:
        assert 400 <= e.status < 500


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutated_valid_binary_requests(data: st.DataObject) -> None:
    arr = np.arange(6, dtype=np.int32).reshape(2, 3)
    s = np.array([b"ab", b"c"], dtype=object)
    body, hl = client_body([("x", arr, "INT32"), ("s", s, "BYTES")], binary=True)
    assert hl is not None
    b = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if op == "flip" and b:
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] = data.draw(st.integers(0, 255))
        elif op == "cut" and b:
            del b[data.draw(st.integers(0, len(b) - 1)) :]
        else:
            b += data.draw(st.binary(min_size=1, max_size=8))
    header = data.draw(st.sampled_from([hl, hl - 1, hl + 1, None]))
    try:
        parse_infer_request(bytes(b), header)
    except ProtocolError as e:
        assert 400 <= e.status < 500


@pytest.mark.parametrize("depth", [1_000, 100_000, 1_000_000])
def test_deep_nesting_anywhere_is_400_not_a_crash(depth: int) -> None:
    deep = b"[" * depth + b"]" * depth
    # as the document, as a parameter value, as a shape and as data
    bodies = [
        deep,
        b'{"parameters": {"priority": ' + deep + b'}, "inputs": [1]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": ' + deep + b', "data": []}]}',
        b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ' + deep + b"}]}",
    ]
    for body in bodies:
        err(body)
