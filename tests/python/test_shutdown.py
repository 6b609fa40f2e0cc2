"""``inferline serve`` with a model that hangs: SIGTERM ends the process within its deadline
(drain + the core's shutdown grace + a little), with the hung request answered; a second
SIGTERM during the drain ends it at once, non-zero. A model.toml execution timeout answers the
hung request on time."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from python_models import python_model_toml

DRAIN_S = 1.0
SHUTDOWN_GRACE_S = 5.0  # the core's default (inferline.types.DEFAULTS.shutdown_grace_ms)


def model_toml(extra: str) -> str:
    return python_model_toml(batching=f"max_batch_size = 1\n{extra}", warmup="[]")


# Hangs (sleeping, so without the GIL) on a batch whose first value is negative.
MODEL_PY = """import time

import numpy as np


def predict(x: np.ndarray) -> np.ndarray:
    if x[0, 0] < 0:
        time.sleep(3600)
    return x * 2.0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(cond: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def body(v: float) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [v] * 4}]}
    ).encode()


class Server:
    def __init__(self, repo: Path, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "inferline.cli", "--log-level", "WARNING", "serve"]
        cmd += [str(repo), "--port", str(self.port), "--allow-code", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self.ready, "the server to be ready")

    def ready(self) -> bool:
        assert self.proc.poll() is None, (
            self.proc.stderr.read().decode() if self.proc.stderr else ""
        )
        try:
            return httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def ready_status(self) -> int:
        return httpx.get(f"{self.base}/v2/health/ready", timeout=5).status_code

    def in_flight(self) -> int:
        r = httpx.get(f"{self.base}/v2/models/hang/stats", timeout=5).json()
        return int(r["model_stats"][0]["inferline"]["in_flight"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def repo(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    extra = getattr(request, "param", "")
    model = tmp_path / "repo" / "hang"
    (model / "1").mkdir(parents=True)
    (model / "model.toml").write_text(model_toml(extra))
    (model / "1" / "model.py").write_text(MODEL_PY)
    return tmp_path / "repo"


@pytest.fixture
def server(repo: Path) -> Iterator[Server]:
    s = Server(repo, "--drain-timeout", str(DRAIN_S))
    yield s
    s.stop()


def send_in_background(server: Server, v: float) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []

    def post() -> None:
        try:
            r = httpx.post(f"{server.base}/v2/models/hang/infer", content=body(v), timeout=60)
            answers.append(r.status_code)
        except httpx.HTTPError as exc:
            answers.append(exc)

    t = threading.Thread(target=post)
    t.start()
    return t, answers


def test_sigterm_with_a_hung_model_exits_within_its_deadline(server: Server) -> None:
    ok = httpx.post(f"{server.base}/v2/models/hang/infer", content=body(1.0), timeout=30)
    assert ok.status_code == 200
    t, answers = send_in_background(server, -1.0)
    wait_for(lambda: server.in_flight() == 1, "the request to hang in the model")
    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(DRAIN_S + SHUTDOWN_GRACE_S + 5 + 10)  # generous: a loaded 2-core machine
    took = time.monotonic() - t0
    t.join(30)
    assert took < DRAIN_S + SHUTDOWN_GRACE_S + 15
    # The hung request was answered (EngineStopped: 503) before the process went away.
    assert answers and answers[0] == 503, answers


def draining_with_a_hung_request(server: Server) -> threading.Thread:
    """Sends a request that hangs in the model, then SIGTERM; returns once the drain has
    started (readiness false: no grace period is configured). The drain lasts as long as the
    server's --drain-timeout; the returned thread ends when the hung request is answered."""
    t, _ = send_in_background(server, -1.0)
    wait_for(lambda: server.in_flight() == 1, "the request to hang in the model")
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: server.ready_status() == 400, "readiness to turn false")
    return t


def test_second_sigterm_during_the_drain_exits_at_once_non_zero(repo: Path) -> None:
    server = Server(repo, "--drain-timeout", "120")
    try:
        t = draining_with_a_hung_request(server)
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)  # without the second signal: 120 s of drain
        assert code == 128 + signal.SIGTERM
        t.join(60)
    finally:
        server.stop()


def read_response(sock: socket.socket) -> str:
    """One HTTP response (head and a Content-Length body) from ``sock``, however it arrives."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-body: {data!r}"
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_requests_during_the_drain_are_refused_before_their_body_is_read(repo: Path) -> None:
    server = Server(repo, "--drain-timeout", "120")
    try:
        t = draining_with_a_hung_request(server)
        # The headers promise a body that never comes: only a refusal made before reading it
        # can answer (a server reading the body would wait for the client's timeout).
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v2/models/hang/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            head = read_response(sock)
        status_line, _, rest = head.partition("\r\n")
        assert status_line.startswith("HTTP/1.1 503"), head
        assert "retry-after:" in rest.lower(), head
        assert "draining" in rest, head
        server.proc.send_signal(signal.SIGTERM)  # a second one ends the drain at once
        assert server.proc.wait(30) == 128 + signal.SIGTERM
        t.join(60)
    finally:
        server.stop()


@pytest.mark.parametrize("repo", ["execution_timeout_ms = 300.0"], indirect=True)
def test_execution_timeout_from_model_toml_answers_the_hung_request(server: Server) -> None:
    r = httpx.post(f"{server.base}/v2/models/hang/infer", content=body(-1.0), timeout=30)
    assert r.status_code == 500
    assert "did not finish within the 300 ms execution timeout" in r.json()["error"]
    # The instance was replaced: the model keeps serving.
    ok = httpx.post(f"{server.base}/v2/models/hang/infer", content=body(2.0), timeout=30)
    assert ok.status_code == 200
    assert ok.json()["outputs"][0]["data"] == [4.0] * 4


if os.name == "nt":  # pragma: no cover - signals as POSIX sends them
    pytestmark = pytest.mark.skip(reason="POSIX signals")
