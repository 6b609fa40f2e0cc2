"""The HTTP server against the real engine, driven by the clients users run (tritonclient).

Every server here is started by the test on 127.0.0.1 with port 0 in a background thread and
stopped at the end; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from serve_process import served_repository

import inferline
from inferline import Batching, TensorSpec
from inferline.server import create_app
from inferline.server.codec import bf16_bits_to_float32, float_to_bf16_bits

tc = pytest.importorskip("tritonclient.http")
tc_aio = pytest.importorskip("tritonclient.http.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")

# Every fixed-size protocol datatype (BYTES has no fixed item size).
DATATYPES = [d for d in inferline.types.DATATYPES if d != "BYTES"]


# ------------------------------------------------------------------------------ harness


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app: Any, loop: str = "auto") -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop=loop,
            lifespan="on",
            log_config=None,
            log_level="warning",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "server thread did not stop"

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.url}"


def echo(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"o_" + k: v.copy() for k, v in batch.items()}


class Calls:
    """Counts model calls and rows (the model runs on worker threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches = 0
        self.rows = 0

    def add(self, n: int) -> None:
        with self.lock:
            self.batches += 1
            self.rows += n


SLOW_CALLS = Calls()
# Cleared by a test that needs the slow model held in its batch until it says so.
SLOW_RELEASE = threading.Event()
SLOW_RELEASE.set()


def double(x: np.ndarray) -> np.ndarray:
    return x * 2 + 1


def picky(x: np.ndarray) -> np.ndarray:
    if (x < 0).any():
        raise ValueError("negative input: this model takes non-negative values only")
    return x


def slow(x: np.ndarray) -> np.ndarray:
    SLOW_CALLS.add(len(x))
    time.sleep(0.2)
    SLOW_RELEASE.wait(30)
    return x


def build_engine() -> inferline.Engine:
    e = inferline.Engine()
    f4 = [TensorSpec("x", "FP32", (4,))]
    e.register(
        "mlp",
        double,
        inputs=f4,
        outputs=[TensorSpec("y", "FP32", (4,))],
        batching=Batching(max_batch_size=8, max_queue_delay_ms=2, max_queue_size=256),
    )
    e.register(
        "types",
        echo,
        inputs=[TensorSpec("i_" + d, d, (2,)) for d in DATATYPES],
        outputs=[TensorSpec("o_i_" + d, d, (2,)) for d in DATATYPES],
        batching=Batching(max_batch_size=4, max_queue_delay_ms=1),
    )
    e.register(
        "picky",
        picky,
        inputs=f4,
        outputs=[TensorSpec("y", "FP32", (4,))],
        batching=Batching(max_batch_size=4, max_queue_delay_ms=1),
        warmup=[1],
    )
    e.register(
        "slow",
        slow,
        inputs=f4,
        outputs=[TensorSpec("y", "FP32", (4,))],
        batching=Batching(max_batch_size=1, max_queue_delay_ms=0, max_queue_size=64),
        warmup=False,
    )
    e.register(
        "mlp",
        double,
        inputs=f4,
        outputs=[TensorSpec("y", "FP32", (4,))],
        version=2,
        batching=Batching(max_batch_size=8, max_queue_delay_ms=2),
    )
    return e


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    """The shared server, once on uvloop and once on the default asyncio loop."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    app = create_app(build_engine(), max_body_bytes=1 << 20)
    with ServerThread(app, loop=request.param) as s:
        yield s


@pytest.fixture
def client(server: ServerThread) -> Iterator[Any]:
    c = tc.InferenceServerClient(server.url, network_timeout=30.0)
    yield c
    c.close()


def status_of(fn: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as info:
        fn()
    return str(info.value.status()), info.value.message()


def http_count(server: ServerThread, model: str, outcome: str) -> float:
    """``inferline_http_requests_total{model,outcome}`` as /metrics shows it (0 if absent)."""
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inferline_http_requests_total" and sample.labels == {
                "model": model,
                "outcome": outcome,
            }:
                return float(sample.value)
    return 0.0


def f32_input(x: np.ndarray, binary: bool = True, name: str = "x") -> Any:
    ii = tc.InferInput(name, list(x.shape), "FP32")
    ii.set_data_from_numpy(x, binary_data=binary)
    return ii


# ------------------------------------------------------------------------------ health, metadata


def test_health_and_server_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "inferline"
    for ext in ("binary_tensor_data", "schedule_policy", "statistics", "model_repository"):
        assert ext in meta["extensions"]


def test_model_metadata_ready_and_config(client: Any) -> None:
    meta = client.get_model_metadata("mlp")
    assert meta["name"] == "mlp" and meta["versions"] == ["1", "2"]
    assert meta["platform"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    assert client.get_model_metadata("mlp", "1")["name"] == "mlp"
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("nope")
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert status_of(lambda: client.get_model_metadata("nope"))[0] == "404"
    code, msg = status_of(lambda: client.get_model_metadata("mlp", "7"))
    assert code == "404" and "no version 7" in msg


# ------------------------------------------------------------------------------ inference


def typed(d: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    if d == "BF16":
        return rng.standard_normal((rows, 2)).astype(ml_dtypes.bfloat16)
    dt = np.dtype(inferline.types.DATATYPES[d])
    if dt.kind == "b":
        return rng.integers(0, 2, (rows, 2)).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, (rows, 2), dtype=dt, endpoint=True)
    return rng.standard_normal((rows, 2)).astype(dt)


@pytest.mark.parametrize("binary", [False, True])
def test_every_datatype_json_and_binary(client: Any, binary: bool) -> None:
    rng = np.random.default_rng(1)
    arrays = {d: typed(d, 3, rng) for d in DATATYPES}
    inputs = []
    for d, arr in arrays.items():
        ii = tc.InferInput("i_" + d, list(arr.shape), d)
        # tritonclient sends BF16 only as binary data
        ii.set_data_from_numpy(arr, binary_data=binary or d == "BF16")
        inputs.append(ii)
    outputs = [tc.InferRequestedOutput("o_i_" + d, binary_data=binary) for d in DATATYPES]
    result = client.infer("types", inputs, outputs=outputs, request_id="types-1")
    assert result.get_response()["id"] == "types-1"
    assert result.get_response()["model_version"] == "1"
    for d, arr in arrays.items():
        got = result.as_numpy("o_i_" + d)
        assert result.get_output("o_i_" + d)["datatype"] == d
        if d == "BF16":
            np.testing.assert_array_equal(got.astype(np.float32), arr.astype(np.float32))
        else:
            np.testing.assert_array_equal(got, arr)


def test_json_bf16_numbers_and_nested_data_over_plain_http(server: ServerThread) -> None:
    vals = [[1.0, -2.5], [3.14159, 1e-3]]
    doc = {
        "inputs": [
            {
                "name": "i_" + d,
                "datatype": d,
                "shape": [2, 2],
                "data": vals
                if d in ("FP16", "FP32", "FP64", "BF16")
                else ([[True, False], [False, True]] if d == "BOOL" else [[1, 2], [3, 4]]),
            }
            for d in DATATYPES
        ],
        "outputs": [{"name": "o_i_BF16"}, {"name": "o_i_INT8"}],
    }
    r = httpx.post(f"{server.base}/v2/models/types/infer", json=doc, timeout=30)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert list(out) == ["o_i_BF16", "o_i_INT8"]
    want = bf16_bits_to_float32(float_to_bf16_bits(np.array(vals).ravel()))
    # written as the shortest text that reads back as the same float32
    np.testing.assert_array_equal(np.array(out["o_i_BF16"]["data"], dtype=np.float32), want)
    assert out["o_i_BF16"]["shape"] == [2, 2]
    assert out["o_i_INT8"]["data"] == [1, 2, 3, 4]
    assert r.headers["content-type"] == "application/json"


def test_rows_are_split_for_the_batcher_and_reassembled(client: Any) -> None:
    before = client.get_inference_statistics("mlp", "1")["model_stats"][0]
    x = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    result = client.infer("mlp", [f32_input(x)], model_version="1")
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2 + 1)
    after = client.get_inference_statistics("mlp", "1")["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] > before["execution_count"]
    assert after["last_inference"] > 0


def test_requested_outputs_mixed_binary_and_request_id(client: Any) -> None:
    arrays = {d: typed(d, 2, np.random.default_rng(2)) for d in DATATYPES}
    inputs = []
    for d, arr in arrays.items():
        ii = tc.InferInput("i_" + d, list(arr.shape), d)
        ii.set_data_from_numpy(arr, binary_data=True)
        inputs.append(ii)
    outs = [
        tc.InferRequestedOutput("o_i_INT64", binary_data=False),
        tc.InferRequestedOutput("o_i_FP32", binary_data=True),
    ]
    result = client.infer("types", inputs, outputs=outs, request_id="abc")
    resp = result.get_response()
    assert [o["name"] for o in resp["outputs"]] == ["o_i_INT64", "o_i_FP32"]
    assert "data" in resp["outputs"][0] and "parameters" in resp["outputs"][1]
    np.testing.assert_array_equal(result.as_numpy("o_i_INT64"), arrays["INT64"])
    np.testing.assert_array_equal(result.as_numpy("o_i_FP32"), arrays["FP32"])


def test_gzip_and_deflate_request_bodies(client: Any) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    for algo in ("gzip", "deflate"):
        r = client.infer("mlp", [f32_input(x)], request_compression_algorithm=algo)
        np.testing.assert_array_equal(r.as_numpy("y"), x * 2 + 1)


@pytest.mark.asyncio
async def test_asyncio_client(server: ServerThread) -> None:
    c = tc_aio.InferenceServerClient(server.url)
    try:
        assert await c.is_server_live()
        assert await c.is_server_ready()
        xs = [np.full((1, 4), i, dtype=np.float32) for i in range(20)]
        results = await asyncio.gather(*(c.infer("mlp", [f32_input(x)]) for x in xs))
        for x, r in zip(xs, results, strict=True):
            np.testing.assert_array_equal(r.as_numpy("y"), x * 2 + 1)
        stats = await c.get_inference_statistics("mlp")
        assert {s["version"] for s in stats["model_stats"]} == {"1", "2"}
    finally:
        await c.close()


# ------------------------------------------------------------------------------ errors


def test_400_invalid_requests_say_why(client: Any, server: ServerThread) -> None:
    x = np.ones((1, 3), dtype=np.float32)
    code, msg = status_of(lambda: client.infer("mlp", [f32_input(x)]))
    assert code == "400" and "has shape [1, 3]; model 'mlp' expects [-1, 4]" in msg
    x4 = np.ones((1, 4), dtype=np.float64)
    ii = tc.InferInput("x", [1, 4], "FP64")
    ii.set_data_from_numpy(x4)
    code, msg = status_of(lambda: client.infer("mlp", [ii]))
    assert code == "400" and "datatype FP64; model 'mlp' expects FP32" in msg
    code, msg = status_of(lambda: client.infer("mlp", [f32_input(x4.astype(np.float32), name="z")]))
    assert code == "400" and "missing ['x'], unexpected ['z']" in msg
    out = [tc.InferRequestedOutput("nope")]
    code, msg = status_of(
        lambda: client.infer("mlp", [f32_input(x4.astype(np.float32))], outputs=out)
    )
    assert code == "400" and "has no output 'nope'" in msg
    code, msg = status_of(
        lambda: client.infer("mlp", [f32_input(x4.astype(np.float32))], priority=9)
    )
    assert code == "400" and "priority" in msg
    r = httpx.post(f"{server.base}/v2/models/mlp/infer", content=b"{nope", timeout=10)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(
        f"{server.base}/v2/models/mlp/infer",
        timeout=10,
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 4], "data": []}]},
    )
    assert r.status_code == 400 and "batch dimension is 0" in r.json()["error"]


def test_404_unknown_model_version_and_route(client: Any, server: ServerThread) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    code, msg = status_of(lambda: client.infer("nope", [f32_input(x)]))
    assert code == "404" and "no model named 'nope'" in msg
    code, msg = status_of(lambda: client.infer("mlp", [f32_input(x)], model_version="9"))
    assert code == "404" and "no version 9" in msg
    code, msg = status_of(lambda: client.infer("mlp", [f32_input(x)], model_version="canary"))
    assert code == "404" and "no version or alias 'canary'" in msg
    r = httpx.get(f"{server.base}/v3/anything", timeout=10)
    assert r.status_code == 404 and "no route" in r.json()["error"]
    r = httpx.get(f"{server.base}/v2/models/mlp/infer", timeout=10)
    assert r.status_code == 405


def test_413_body_too_large_and_415_encoding(server: ServerThread) -> None:
    big = b"{" + b" " * (1 << 20) + b"}"
    r = httpx.post(f"{server.base}/v2/models/mlp/infer", content=big, timeout=30)
    assert r.status_code == 413 and "limit" in r.json()["error"]
    # a gzip bomb: small on the wire, beyond the limit once inflated
    bomb = gzip.compress(b"[" + b" " * (4 << 20) + b"]")
    r = httpx.post(
        f"{server.base}/v2/models/mlp/infer",
        content=bomb,
        timeout=30,
        headers={"content-encoding": "gzip"},
    )
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    r = httpx.post(
        f"{server.base}/v2/models/mlp/infer",
        content=b"{}",
        timeout=10,
        headers={"content-encoding": "br"},
    )
    assert r.status_code == 415 and "not supported" in r.json()["error"]
    r = httpx.post(
        f"{server.base}/v2/models/mlp/infer",
        content=b"\x1f\x8bnot gzip",
        timeout=10,
        headers={"content-encoding": "gzip"},
    )
    assert r.status_code == 400


def test_500_only_for_the_models_own_failure(client: Any) -> None:
    code, msg = status_of(lambda: client.infer("picky", [f32_input(-np.ones((1, 4), np.float32))]))
    assert code == "500" and "negative input" in msg
    # the model and the server go on
    r = client.infer("picky", [f32_input(np.ones((2, 4), np.float32))])
    np.testing.assert_array_equal(r.as_numpy("y"), np.ones((2, 4)))


def test_504_when_the_timeout_passes(client: Any, server: ServerThread) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    t0 = time.monotonic()
    code, msg = status_of(lambda: client.infer("slow", [f32_input(x)], timeout=20_000))  # 20 ms
    assert code == "504" and "timeout" in msg
    assert time.monotonic() - t0 < 5
    r = httpx.post(
        f"{server.base}/v2/models/slow/infer",
        timeout=10,
        json={
            "parameters": {"timeout": -1},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}],
        },
    )
    assert r.status_code == 400 and "'timeout' must be a non-negative integer" in r.json()["error"]


def test_503_model_not_ready_with_retry_after() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("weights are corrupt")

    e = inferline.Engine()
    e.register(
        "broken",
        broken,
        inputs=[TensorSpec("x", "FP32", (4,))],
        outputs=[TensorSpec("y", "FP32", (4,))],
        batching=Batching(max_batch_size=2),
    )
    with ServerThread(create_app(e)) as s:
        c = tc.InferenceServerClient(s.url)
        try:
            assert c.is_server_ready()  # counts the models that loaded (not with strict_readiness)
            assert not c.is_model_ready("broken")
            r = httpx.post(
                f"{s.base}/v2/models/broken/infer",
                timeout=10,
                json={
                    "inputs": [
                        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}
                    ]
                },
            )
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "failed" in r.json()["error"] and "weights are corrupt" in r.json()["error"]
            index = c.get_model_repository_index()
            assert index[0]["state"] == "FAILED" and "weights are corrupt" in index[0]["reason"]
        finally:
            c.close()


def test_not_ready_still_serves(server: ServerThread) -> None:
    state = server.server.config.app.state.inferline
    state.not_ready = True
    try:
        assert httpx.get(f"{server.base}/v2/health/ready", timeout=10).status_code == 400
        assert httpx.get(f"{server.base}/v2/models/mlp/ready", timeout=10).status_code == 400
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}
        r = httpx.post(f"{server.base}/v2/models/mlp/infer", json=body, timeout=10)
        assert r.status_code == 200
    finally:
        state.not_ready = False
    assert httpx.get(f"{server.base}/v2/health/ready", timeout=10).status_code == 200


# ------------------------------------------------------------------------------ request ids


def test_request_id_echoed_generated_and_logged(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{server.base}/v2/models/mlp/infer"
    good = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    r = httpx.post(url, json=good, headers={"x-request-id": "trace-42"}, timeout=10)
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    r1 = httpx.post(url, json=good, timeout=10)
    r2 = httpx.post(url, json=good, timeout=10)
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]
    r = httpx.post(url, json=good, headers={"x-request-id": "bad id\twith spaces"}, timeout=10)
    assert r.headers["x-request-id"] != "bad id\twith spaces"
    # Each refusal is logged with its request id at DEBUG (INFO carries summaries only).
    with caplog.at_level(logging.DEBUG, logger="inferline.server"):
        r = httpx.post(url, content=b"[]", headers={"x-request-id": "trace-400"}, timeout=10)
        assert r.status_code == 400 and r.headers["x-request-id"] == "trace-400"
    records = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "trace-400"]
    assert records and "trace-400" in records[0].getMessage()
    assert "-> 400" in records[0].getMessage()
    assert httpx.get(f"{server.base}/v2", timeout=10).headers["x-request-id"]


# ------------------------------------------------------------------------------ cancellation


def test_client_disconnect_cancels_queued_work(server: ServerThread, client: Any) -> None:
    def slow_stats() -> dict[str, Any]:
        return client.get_inference_statistics("slow")["model_stats"][0]["inferline"]  # type: ignore[no-any-return]

    def wait_for(cond: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    wait_for(lambda: slow_stats()["in_flight"] == 0, "earlier slow work to finish")
    before = slow_stats()["requests"]
    calls_before = SLOW_CALLS.rows
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    ).encode()
    # Occupy the single worker (held until released), then queue 3 more requests whose clients
    # hang up while they wait.
    SLOW_RELEASE.clear()
    try:
        blocker = threading.Thread(
            target=lambda: httpx.post(
                f"{server.base}/v2/models/slow/infer", content=body, timeout=30
            )
        )
        blocker.start()
        wait_for(lambda: SLOW_CALLS.rows == calls_before + 1, "the blocker to be computing")
        socks = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(
                b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            socks.append(s)
        wait_for(lambda: slow_stats()["queue_depth"] == 3, "3 requests queued")
        gone_before = http_count(server, "slow", "disconnected")
        for s in socks:
            s.close()
        # The server counts each hang-up once the engine has cancelled its queued request.
        wait_for(
            lambda: http_count(server, "slow", "disconnected") == gone_before + 3,
            "3 hang-ups seen by the server",
        )
    finally:
        SLOW_RELEASE.set()
    blocker.join(30)
    wait_for(lambda: slow_stats()["in_flight"] == 0, "the blocker to be answered")
    stats = slow_stats()
    assert stats["requests"]["cancelled"] - before["cancelled"] == 3
    assert stats["queue_depth"] == 0
    assert SLOW_CALLS.rows - calls_before == 1  # only the blocker was computed


# ------------------------------------------------------------------------------ overload


@pytest.mark.asyncio
async def test_overload_answers_everyone_with_200_or_503() -> None:
    def sleepy(x: np.ndarray) -> np.ndarray:
        time.sleep(0.02)
        return x

    e = inferline.Engine()
    e.register(
        "m",
        sleepy,
        inputs=[TensorSpec("x", "FP32", (4,))],
        outputs=[TensorSpec("y", "FP32", (4,))],
        batching=Batching(max_batch_size=4, max_queue_delay_ms=1, max_queue_size=8),
    )
    with ServerThread(create_app(e)) as s:
        c = tc_aio.InferenceServerClient(s.url, conn_limit=300, conn_timeout=60)
        codes: list[str] = []

        async def one(i: int) -> None:
            x = np.full((1, 4), i, dtype=np.float32)
            try:
                r = await c.infer("m", [f32_input(x)])
                np.testing.assert_array_equal(r.as_numpy("y"), x)
                codes.append("200")
            except InferenceServerException as exc:
                codes.append(str(exc.status()))

        try:
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(300))), 120)
        finally:
            await c.close()
        assert len(codes) == 300
        assert set(codes) <= {"200", "503"}, set(codes)
        assert codes.count("503") > 0 and codes.count("200") > 0
        r = httpx.get(f"{s.base}/v2/models/m/stats", timeout=10).json()["model_stats"][0]
        assert r["inferline"]["requests"]["queue_full"] == codes.count("503")
        assert r["inference_count"] == codes.count("200")


# ------------------------------------------------------------------------------ stats, metrics


def test_statistics_shape_matches_triton(client: Any) -> None:
    client.infer("mlp", [f32_input(np.ones((3, 4), np.float32))], model_version="2")
    stats = client.get_inference_statistics()["model_stats"]
    names = {(s["name"], s["version"]) for s in stats}
    assert {("mlp", "1"), ("mlp", "2"), ("types", "1"), ("slow", "1")} <= names
    s = client.get_inference_statistics("mlp", "2")["model_stats"][0]
    assert s["inference_count"] >= 3 and s["execution_count"] >= 1 and s["last_inference"] > 0
    for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        assert set(s["inference_stats"][k]) == {"count", "ns"}
    assert s["inference_stats"]["success"]["count"] >= 3
    assert s["inference_stats"]["compute_infer"]["ns"] > 0
    assert status_of(lambda: client.get_inference_statistics("nope"))[0] == "404"


def test_metrics_endpoint(server: ServerThread) -> None:
    r = httpx.get(f"{server.base}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'inferline_requests_total{model="mlp"' in r.text


def test_repository_index_and_control(client: Any) -> None:
    index = client.get_model_repository_index()
    assert {"name": "mlp", "version": "2", "state": "READY", "reason": ""} in index
    r = httpx.post(
        f"http://{client._parsed_url.netloc}/v2/repository/index", json={"ready": "yes"}, timeout=10
    )
    assert r.status_code == 400


# ------------------------------------------------------------------------------ hostile input


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12).filter(
    lambda v: v == v.strip()  # httpx refuses to send header values with outer spaces
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.recursive(
        st.one_of(
            st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=4)
        ),
        lambda c: st.one_of(
            st.lists(c, max_size=5),
            st.dictionaries(
                st.sampled_from(
                    [
                        "inputs",
                        "name",
                        "datatype",
                        "shape",
                        "data",
                        "parameters",
                        "binary_data_size",
                        "outputs",
                        "id",
                        "x",
                    ]
                ),
                c,
                max_size=5,
            ),
        ),
        max_leaves=30,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(
        [
            "/v2/models/mlp/infer",
            "/v2/models/types/infer",
            "/v2/models/mlp/versions/2/infer",
            "/v2/repository/index",
            "/v2/repository/models/mlp/load",
            "/v2/models/%00/infer",
            "/v2/models/mlp/versions/-1/infer",
        ]
    ),
    body=bodies,
    header_length=st.one_of(st.none(), st.integers(-3, 400).map(str), header_text),
    encoding=st.one_of(st.none(), st.sampled_from(["gzip", "deflate", "identity", "zstd"])),
    request_id=st.one_of(st.none(), header_text),
)
def test_hostile_requests_never_500(
    server: ServerThread,
    path: str,
    body: bytes,
    header_length: str | None,
    encoding: str | None,
    request_id: str | None,
) -> None:
    headers = {}
    if header_length is not None:
        headers["inference-header-content-length"] = header_length
    if encoding is not None:
        headers["content-encoding"] = encoding
    if request_id is not None:
        headers["x-request-id"] = request_id
    r = httpx.post(server.base + path, content=body, headers=headers, timeout=30)
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        assert "error" in r.json()


def test_server_still_answers_after_hostile_input(client: Any, server: ServerThread) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    for body in (deep, b'{"inputs":' + deep + b"}", b"\xff" * 1000, b"{" * 50_000):
        r = httpx.post(f"{server.base}/v2/models/mlp/infer", content=body, timeout=30)
        assert r.status_code == 400
    # a header length past the body, and a body cut short of its Content-Length
    r = httpx.post(
        f"{server.base}/v2/models/mlp/infer",
        content=b"{}",
        timeout=10,
        headers={"inference-header-content-length": "99"},
    )
    assert r.status_code == 400
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
    s.close()
    assert client.is_server_live() and client.is_server_ready()
    r = client.infer("mlp", [f32_input(np.ones((1, 4), np.float32))])
    np.testing.assert_array_equal(r.as_numpy("y"), np.full((1, 4), 3.0))


# ------------------------------------------------------------------------------ embedding


def test_mount_inside_another_starlette_app() -> None:
    import contextlib

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    e = inferline.Engine()
    e.register(
        "m",
        double,
        inputs=[TensorSpec("x", "FP32", (4,))],
        outputs=[TensorSpec("y", "FP32", (4,))],
        batching=Batching(max_batch_size=2),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        async with e:  # a mounted app's lifespan does not run: the host starts the engine
            yield

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    host = Starlette(
        routes=[Route("/hello", hello), Mount("/", app=create_app(e))], lifespan=lifespan
    )
    with ServerThread(host) as s:
        assert httpx.get(f"{s.base}/hello", timeout=10).text == "hi"
        c = tc.InferenceServerClient(s.url)
        try:
            r = c.infer("m", [f32_input(np.ones((1, 4), np.float32))])
            np.testing.assert_array_equal(r.as_numpy("y"), np.full((1, 4), 3.0))
        finally:
            c.close()


# ------------------------------------------------------------------------------ SIGTERM


SIGTERM_SCRIPT = textwrap.dedent(
    """
    import sys, time, numpy as np, inferline
    from pathlib import Path
    from inferline.server import serve

    computing, release = Path(sys.argv[1]), Path(sys.argv[2])

    def slow(x):  # holds each batch until the test creates the release file
        with computing.open("a") as f:
            f.write(f"{len(x)}\\n")
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return x

    e = inferline.Engine()
    e.register("slow", slow, inputs=[inferline.TensorSpec("x", "FP32", (4,))],
               outputs=[inferline.TensorSpec("y", "FP32", (4,))],
               batching=inferline.Batching(max_batch_size=8, max_queue_delay_ms=50),
               warmup=False)
    serve(e, "127.0.0.1", 0, grace_period=3.0, drain_timeout=30, log_level="warning",
          on_started=lambda port: print(port, flush=True))
    print("clean exit", flush=True)
    """
)


def test_sigterm_turns_readiness_false_drains_and_exits_zero(tmp_path: Any) -> None:
    script = tmp_path / "serve_slow.py"
    script.write_text(SIGTERM_SCRIPT)
    computing, release = tmp_path / "computing", tmp_path / "release"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(computing), str(release)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), (line, proc.stderr.read() if proc.poll() is not None else "")
        base = f"http://127.0.0.1:{int(line)}"
        assert httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [1] * 8}]}
        results: list[int] = []

        def call() -> None:
            results.append(
                httpx.post(f"{base}/v2/models/slow/infer", json=body, timeout=30).status_code
            )

        def send() -> threading.Thread:
            t = threading.Thread(target=call)
            t.start()
            return t

        def wait_for(cond: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 30
            while not cond():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.02)

        def probe() -> httpx.Response:  # answered at once: 503 draining, or 504 (1 ms timeout)
            short = {**body, "parameters": {"timeout": 1000}}
            return httpx.post(f"{base}/v2/models/slow/infer", json=short, timeout=10)

        # 4 requests sent (one computing, held by the model) when SIGTERM comes.
        workers = [send() for _ in range(4)]
        wait_for(computing.exists, "a batch to be computing")
        proc.send_signal(signal.SIGTERM)
        wait_for(
            lambda: httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 400,
            "readiness to turn false",
        )
        assert httpx.get(f"{base}/v2/health/live", timeout=10).status_code == 200
        workers.append(send())  # in the grace period (3 s): accepted
        # The grace period ends while the model still holds its batch: new work is refused.
        wait_for(lambda: probe().status_code == 503, "the drain to refuse new work")
        late = probe()
        assert late.status_code == 503 and late.headers["retry-after"]
        assert "error" in late.json()
        assert proc.poll() is None  # the drain waits for the accepted work
        release.touch()
        for w in workers:
            w.join(30)
        assert results == [200] * 5  # everything accepted was answered
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "clean exit" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


# ------------------------------------------------------------------------------ inferline serve


def test_inferline_serve_example_repository(tmp_path: Any) -> None:
    """``inferline serve REPO`` end to end: the repository extension, versions and aliases,
    load/unload, then SIGTERM and exit 0. Runs on a private copy of the example repository."""
    import shutil

    repo = tmp_path / "repo"
    examples = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "repository")
    if not os.path.isdir(examples):
        pytest.skip("the example repository is not in this checkout")
    shutil.copytree(examples, repo)
    with served_repository(repo, "--allow-code", ready_within=60) as server:
        proc, port = server.proc, server.port
        c = tc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            assert c.is_server_ready()
            index = {(m["name"], m.get("version")): m for m in c.get_model_repository_index()}
            assert index[("classifier", "1")]["state"] == "READY"
            assert index[("classifier", "2")]["state"] == "READY"
            x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
            probs = {}
            for version in ("1", "2", "stable", "canary", ""):
                r = c.infer("classifier", [f32_input(x)], model_version=version)
                probs[version] = r.as_numpy("probs")
                np.testing.assert_allclose(probs[version].sum(axis=1), 1, rtol=1e-5)
            np.testing.assert_array_equal(probs["stable"], probs["1"])
            np.testing.assert_array_equal(probs["canary"], probs["2"])
            np.testing.assert_array_equal(probs[""], probs["2"])  # default: latest
            assert not np.array_equal(probs["1"], probs["2"])
            xs = np.arange(16, dtype=np.float32).reshape(2, 8)
            r = c.infer("scaler", [f32_input(xs)])
            np.testing.assert_array_equal(r.as_numpy("y"), 2 * xs + 1)

            c.unload_model("scaler")
            code, msg = status_of(lambda: c.infer("scaler", [f32_input(xs)]))
            assert code == "503" and "model 'scaler' is not loaded" in msg  # as the index says
            c.load_model("scaler")
            r = c.infer("scaler", [f32_input(xs)])
            np.testing.assert_array_equal(r.as_numpy("y"), 2 * xs + 1)
            code, msg = status_of(lambda: c.load_model("no_such_model"))
            assert code == "404" and "no_such_model" in msg
            stats = c.get_inference_statistics("scaler")["model_stats"]
            assert stats and stats[0]["inference_count"] >= 2
        finally:
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
