"""Overload refused in the HTTP protocol (inferline.server.fast_refusal), against the real
engine under uvicorn with the protocol ``serve`` uses.

A model whose calls wait on an event holds the server at its ``max_in_flight`` bound; infer
requests sent over raw sockets then get the 503 from the protocol, before any ASGI task
exists for them. Servers bind 127.0.0.1 and are stopped by the tests; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_admission import HOLD, build_engine, wait_for
from test_server import ServerThread, http_count
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import inferline
from inferline.server import create_app, fast_refusal
from inferline.server.fast_refusal import (
    REQUIRED_ATTRIBUTES,
    RefusingHttpToolsProtocol,
    missing_uvicorn_hooks,
    refusing_protocol,
)
from inferline.server.runner import _build

LIMIT = 2
MESSAGE = (
    f"the server is handling {LIMIT} requests, its limit (max_in_flight = {LIMIT}); retry later"
)


def build_app() -> Any:
    # test_admission's models: "held" waits on HOLD, which these tests clear and set.
    return create_app(build_engine(), max_in_flight=LIMIT, retry_after_s=3)


class Started:
    """The server with the protocol that ``serve`` gives uvicorn, and ASGI tasks counted."""

    def __init__(self, server: ServerThread, protocol: type[Any]) -> None:
        self.server = server
        self.protocol = protocol
        self.tasks = 0
        start = protocol._start_asgi_task

        def counted(p: Any, cycle: Any, app: Any) -> None:
            self.tasks += 1
            start(p, cycle, app)

        protocol._start_asgi_task = counted  # the bound subclass's own: uvicorn is untouched

    @property
    def base(self) -> str:
        return self.server.base

    def in_flight(self) -> int:
        stats = httpx.get(f"{self.base}/v2/models/held/stats", timeout=10).json()
        return int(stats["model_stats"][0]["inferline"]["in_flight"])


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    app = build_app()
    protocol = refusing_protocol(app)
    assert protocol is not None and issubclass(protocol, RefusingHttpToolsProtocol)

    class Unlogged(protocol):  # type: ignore[misc, valid-type]
        # uvicorn logs access when its access logger has handlers; with access_log=False it
        # has none, but pytest >= 9.2 attaches its capture handlers to non-propagating
        # loggers too, which uvicorn would read as access logging on (and the protocol then
        # leaves the refusal to the app, as it must for a logged request).
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.access_log = False

    s = ServerThread(app)
    s.server.config.http = Unlogged
    with s:
        yield Started(s, protocol)


DOC = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": list(range(8))}]}
BODY = json.dumps(DOC).encode()


def infer_head(length: int = len(BODY), extra: str = "", path: str = "held") -> bytes:
    return (
        f"POST /v2/models/{path}/infer HTTP/1.1\r\nHost: t\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


class Conn:
    """A raw keep-alive connection that reads answers one at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            assert self._more(), f"connection closed before an answer: {self.buf!r}"
        top, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = top.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buf) < length:
            assert self._more(), "connection closed inside an answer"
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def closed_by_server(self) -> bool:
        """True when the server closes the connection with nothing more to read."""
        return not self.buf and not self._more()

    def close(self) -> None:
        self.sock.close()


class Held:
    """``LIMIT`` requests held in the model (the server at its bound) until the block ends."""

    def __init__(self, started: Started) -> None:
        self.started = started
        self.results: list[int] = []
        self.threads = [
            threading.Thread(
                target=lambda: self.results.append(
                    httpx.post(
                        f"{started.base}/v2/models/held/infer", json=DOC, timeout=30
                    ).status_code
                )
            )
            for _ in range(LIMIT)
        ]

    def __enter__(self) -> Held:
        HOLD.clear()
        for t in self.threads:
            t.start()
        wait_for(lambda: self.started.in_flight() == LIMIT, f"{LIMIT} requests held")
        return self

    def __exit__(self, *exc: object) -> None:
        HOLD.set()
        for t in self.threads:
            t.join(30)
        assert self.results == [200] * LIMIT
        wait_for(lambda: self.started.in_flight() == 0, "the held requests answered")


def assert_refused(answer: tuple[int, dict[str, str], bytes], rid: str | None = None) -> None:
    status, headers, body = answer
    assert status == 503
    assert headers["retry-after"] == "3"
    assert headers["content-type"] == "application/json"
    assert "date" in headers  # uvicorn's default headers, as on every other answer
    assert json.loads(body) == {"error": MESSAGE}
    if rid is not None:
        assert headers["x-request-id"] == rid
    else:
        assert headers["x-request-id"]


def test_uvicorn_still_has_what_the_protocol_subclasses(started: Started) -> None:
    # Fails loudly when an upgrade of uvicorn changes the internals the protocol relies on
    # (serve would then fall back to uvicorn's own protocol, with a warning).
    assert missing_uvicorn_hooks() == []
    c = Conn(started.server.port)
    try:
        c.send(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        assert c.answer()[0] == 200
        live = [
            p
            for p in started.server.server.server_state.connections
            if isinstance(p, RefusingHttpToolsProtocol)
        ]
        assert live, "the server's connections do not use the refusing protocol"
        for p in live:
            for name in REQUIRED_ATTRIBUTES:
                assert hasattr(p, name), f"HttpToolsProtocol has no attribute {name!r}"
            assert isinstance(p.flow.write_paused, bool)
            assert isinstance(p.server_state.default_headers, list)
    finally:
        c.close()


def test_a_changed_uvicorn_falls_back_to_its_own_protocol_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(fast_refusal.REQUIRED, "on_chunk_header", ())
    monkeypatch.setitem(fast_refusal.REQUIRED, "on_body", ("body", "more"))
    with caplog.at_level(logging.WARNING, "inferline.server"):
        assert refusing_protocol(build_app()) is None
    assert caplog.messages == [
        "uvicorn's HttpToolsProtocol changed (HttpToolsProtocol.on_body(body, more), "
        "HttpToolsProtocol.on_chunk_header()): overload is refused by the app instead"
    ]
    assert refusing_protocol(object()) is None  # no infer route: nothing to refuse for


def test_serve_uses_the_protocol_unless_told_not_to() -> None:
    engine = inferline.Engine()
    args: dict[str, Any] = dict(
        drain_timeout=1.0, grace_period=0.0, log_level="warning", access_log=False
    )
    server = _build(engine, "127.0.0.1", 0, on_started=None, app_kwargs={}, **args)
    assert isinstance(server.config.http, type)
    assert issubclass(server.config.http, RefusingHttpToolsProtocol)
    assert issubclass(server.config.http, HttpToolsProtocol)
    off = _build(
        engine, "127.0.0.1", 0, on_started=None, app_kwargs={"fast_refusal": False}, **args
    )
    assert off.config.http == "auto"


def test_full_bound_503_at_the_headers_with_the_apps_answer(started: Started) -> None:
    with Held(started):
        before = http_count(started.server, "held", "overloaded")
        tasks = started.tasks
        c = Conn(started.server.port)
        try:
            c.send(infer_head(extra="X-Request-ID: abc-1\r\n"))  # the body is withheld
            assert_refused(c.answer(), "abc-1")
            assert started.tasks == tasks  # no ASGI task for it
            c.send(BODY + infer_head(extra="X-Request-ID: bad id!\r\n") + BODY)
            assert_refused(c.answer())  # an id that is not echoed: the server's own
        finally:
            c.close()
        assert http_count(started.server, "held", "overloaded") == before + 2


def test_body_in_chunks_after_the_refusal_is_dropped_and_the_next_request_served(
    started: Started,
) -> None:
    # The refused request's body looks like a request: served, it would get its own answer.
    smuggled = b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
    body = smuggled + b" " * (3000 - len(smuggled))
    c = Conn(started.server.port)
    try:
        with Held(started):
            c.send(infer_head(len(body), "X-Request-ID: r-1\r\n"))
            assert_refused(c.answer(), "r-1")
            for i in range(0, len(body), 1000):
                c.send(body[i : i + 1000])
        c.send(infer_head(extra="X-Request-ID: r-2\r\n") + BODY)
        status, headers, answer = c.answer()
        assert (status, headers["x-request-id"]) == (200, "r-2")
        assert json.loads(answer)["outputs"][0]["data"] == list(range(8))
        c.send(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Request-ID: r-3\r\n\r\n")
        status, headers, _ = c.answer()
        assert (status, headers["x-request-id"]) == (200, "r-3")
        assert c.buf == b""  # nothing answered the smuggled request
    finally:
        c.close()


def test_chunked_body_after_the_refusal_is_dropped(started: Started) -> None:
    head = (
        b"POST /v2/models/held/infer HTTP/1.1\r\nHost: t\r\nX-Request-ID: c-1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    c = Conn(started.server.port)
    try:
        with Held(started):
            c.send(head)
            assert_refused(c.answer(), "c-1")
            for part in (BODY[:10], BODY[10:]):
                c.send(b"%x\r\n%s\r\n" % (len(part), part))
            c.send(b"0\r\n\r\n")
        c.send(infer_head(extra="X-Request-ID: c-2\r\n") + BODY)
        status, headers, _ = c.answer()
        assert (status, headers["x-request-id"]) == (200, "c-2")
    finally:
        c.close()


def test_pipelined_requests_answered_in_order(started: Started) -> None:
    with Held(started):
        before = http_count(started.server, "held", "overloaded")
        c = Conn(started.server.port)
        try:
            # Two refusals back to back, then a request the app answers while the next
            # refusal waits behind it (the protocol leaves that one to the app), then one more.
            c.send(
                infer_head(extra="X-Request-ID: p-1\r\n")
                + BODY
                + infer_head(extra="X-Request-ID: p-2\r\n")
                + BODY
                + b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX-Request-ID: p-3\r\n\r\n"
                + infer_head(extra="X-Request-ID: p-4\r\n")
                + BODY
            )
            assert_refused(c.answer(), "p-1")
            assert_refused(c.answer(), "p-2")
            status, headers, _ = c.answer()
            assert (status, headers["x-request-id"]) == (200, "p-3")
            assert_refused(c.answer(), "p-4")
        finally:
            c.close()
        assert http_count(started.server, "held", "overloaded") == before + 3


@pytest.mark.parametrize(
    "extra, body",
    [
        ("Connection: close\r\n", BODY),
        ("Expect: 100-continue\r\n", b""),  # the client waits for a go-ahead
    ],
)
def test_connection_close_and_expect_continue_close_after_the_refusal(
    started: Started, extra: str, body: bytes
) -> None:
    with Held(started):
        c = Conn(started.server.port)
        try:
            c.send(infer_head(extra=extra) + body)
            answer = c.answer()
            assert_refused(answer)
            assert answer[1]["connection"] == "close"
            assert c.closed_by_server()
        finally:
            c.close()


def test_below_the_bound_and_other_routes_go_to_the_app(started: Started) -> None:
    tasks = started.tasks
    c = Conn(started.server.port)
    try:
        c.send(infer_head() + BODY)
        assert c.answer()[0] == 200
        c.send(infer_head(path="nope") + BODY)
        status, _, body = c.answer()
        assert status == 404 and "nope" in json.loads(body)["error"]
    finally:
        c.close()
    assert started.tasks == tasks + 2
