"""Admission before work, input edges, and quiet refusals, against the real engine.

Each server is started by the test on 127.0.0.1 (port 0) and stopped by it. Where a test
must show that the server answered *before reading* a body, it sends the headers (and at
most the JSON header) over a raw socket and withholds the rest: an answer can then only
come from a server that did not wait for it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from test_server import ServerThread, http_count

import inferline
from inferline import Batching, TensorSpec
from inferline.server import create_app
from inferline.server.admission import version_in_flight
from inferline.server.errors import HTTPError, ProtocolError
from inferline.server.outcomes import ERRORS_LOGGED_PER_INTERVAL, Outcomes
from inferline.server.protocol import MAX_TIMEOUT_US, parse_infer_header

HOLD = threading.Event()
HOLD.set()


def held(x: np.ndarray) -> np.ndarray:
    HOLD.wait(30)
    return x


QUEUE_SIZE = 64  # model "small"


def build_engine() -> inferline.Engine:
    e = inferline.Engine()
    f8 = [TensorSpec("x", "FP32", (8,))]
    e.register(
        "small",
        lambda x: x + 1,
        inputs=f8,
        outputs=[TensorSpec("y", "FP32", (8,))],
        batching=Batching(max_batch_size=8, max_queue_size=QUEUE_SIZE, priority_levels=2),
    )
    e.register(
        "held",
        held,
        inputs=f8,
        outputs=[TensorSpec("y", "FP32", (8,))],
        batching=Batching(max_batch_size=1, max_queue_size=8),
        warmup=False,
    )
    return e


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    app = create_app(
        build_engine(),
        max_body_bytes=32 << 20,
        max_body_bytes_in_flight=24 << 20,
        max_in_flight=3,
        retry_after_s=2,
    )
    with ServerThread(app) as s:
        yield s


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def raw_exchange(
    server: ServerThread, head: bytes, body_part: bytes = b""
) -> tuple[int, dict, Any]:
    """Sends ``head`` (request line and headers) and ``body_part``, and reads the answer
    (the rest of any declared body is never sent)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(head + body_part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, "connection closed before an answer"
            data += chunk
        top, rest = data.split(b"\r\n\r\n", 1)
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk, "connection closed inside the answer"
            rest += chunk
    return status, headers, json.loads(rest[:length])


def post_head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def binary_header(rows: int) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [rows, 8],
                    "parameters": {"binary_data_size": rows * 32},
                }
            ]
        }
    ).encode()


def engine_requests(server: ServerThread, model: str) -> int:
    stats = httpx.get(f"{server.base}/v2/models/{model}/stats", timeout=10).json()
    return sum(stats["model_stats"][0]["inferline"]["requests"].values())


def small_json(rows: int, **params: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 8], "data": [1.0] * 8 * rows}]
    }
    if params:
        doc["parameters"] = params
    return doc


# ------------------------------------------------------------------------------ rows


def test_500k_rows_refused_with_413_naming_the_limit(server: ServerThread) -> None:
    rows = 500_000
    header = binary_header(rows)
    body = header + np.zeros((rows, 8), np.float32).tobytes()  # 16 MB of tensor data
    before = http_count(server, "small", "too_large")
    seen = engine_requests(server, "small")
    r = httpx.post(
        f"{server.base}/v2/models/small/infer",
        content=body,
        headers={"inference-header-content-length": str(len(header))},
        timeout=60,
    )
    assert r.status_code == 413
    assert r.json()["error"] == (
        "the request has 500000 rows for model 'small'; the limit is 65536 rows per "
        "request (max_rows_per_request): split it"
    )
    assert engine_requests(server, "small") == seen  # the engine never saw it
    assert http_count(server, "small", "too_large") == before + 1
    # The connection stays usable: the server answered and the rest was discarded.
    ok = httpx.post(f"{server.base}/v2/models/small/infer", json=small_json(2), timeout=10)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [2.0] * 16


def test_binary_request_refused_before_its_tensor_bytes_arrive(server: ServerThread) -> None:
    header = binary_header(100_000)
    length = len(header) + 100_000 * 32
    extra = f"Inference-Header-Content-Length: {len(header)}\r\n"
    # Only the JSON header is sent: the answer cannot have waited for the tensors.
    status, _, doc = raw_exchange(
        server, post_head("/v2/models/small/infer", length, extra), header
    )
    assert status == 413
    assert "the limit is 65536 rows per request (max_rows_per_request)" in doc["error"]


def test_max_rows_per_request_is_configurable() -> None:
    with ServerThread(create_app(build_engine(), max_rows_per_request=4)) as s:
        url = f"{s.base}/v2/models/small/infer"
        assert httpx.post(url, json=small_json(4), timeout=10).status_code == 200
        r = httpx.post(url, json=small_json(5), timeout=10)
        assert r.status_code == 413
        assert r.json()["error"] == (
            "the request has 5 rows for model 'small'; the limit is 4 rows per request "
            "(max_rows_per_request): split it"
        )


def test_more_rows_than_the_queue_holds_is_413_not_503(server: ServerThread) -> None:
    # A request's rows are admitted together: one larger than the whole queue could never be
    # admitted, so retrying (what 503 asks for) would not help.
    queue = QUEUE_SIZE
    r = httpx.post(f"{server.base}/v2/models/small/infer", json=small_json(queue + 1), timeout=30)
    assert r.status_code == 413
    assert r.json()["error"] == (
        f"the request has {queue + 1} rows; model 'small' queues at most {queue} "
        "(max_queue_size): split it"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_rows_per_request": 0}, "max_rows_per_request must be a positive int or None, got 0"),
        ({"max_in_flight": -1}, "max_in_flight must be a positive int or None, got -1"),
        (
            {"max_body_bytes_in_flight": 1.5},
            "max_body_bytes_in_flight must be a positive int or None, got 1.5",
        ),
        ({"log_interval_s": 0}, "log_interval_s must be positive, got 0"),
    ],
)
def test_bad_admission_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        create_app(build_engine(), **kwargs)
    assert str(info.value) == message


# ------------------------------------------------------------------------------ door bounds


def test_unknown_model_answered_before_the_body(server: ServerThread) -> None:
    status, _, doc = raw_exchange(server, post_head("/v2/models/nope/infer", 1_000_000))
    assert status == 404
    assert doc["error"].startswith("no model named 'nope'")
    assert http_count(server, "", "not_found") >= 1  # unknown names share one label


def test_body_bytes_in_flight_bound_answers_503(server: ServerThread) -> None:
    # 25 MiB fits max_body_bytes (32) but not the 24 MiB held at once.
    status, headers, doc = raw_exchange(server, post_head("/v2/models/small/infer", 25 << 20))
    assert status == 503 and headers["retry-after"] == "2"
    assert doc["error"] == (
        f"the server holds 0 bytes of request bodies and this one needs {25 << 20} more; "
        f"the limit is {24 << 20} (max_body_bytes_in_flight); retry later"
    )
    assert http_count(server, "small", "body_bytes") >= 1


def test_beyond_max_in_flight_503_at_once_before_the_body(server: ServerThread) -> None:
    url = f"{server.base}/v2/models/held/infer"
    results: list[int] = []
    HOLD.clear()
    try:
        workers = [
            threading.Thread(
                target=lambda: results.append(
                    httpx.post(url, json=small_json(1), timeout=30).status_code
                )
            )
            for _ in range(3)
        ]
        for w in workers:
            w.start()

        def in_flight() -> int:
            stats = httpx.get(f"{server.base}/v2/models/held/stats", timeout=10).json()
            return int(stats["model_stats"][0]["inferline"]["in_flight"])

        wait_for(lambda: in_flight() == 3, "3 requests held in the engine")
        before = http_count(server, "held", "overloaded")
        # Headers only: the 503 comes without the body, and without a model lookup's cost.
        status, headers, doc = raw_exchange(server, post_head("/v2/models/held/infer", 500))
        assert status == 503 and headers["retry-after"] == "2"
        assert doc["error"] == (
            "the server is handling 3 requests, its limit (max_in_flight = 3); retry later"
        )
        assert http_count(server, "held", "overloaded") == before + 1
    finally:
        HOLD.set()
    for w in workers:
        w.join(30)
    assert results == [200, 200, 200]


@pytest.mark.parametrize(
    "queue, batch, bound",
    [
        (150, 32, 150),  # the queue: computing requests count against it
        (64, 8, 64),
        (48, 32, 64),  # at least two batches: one computing while the next forms
        (32, 32, 64),
        (8, 32, 40),  # at most the queue plus one batch
        (1, 1, 2),
    ],
)
def test_a_versions_share_of_the_in_flight_bound(queue: int, batch: int, bound: int) -> None:
    assert version_in_flight(queue, batch) == bound


def test_default_in_flight_bound_follows_the_models_queues() -> None:
    app = create_app(build_engine())
    with ServerThread(app) as s:
        admission = app.infer_handler.admission  # type: ignore[attr-defined]
        assert httpx.get(f"{s.base}/v2/health/ready", timeout=10).status_code == 200
        # small: its queue of 64 (over two batches of 8); held: its queue of 8 (batches of 1).
        assert admission.max_in_flight == 64 + 8


# ------------------------------------------------------------------------------ input edges


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"timeout": 9223372036854775807},
            f"request: parameter 'timeout' is 9223372036854775807 microseconds; at most "
            f"{MAX_TIMEOUT_US} (one day) is allowed, and 0 means no timeout",
        ),
        (
            {"timeout": 2**64},
            "request: parameter 'timeout' must be a non-negative integer, got "
            "1.8446744073709552e+19",
        ),
        (
            {"priority": 9223372036854775807},
            "parameter 'priority' is 9223372036854775807; model 'small' has 2 priority "
            "level(s): give 1 (the highest) to 2, or 0 for the default",
        ),
        (
            {"priority": 3},
            "parameter 'priority' is 3; model 'small' has 2 priority level(s): give 1 "
            "(the highest) to 2, or 0 for the default",
        ),
    ],
)
def test_numbers_that_overflow_get_400(
    server: ServerThread, params: dict[str, Any], message: str
) -> None:
    r = httpx.post(f"{server.base}/v2/models/small/infer", json=small_json(1, **params), timeout=10)
    assert r.status_code == 400
    assert r.json()["error"] == message


@pytest.mark.parametrize("dim", [2**63, 2**64 + 1, 9223372036854775807])
def test_shape_dims_that_overflow_get_400(server: ServerThread, dim: int) -> None:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [dim, 8], "data": []}]}
    r = httpx.post(f"{server.base}/v2/models/small/infer", json=doc, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"].startswith("input 'x': ")
    assert "shape" in r.json()["error"]


def test_max_timeout_still_accepted(server: ServerThread) -> None:
    doc = small_json(1, timeout=MAX_TIMEOUT_US, priority=2)
    r = httpx.post(f"{server.base}/v2/models/small/infer", json=doc, timeout=10)
    assert r.status_code == 200


def test_header_parse_converts_no_data() -> None:
    # Elements of the wrong kind are found only when the data is converted, after the
    # checks against the model: the header parse looks at shapes and sizes alone.
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}
    header = parse_infer_header(json.dumps(doc).encode(), binary_length=None)
    (d,) = header.inputs
    assert (d.name, d.datatype, d.shape, d.count) == ("x", "FP32", (2,), 2)
    with pytest.raises(ProtocolError) as info:
        header.tensors()
    assert info.value.status == 400
    assert info.value.message == "input 'x': FP32 data must be numbers, found string"


def test_header_parse_checks_binary_sizes_against_the_declared_length() -> None:
    text = binary_header(10)
    with pytest.raises(ProtocolError) as info:
        parse_infer_header(text, binary_length=100)
    assert info.value.message == (
        "input 'x': binary_data_size 320 runs past the end of the body (100 bytes of "
        "binary data remain)"
    )


# ------------------------------------------------------------------------------ quiet


def test_refusals_are_summarised_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inferline.server")
    o = Outcomes(interval_s=3600)
    for _ in range(1200):
        o.refused("m", HTTPError(503, "queue full", True, "queue_full"), "r")
    for _ in range(34):
        o.refused("", HTTPError(400, "bad"), "r")
    for _ in range(3):
        o.disconnected("m", "r")
    assert caplog.records == []  # nothing per refusal
    o.flush()
    (rec,) = caplog.records
    assert rec.levelno == logging.WARNING
    assert rec.getMessage().startswith(
        "http: 1,234 requests refused in the last 0s: 1,200 x 503 queue_full, "
        "34 x 400 bad_request; 3 client disconnects"
    )
    assert o.snapshot() == {
        ("m", "queue_full"): 1200,
        ("", "bad_request"): 34,
        ("m", "disconnected"): 3,
    }
    caplog.clear()
    o.flush()  # an empty interval writes nothing
    assert caplog.records == []


def test_model_errors_log_alone_but_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inferline.server")
    o = Outcomes(interval_s=3600)
    for i in range(20):
        o.refused("m", HTTPError(500, f"boom {i}", outcome="model_error"), f"r{i}")
    alone = [r for r in caplog.records if "boom" in r.getMessage()]
    assert len(alone) == ERRORS_LOGGED_PER_INTERVAL
    assert alone[0].getMessage() == "request r0: model 'm' -> 500: boom 0"
    o.flush()
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith("http: 20 requests refused in the last 0s: 20 x 500 model_error")
    )


def test_outcomes_in_metrics(server: ServerThread) -> None:
    before = http_count(server, "small", "success")
    r = httpx.post(f"{server.base}/v2/models/small/infer", json=small_json(1), timeout=10)
    assert r.status_code == 200
    assert http_count(server, "small", "success") == before + 1
    bad = {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1], "data": [1]}]}
    before = http_count(server, "small", "bad_request")
    r = httpx.post(f"{server.base}/v2/models/small/infer", json=bad, timeout=10)
    assert r.status_code == 400
    assert http_count(server, "small", "bad_request") == before + 1
