"""The HTTP layer against a scripted engine: argument mapping, error mapping, repository
control, statistics shape and cancellation, each checked exactly where the real engine would
make it hard to observe."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import types
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from test_server import ServerThread

from inferline import (
    DeadlineExceeded,
    EngineStopped,
    InvalidInput,
    ModelError,
    ModelInfo,
    ModelNotFound,
    ModelNotReady,
    QueueFullError,
    TensorSpec,
)
from inferline.server import create_app
from inferline.server.admin import triton_stats


class FakeEngine:
    """Records every call; ``behaviour`` decides what ``infer_batch`` does."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.behaviour: Any = None  # None: echo; an exception: raise it; "hang": never answer
        self.cancelled = 0
        self.loaded: list[tuple[str, Any]] = []
        self.unloaded: list[tuple[str, Any]] = []
        self.state = "ready"
        self.ready = True

    def model_info(self, name: str, version: int | str | None = None) -> ModelInfo:
        if name != "m":
            raise ModelNotFound(f"no model named {name!r}")
        if version not in (None, 3, "stable"):
            raise ModelNotFound(f"model 'm' has no version {version!r}")
        spec = TensorSpec("x", "INT32", (2,))
        return ModelInfo(
            name="m",
            version=3,
            versions=[3],
            state="ready",
            reason=None,
            platform="python",
            inputs=[spec],
            outputs=[spec],
            max_batch_size=4,
            priority_levels=3,
            default=True,
        )

    def live_versions(self) -> list[Any]:
        # What the server's default in-flight bound reads.
        return [types.SimpleNamespace(max_queue_size=60, max_batch_size=4)]

    def models(self) -> list[ModelInfo]:
        return [self.model_info("m")]

    def stats(self, name: str, version: Any = None) -> dict[str, Any]:
        self.model_info(name, version)
        return {
            "requests": {"success": 5, "queue_full": 1},
            "batches": 2,
            "queue_depth": 0,
            "in_flight": 0,
            "queue_wait": {"count": 6, "sum": 0.5},
            "compute": {"count": 2, "sum": 0.25},
            "request": {"count": 6, "sum": 1.2},
            "batch_size": {"count": 2, "sum": 5},
        }

    def repository_index(self) -> list[dict[str, Any]]:
        return [
            {"name": i.name, "version": i.version, "state": "READY", "reason": ""}
            for i in self.models()
        ]

    async def infer_batch(self, name: str, inputs: dict[str, np.ndarray], **kw: Any) -> Any:
        self.calls.append({"name": name, "inputs": inputs, **kw})
        if isinstance(self.behaviour, BaseException):
            raise self.behaviour
        if self.behaviour == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return dict(inputs)

    async def load(self, name: str, version: Any = None) -> None:
        if name != "m":
            raise ModelNotFound(f"no model named {name!r} in the repository")
        self.loaded.append((name, version))

    async def unload(self, name: str, version: Any = None) -> None:
        self.model_info(name)
        self.unloaded.append((name, version))


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeEngine, ServerThread]]:
    engine = FakeEngine()
    with ServerThread(create_app(engine, manage_engine=False, retry_after_s=7)) as s:
        yield engine, s


BODY = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}


def post(s: ServerThread, path: str, doc: Any, **kw: Any) -> httpx.Response:
    return httpx.post(s.base + path, json=doc, timeout=10, **kw)


def test_priority_timeout_and_version_reach_the_engine(
    fake: tuple[FakeEngine, ServerThread],
) -> None:
    engine, s = fake
    engine.behaviour = None
    cases = [
        ({}, 0, None),
        ({"priority": 0}, 0, None),  # 0: the default level
        ({"priority": 1}, 0, None),  # 1: the highest (Triton), engine level 0
        ({"priority": 3, "timeout": 250_000}, 2, 0.25),  # timeout in microseconds
        ({"timeout": 0}, 0, None),  # 0: no timeout
    ]
    for params, priority, timeout in cases:
        r = post(s, "/v2/models/m/versions/stable/infer", {**BODY, "parameters": params})
        assert r.status_code == 200, r.text
        call = engine.calls[-1]
        assert call["priority"] == priority and call["timeout"] == timeout
        assert call["version"] == "stable"
        np.testing.assert_array_equal(call["inputs"]["x"], [[1, 2], [3, 4]])
    r = post(s, "/v2/models/m/infer", BODY)
    assert engine.calls[-1]["version"] == 3  # the version the metadata named, fixed per request
    assert r.json()["model_version"] == "3"


@pytest.mark.parametrize(
    ("exc", "status", "retry"),
    [
        (QueueFullError("queue of model 'm' is full (1024 waiting)"), 503, True),
        (ModelNotReady("model 'm' version 3 is warming"), 503, True),
        (EngineStopped("the engine is draining"), 503, True),
        (DeadlineExceeded("no answer within the 0.1s timeout"), 504, False),
        (InvalidInput("input 'x' contains NaN or Inf"), 400, False),
        (ModelError("model 'm' failed: boom"), 500, False),
        (ModelNotFound("model 'm' has no version 9"), 404, False),
        (RuntimeError("engine bug"), 500, False),
    ],
)
def test_engine_errors_map_to_status_codes(
    fake: tuple[FakeEngine, ServerThread], exc: Exception, status: int, retry: bool
) -> None:
    engine, s = fake
    engine.behaviour = exc
    try:
        r = post(s, "/v2/models/m/infer", BODY)
    finally:
        engine.behaviour = None
    assert r.status_code == status
    assert ("retry-after" in r.headers) == retry
    if retry:
        assert r.headers["retry-after"] == "7"
    message = r.json()["error"]
    if isinstance(exc, RuntimeError):
        assert message == "internal error: RuntimeError"  # no internals leak to clients
    else:
        assert message == str(exc)


def test_disconnect_cancels_the_engine_call(fake: tuple[FakeEngine, ServerThread]) -> None:
    engine, s = fake
    engine.behaviour = "hang"
    body = json.dumps(BODY).encode()
    try:
        before = engine.cancelled
        n_calls = len(engine.calls)
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
        sock.sendall(
            b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        deadline = time.monotonic() + 10
        while len(engine.calls) == n_calls and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()
        while engine.cancelled == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.cancelled == before + 1
    finally:
        engine.behaviour = None


def test_repository_load_unload(fake: tuple[FakeEngine, ServerThread]) -> None:
    engine, s = fake
    assert post(s, "/v2/repository/models/m/load", {}).status_code == 200
    assert httpx.post(s.base + "/v2/repository/models/m/load", timeout=10).status_code == 200
    assert (
        post(s, "/v2/repository/models/m/load", {"parameters": {"version": 3}}).status_code == 200
    )
    assert engine.loaded == [("m", None), ("m", None), ("m", 3)]
    r = post(s, "/v2/repository/models/zz/load", {})
    assert r.status_code == 404 and "no model named 'zz'" in r.json()["error"]
    r = post(s, "/v2/repository/models/m/load", {"parameters": {"config": "{}"}})
    assert r.status_code == 400 and "not supported" in r.json()["error"]
    r = post(s, "/v2/repository/models/m/load", [1])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]
    r = post(s, "/v2/repository/models/m/unload", {"parameters": {"unload_dependents": False}})
    assert r.status_code == 200 and engine.unloaded == [("m", None)]
    index = post(s, "/v2/repository/index", {"ready": True}).json()
    assert index == [{"name": "m", "version": "3", "state": "READY", "reason": ""}]


def test_statistics_mapping_to_triton_shape() -> None:
    engine = FakeEngine()
    st = triton_stats("m", 3, engine.stats("m"), 1234)
    assert st["name"] == "m" and st["version"] == "3" and st["last_inference"] == 1234
    assert st["inference_count"] == 5 and st["execution_count"] == 2
    inf = st["inference_stats"]
    assert inf["success"] == {"count": 5, "ns": 1_000_000_000}  # 5/6 of 1.2 s
    assert inf["fail"] == {"count": 1, "ns": 200_000_000}
    assert inf["queue"] == {"count": 6, "ns": 500_000_000}
    assert inf["compute_infer"] == {"count": 2, "ns": 250_000_000}
    assert "batch_stats" not in st  # the engine keeps a batch-size histogram, not counts
    assert st["inferline"]["batch_size"] == {"count": 2, "sum": 5}
    assert st["inferline"]["requests"] == {"success": 5, "queue_full": 1}
    empty = triton_stats("m", 1, {}, 0)
    assert empty["inference_stats"]["success"] == {"count": 0, "ns": 0}


def test_stats_routes(fake: tuple[FakeEngine, ServerThread]) -> None:
    _, s = fake
    for path in ("/v2/models/stats", "/v2/models/m/stats", "/v2/models/m/versions/3/stats"):
        r = httpx.get(s.base + path, timeout=10)
        assert r.status_code == 200 and r.json()["model_stats"][0]["name"] == "m"
    r = httpx.get(s.base + "/v2/models/m/versions/9/stats", timeout=10)
    assert r.status_code == 404 and "no version 9" in r.json()["error"]


def test_readiness_follows_the_engine(fake: tuple[FakeEngine, ServerThread]) -> None:
    engine, s = fake
    engine.ready = False
    try:
        assert httpx.get(s.base + "/v2/health/ready", timeout=10).status_code == 400
    finally:
        engine.ready = True
    assert httpx.get(s.base + "/v2/health/ready", timeout=10).status_code == 200


def test_create_app_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="max_body_bytes must be a positive int"):
        create_app(FakeEngine(), max_body_bytes=0)
    with pytest.raises(ValueError, match="max_json_bytes must be a positive int"):
        create_app(FakeEngine(), max_json_bytes=-1)


def test_disconnect_watch_steps_any_asyncio_receive() -> None:
    """The watcher steps ``receive()`` without a Task: a disconnect after a bare yield and
    a body message cancels the waiting task; stopping leaves no waiter behind."""
    from inferline.server.infer import _DisconnectWatch

    async def main() -> None:
        gone = asyncio.Event()
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0)  # a bare yield
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def request() -> bool:
            watch = _DisconnectWatch(receive, 0.0)
            try:
                await asyncio.Event().wait()  # the engine call that never answers
            except asyncio.CancelledError:
                return watch.gone
            finally:
                watch.stop()
            return False

        task = asyncio.ensure_future(request())
        while not gone._waiters:  # the watcher waits on the event once the body is read
            await asyncio.sleep(0)
        gone.set()
        assert await task is True

        # Stopped while waiting, or before its delay: nothing is left waiting, no cancel.
        never = asyncio.Event()

        async def receive_never() -> dict[str, Any]:
            await never.wait()
            return {"type": "http.disconnect"}

        for delay in (0.0, 10.0):
            watch = _DisconnectWatch(receive_never, delay)
            assert bool(never._waiters) is (delay == 0.0)
            watch.stop()
            assert not never._waiters and not watch.gone

    asyncio.run(main())


def test_request_body_read_all_checks_the_declared_length() -> None:
    """A body that comes in one piece is answered as it came; in any number of pieces it
    must hold exactly its Content-Length."""
    from inferline.server.body import RequestBody
    from inferline.server.errors import HTTPError

    class Held:
        body_bytes = 0

        def reserve_body(self, n: int) -> None:
            self.body_bytes += n

        def release_body(self, n: int) -> None:
            self.body_bytes -= n

    async def read(pieces: list[bytes], declared: int) -> bytes | bytearray:
        messages = [
            {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
            for i, p in enumerate(pieces)
        ]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        held = Held()
        body = RequestBody(receive, 1 << 20, held)  # type: ignore[arg-type]
        body.declare(declared)
        try:
            return await body.read_all()
        finally:
            body.release()
            assert held.body_bytes == 0

    one = b'{"inputs": []}'
    assert asyncio.run(read([one], len(one))) is one
    assert asyncio.run(read([one[:3], one[3:]], len(one))) == one
    for pieces, declared, says in (
        ([one], len(one) + 1, "shorter"),
        ([one], len(one) - 1, "longer"),
        ([one[:3], one[3:]], len(one) + 1, "shorter"),
        ([one[:3], one[3:]], len(one) - 1, "longer"),
    ):
        with pytest.raises(HTTPError, match=f"body is {says} than its Content-Length"):
            asyncio.run(read(pieces, declared))
