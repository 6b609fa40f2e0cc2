"""HTTP load benchmark: inferline's Open Inference Protocol server vs. a FastAPI baseline.

    python bench/python/http_bench.py [--repo examples/repository] [--model classifier]
                                      [--concurrency 1,64,256] [--duration 5] [--quick]

The servers run in their own processes under uvicorn with the same settings (one worker, the
same event loop and HTTP implementation; access log, Server header and proxy-header rewriting
off, as ``inferline serve`` runs) and serve the same model from the example repository.
inferline batches concurrent requests in its native core. The baselines are the usual FastAPI
app (pydantic request model): ``inline``, an ``async def`` endpoint calling the model once per
request on the event loop; ``threadpool``, a plain ``def`` endpoint that FastAPI runs in its
thread pool; and ``batched``, an ``async def`` endpoint that awaits the hand-written batcher
of engine_bench.py (baseline.HandBatcher: the same max_batch_size and window as the model's
config, the ONNX session run inline on the loop), so that ratio measures the server, not
batching against none (``--baselines`` picks them). All get the same KServe v2 JSON request
of one item, so the comparison includes parsing and encoding.

The load generator is a minimal keep-alive HTTP/1.1 client on asyncio (uvloop when
installed): ``c`` connections, each sending its next request as soon as the previous answer
arrives, for ``--duration`` seconds after a short warm-up. Requests cycle through
``--distinct`` different inputs, so a result cache cannot answer them. It prints requests/s,
p50 and p99 latency, the server's CPU time per request and the client's for each server
and concurrency, and the ratios against each baseline; non-200 answers are counted and
reported, never mixed into the latencies. On a shared machine, ``--repeat 3`` interleaves the
servers and reports medians.

The ``inferline-grpc`` row is the same server with ``--grpc-port`` (its own process) driven
over gRPC with the same inputs as serialized ModelInferRequests with raw contents, as
tritonclient.grpc sends them: ``c`` concurrent unary ModelInfer calls on one HTTP/2
connection, each client sending its next call when the previous one has ended. The
``inferline-grpc-stream`` row (another such server process) sends the same messages on ``c``
ModelStreamInfer streams of one connection, as tritonclient.grpc's
``start_stream``/``async_stream_infer`` does, each stream closed-loop (one request in flight:
the next is written when the answer is read). The targets give both rows' req/s against the
HTTP/JSON row at c=64 (``--no-grpc`` leaves them out). ``--grpc-ceiling`` adds the
``grpc.aio-echo-stream`` row: a grpc.aio server (its own process, on uvloop) that answers each
ModelStreamInfer message at once with the real server's answer bytes, without parsing it or
running a model, driven like the stream row. No server built on grpc.aio can serve more here,
so its ratio against the HTTP/JSON row bounds what the stream row can reach.

Each row's client, all in this process on the same loop, sharing the CPUs with the server:

- HTTP rows: ``_Conn``, a minimal HTTP/1.1 client (one keep-alive connection per concurrent
  client; the status line and Content-Length are parsed, the body is not);
- gRPC rows, ``--grpc-client raw`` (the default): ``_H2Conn``, a minimal HTTP/2 client of the
  same kind (prior-knowledge h2c; SETTINGS, PING and flow control kept; HPACK literals sent,
  the server's header blocks not decoded). A stream answer counts as OK when it is an
  ``infer_response`` without ``error_message`` (its first field), a unary call when it ended
  after an answer (a refused call is trailers only); the trailers' grpc-status is not read,
  so any other ending counts as one UNKNOWN error;
- gRPC rows, ``--grpc-client aio``: grpc.aio (one channel), as tritonclient.grpc.aio uses it:
  the OK/refused counts come from the call's status. It costs three to four times the raw
  client's CPU per message, taken from the same CPUs as the server's.

Before measuring, every server answers one request checked in full (the gRPC ones through a
grpc channel: outputs present, no error). The ``client us`` column is this process' CPU time
per answered request, so each row's client cost is printed beside its server's.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at run
# time, and the baseline's request models are local to serve_baseline.
import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import uvicorn
from baseline import HandBatcher  # beside this script: sys.path[0] when run as one

if sys.version_info >= (3, 11):
    import tomllib
else:  # the package's own dependency below 3.11
    import tomli as tomllib

import inferline
from inferline.server import serve
from inferline.server.grpc import SERVICE_NAME as GRPC_SERVICE
from inferline.server.grpc import kserve_v2_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
MODES = ("inline", "threadpool", "batched")
#: The row of ``--grpc-ceiling``: a grpc.aio server that answers without doing anything.
GRPC_ECHO = "grpc.aio-echo-stream"

# ------------------------------------------------------------------------------ servers


def _load_engine(repo: str, model: str) -> Any:
    """An engine serving the repository (``model`` among its models). The benchmark wrote the
    repository itself, so it is the operator that allows its model.py to run."""
    return inferline.Engine.from_repository(repo, allow_code=True)


def serve_inferline(repo: str, model: str, grpc: bool = False) -> None:
    """``inferline serve``; with ``grpc``, also on a gRPC port, which it prints instead."""
    say = lambda port: print(port, flush=True)  # noqa: E731
    serve(
        _load_engine(repo, model),
        "127.0.0.1",
        0,
        log_level="warning",
        on_started=None if grpc else say,
        **({"grpc_port": 0, "on_grpc_started": say} if grpc else {}),
    )


def serve_grpc_echo(answer_file: str) -> None:
    """The ceiling of any grpc.aio server: ModelStreamInfer answered at once, each message read
    with the same prebuilt answer bytes (the real server's answer to one request), no parsing
    and no model. Same process setup as inferline's gRPC server: grpc.aio on uvloop."""
    import uvloop

    answer = Path(answer_file).read_bytes()

    async def stream(requests: Any, context: Any) -> None:
        del requests  # context.read() gives the same messages, one generator step fewer
        read, write = context.read, context.write
        while (await read()) is not grpc.aio.EOF:
            await write(answer)

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    GRPC_SERVICE,
                    {"ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream)},
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    uvloop.run(main())


def serve_baseline(repo: str, model: str, mode: str) -> None:
    # FastAPI, pydantic and onnxruntime are the baseline's dependencies, not inferline's
    # (optional for the package): only the baseline server's process imports them.
    import contextlib

    import onnxruntime as ort
    from fastapi import FastAPI
    from pydantic import BaseModel

    versions = sorted(int(p.name) for p in (Path(repo) / model).iterdir() if p.name.isdigit())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(Path(repo) / model / str(versions[-1]) / "model.onnx"),
        sess_options=options,
        providers=["CPUExecutionProvider"],
    )
    in_name = session.get_inputs()[0].name
    out_name = session.get_outputs()[0].name

    class Tensor(BaseModel):
        name: str
        shape: list[int]
        datatype: str
        data: list[Any]

    class InferRequest(BaseModel):
        id: str | None = None
        inputs: list[Tensor]

    def model_fn(batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run([out_name], {in_name: batch})[0]
        return out

    # The batcher gets the model's own batch settings from its model.toml.
    config = tomllib.loads((Path(repo) / model / "model.toml").read_text()).get("batching", {})
    batcher = HandBatcher(
        model_fn, config.get("max_batch_size", 32), config.get("max_queue_delay_ms", 2.0)
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if mode == "batched":
            await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(lifespan=lifespan)

    def response(name: str, y: np.ndarray) -> dict[str, Any]:
        return {
            "model_name": name,
            "outputs": [
                {
                    "name": out_name,
                    "datatype": "FP32",
                    "shape": list(y.shape),
                    "data": y.ravel().tolist(),
                }
            ],
        }

    def run(req: InferRequest, name: str) -> dict[str, Any]:
        t = req.inputs[0]
        x = np.asarray(t.data, dtype=np.float32).reshape(t.shape)
        return response(name, model_fn(x))

    if mode == "batched":

        @app.post("/v2/models/{name}/infer")
        async def infer_batched(name: str, req: InferRequest) -> dict[str, Any]:
            t = req.inputs[0]
            x = np.asarray(t.data, dtype=np.float32).reshape(t.shape)
            rows = [batcher.infer(row) for row in x]
            return response(name, np.stack([await r for r in rows]))

    elif mode == "threadpool":

        @app.post("/v2/models/{name}/infer")
        def infer_sync(name: str, req: InferRequest) -> dict[str, Any]:
            return run(req, name)
    else:

        @app.post("/v2/models/{name}/infer")
        async def infer_inline(name: str, req: InferRequest) -> dict[str, Any]:
            return run(req, name)

    # The same uvicorn settings as inferline.server.serve uses.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)

    async def run_server() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        print(server.servers[0].sockets[0].getsockname()[1], flush=True)
        await task

    asyncio.run(run_server())


class Server:
    """A server subprocess that prints its port on its first line."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        # The inferline this process imported (a checkout's python/ or an installed package):
        # a checkout without a built module must not shadow the installed one.
        here = str(Path(inferline.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"server {args} did not start (said {line!r})")
        self.port = int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ------------------------------------------------------------------------------ load generator


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; ``request()`` sends and awaits one answer."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = -1
        self.status = 0
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            self.status = int(head[9:12])
            i = head.find(b"content-length:")
            j = head.find(b"\r\n", i)
            self.need = end + 4 + int(head[i + 15 : j if j > 0 else None])
        if len(self.buf) >= self.need:
            del self.buf[: self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def request(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) the process has used so far (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_Send = Callable[[bytes], Awaitable[int]]


async def _http_clients(port: int, concurrency: int) -> tuple[list[_Send], Callable[[], Any]]:
    """One keep-alive connection per concurrent client; each sends a request's bytes and
    gives the answer's status."""
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(_Conn, "127.0.0.1", port)
        conns.append(proto)

    def close() -> None:
        for c in conns:
            if c.transport is not None:
                c.transport.close()

    return [c.request for c in conns], close


async def _grpc_clients(port: int, concurrency: int) -> tuple[list[_Send], Callable[[], Any]]:
    """``concurrency`` concurrent streams on one HTTP/2 channel (grpc.aio, as
    tritonclient.grpc.aio uses it), each sending a serialized ModelInferRequest; status 200
    for OK, else the gRPC code's number."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    rpc = channel.unary_unary(f"/{GRPC_SERVICE}/ModelInfer")  # bytes in, bytes out

    async def send(request: bytes) -> int:
        try:
            await rpc(request)
        except grpc.aio.AioRpcError as e:
            return int(e.code().value[0])
        return 200

    return [send] * concurrency, channel.close


async def _grpc_stream_clients(
    port: int, concurrency: int
) -> tuple[list[_Send], Callable[[], Any]]:
    """``concurrency`` ModelStreamInfer streams on one HTTP/2 channel, each carrying one
    request at a time (written, then its answer read); status 200 for an answer without an
    ``error_message``, 503 for one with it, else the gRPC code's number if the stream ends."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    rpc = channel.stream_stream(f"/{GRPC_SERVICE}/ModelStreamInfer")  # bytes in, bytes out
    calls = [rpc() for _ in range(concurrency)]

    def sender(call: Any) -> _Send:
        async def send(request: bytes) -> int:
            try:
                await call.write(request)
                answer = await call.read()
            except grpc.aio.AioRpcError as e:
                return int(e.code().value[0])
            if answer is grpc.aio.EOF:
                return int(grpc.StatusCode.UNKNOWN.value[0])
            # Fields are serialised in number order: a message that starts with field 1
            # (tag 0x0a) has an error_message; an answer starts with field 2 (tag 0x12).
            return 503 if answer[:1] == b"\x0a" else 200

        return send

    async def close() -> None:
        for call in calls:
            await call.done_writing()
        for call in calls:
            await call.code()  # the stream's status, once the server has ended it
        await channel.close()

    return [sender(call) for call in calls], close


# ------------------------------------------------------------------------------ raw HTTP/2 (gRPC)

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_HEAD = struct.Struct(">IBI")  # length << 8 | type, flags, stream id: a frame's 9 bytes
_H2_DATA, _H2_HEADERS, _H2_RST, _H2_SETTINGS, _H2_PING, _H2_GOAWAY, _H2_WINDOW = (
    0,
    1,
    3,
    4,
    6,
    7,
    8,
)
_H2_END_STREAM, _H2_ACK, _H2_END_HEADERS, _H2_PADDED = 0x1, 0x1, 0x4, 0x8
_H2_MAX_WINDOW = (1 << 31) - 1
#: The status a raw-client RPC is counted under when it ends without an answer: the client
#: does not decode the trailers' grpc-status, so every such ending is one "UNKNOWN" error.
_H2_NO_ANSWER = int(grpc.StatusCode.UNKNOWN.value[0])


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _H2_HEAD.pack(len(payload) << 8 | kind, flags, stream) + payload


def _hpack(name: bytes, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing and without Huffman coding (RFC 7541
    6.2.2), so that no table is shared with the server; names and values under 127 bytes."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


class _H2Stream:
    """One gRPC call's side of the connection: its send window, the bytes of answers read so
    far, and the waiter of the request in flight."""

    __slots__ = ("answered", "buf", "ended", "waiter", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.answered = False  # an answer came since the request (unary: before the end)
        self.ended: asyncio.Future[None] | None = None


class _H2Conn(asyncio.Protocol):
    """A minimal gRPC client on one cleartext HTTP/2 connection (prior knowledge), as cheap per
    message as the HTTP/1.1 load generator's :class:`_Conn`: requests are pre-serialized
    ModelInferRequests, and an answer is read only as far as its first byte.

    It keeps to the protocol's rules that the server checks: the preface and SETTINGS (acked
    both ways), PING acks, the server's flow-control windows for what it sends (it waits for
    WINDOW_UPDATE), and its own receive windows, opened wide and topped up. Header blocks are
    sent as HPACK literals without indexing and the server's are not decoded, so no table is
    kept; an RPC that ends without an answer (trailers only, RST_STREAM) counts as
    :data:`_H2_NO_ANSWER`, as its grpc-status is in the trailers it does not decode."""

    def __init__(self, authority: bytes, path: bytes) -> None:
        self.headers = b"\x83\x86" + b"".join(  # :method POST, :scheme http (static table)
            _hpack(k, v)
            for k, v in (
                (b":path", path),
                (b":authority", authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            )
        )
        self.buf = bytearray()
        self.streams: dict[int, _H2Stream] = {}
        self.next_id = 1
        self.window = 65535  # the server's connection window for what we send
        self.initial_window = 65535  # the server's window for each new stream
        self.blocked: list[tuple[int, bytes, int]] = []  # DATA waiting for the server's windows
        self.received = 0  # bytes of DATA since our last connection WINDOW_UPDATE
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.stream_answers = False  # a ModelStreamInfer connection (answers carry an error)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = struct.pack(">HI", 0x4, _H2_MAX_WINDOW)  # INITIAL_WINDOW_SIZE: wide open
        transport.write(  # type: ignore[attr-defined]
            _H2_PREFACE
            + _h2_frame(_H2_SETTINGS, 0, 0, settings)
            + _h2_frame(_H2_WINDOW, 0, 0, struct.pack(">I", _H2_MAX_WINDOW - 65535))
        )

    def open(self) -> tuple[int, _H2Stream, bytes]:
        """A new stream and its HEADERS frame, for the caller to send before its first DATA."""
        sid = self.next_id
        self.next_id += 2
        stream = self.streams[sid] = _H2Stream(self.initial_window)
        return sid, stream, _h2_frame(_H2_HEADERS, _H2_END_HEADERS, sid, self.headers)

    def send(
        self, sid: int, stream: _H2Stream, payload: bytes, flags: int = 0, head: bytes = b""
    ) -> None:
        """A DATA frame of ``payload`` on the stream, after ``head`` (its HEADERS frame, which
        flow control does not hold); held until the server's windows have room."""
        n = len(payload)
        assert self.transport is not None
        if self.blocked or n > self.window or n > stream.window:
            if head:
                self.transport.write(head)
            self.blocked.append((sid, payload, flags))
            return
        self.window -= n
        stream.window -= n
        self.transport.write(head + _h2_frame(_H2_DATA, flags, sid, payload))

    def message(
        self, sid: int, stream: _H2Stream, message: bytes, flags: int = 0, head: bytes = b""
    ) -> None:
        """One gRPC message on the stream (its 5-byte prefix: not compressed, the length)."""
        self.send(sid, stream, b"\x00" + len(message).to_bytes(4, "big") + message, flags, head)

    def _unblock(self) -> None:
        assert self.transport is not None
        while self.blocked:
            sid, payload, flags = self.blocked[0]
            stream = self.streams.get(sid)
            n = len(payload)
            if stream is not None:
                if n > self.window or n > stream.window:
                    return
                self.window -= n
                stream.window -= n
                self.transport.write(_h2_frame(_H2_DATA, flags, sid, payload))
            del self.blocked[0]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        at = 0
        end = len(buf)
        while end - at >= 9:
            head, flags, sid = _H2_HEAD.unpack_from(buf, at)
            length = head >> 8
            if end - at < 9 + length:
                break
            kind = head & 0xFF
            start = at + 9
            at = start + length
            if kind == _H2_DATA:
                self._on_data(sid, flags, buf[start:at], length)
            elif kind == _H2_HEADERS:
                if flags & _H2_END_STREAM:
                    self._on_end(sid)
            elif kind == _H2_WINDOW:
                (increment,) = struct.unpack_from(">I", buf, start)
                increment &= _H2_MAX_WINDOW
                if sid == 0:
                    self.window += increment
                elif sid in self.streams:
                    self.streams[sid].window += increment
                if self.blocked:
                    self._unblock()
            elif kind == _H2_PING and not flags & _H2_ACK:
                self._write(_h2_frame(_H2_PING, _H2_ACK, 0, bytes(buf[start:at])))
            elif kind == _H2_SETTINGS and not flags & _H2_ACK:
                for i in range(start, at, 6):
                    key, value = struct.unpack_from(">HI", buf, i)
                    if key == 0x4:  # INITIAL_WINDOW_SIZE: every open stream's window moves
                        delta = value - self.initial_window
                        self.initial_window = value
                        for s in self.streams.values():
                            s.window += delta
                self._write(_h2_frame(_H2_SETTINGS, _H2_ACK, 0))
                if self.blocked:
                    self._unblock()
            elif kind == _H2_RST:
                self._on_end(sid)
            elif kind == _H2_GOAWAY:
                self._fail(ConnectionError("the server sent GOAWAY"))
        del buf[:at]

    def _write(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame)

    def _on_data(self, sid: int, flags: int, payload: bytearray, length: int) -> None:
        self.received += length
        if self.received >= 1 << 30:  # top the connection's window up again
            self._write(_h2_frame(_H2_WINDOW, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        stream = self.streams.get(sid)
        if stream is None:
            return
        if flags & _H2_PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        buf = stream.buf
        buf += payload
        while len(buf) >= 5:
            n = 5 + int.from_bytes(buf[1:5], "big")
            if len(buf) < n:
                break
            # ModelStreamInferResponse fields are serialised in number order: an answer with
            # an error_message starts with field 1 (tag 0x0a), an answer with field 2 (0x12).
            tag = buf[5:6]
            del buf[:n]
            stream.answered = True
            if self.stream_answers:  # a unary call's answer counts once the call ends
                waiter, stream.waiter = stream.waiter, None
                if waiter is not None and not waiter.done():
                    ok = tag == b"\x12"
                    waiter.set_result(200 if ok else 503 if tag == b"\x0a" else _H2_NO_ANSWER)
        if flags & _H2_END_STREAM:
            self._on_end(sid)

    def _on_end(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is None:
            return
        waiter, stream.waiter = stream.waiter, None
        if waiter is not None and not waiter.done():
            # A unary call that ended after its answer is OK (a refusal is trailers only); a
            # stream that ends while a request waits has left it unanswered.
            ok = stream.answered and not self.stream_answers
            waiter.set_result(200 if ok else _H2_NO_ANSWER)
        if stream.ended is not None and not stream.ended.done():
            stream.ended.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        for stream in self.streams.values():
            for fut in (stream.waiter, stream.ended):
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
        self.streams.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed"))


async def _h2_connect(port: int, method: str, stream_answers: bool) -> _H2Conn:
    loop = asyncio.get_running_loop()
    authority = f"127.0.0.1:{port}".encode()
    path = f"/{GRPC_SERVICE}/{method}".encode()
    _, conn = await loop.create_connection(lambda: _H2Conn(authority, path), "127.0.0.1", port)
    conn.stream_answers = stream_answers
    return conn


async def _raw_grpc_clients(port: int, concurrency: int) -> tuple[list[_Send], Callable[[], Any]]:
    """``concurrency`` concurrent unary ModelInfer calls on one HTTP/2 connection
    (:class:`_H2Conn`); status 200 for a call that ended after its answer."""
    conn = await _h2_connect(port, "ModelInfer", stream_answers=False)
    loop = asyncio.get_running_loop()

    def send(request: bytes) -> asyncio.Future[int]:
        if conn.lost is not None:
            raise conn.lost
        sid, stream, head = conn.open()
        waiter = stream.waiter = loop.create_future()
        conn.message(sid, stream, request, _H2_END_STREAM, head)
        return waiter

    assert conn.transport is not None
    return [send] * concurrency, conn.transport.close


async def _raw_grpc_stream_clients(
    port: int, concurrency: int
) -> tuple[list[_Send], Callable[[], Any]]:
    """``concurrency`` ModelStreamInfer streams on one HTTP/2 connection (:class:`_H2Conn`),
    each carrying one request at a time; status 200 for an answer without an
    ``error_message``, 503 for one with it."""
    conn = await _h2_connect(port, "ModelStreamInfer", stream_answers=True)
    loop = asyncio.get_running_loop()
    opened = [conn.open() for _ in range(concurrency)]
    assert conn.transport is not None
    conn.transport.write(b"".join(head for _, _, head in opened))

    def sender(sid: int, stream: _H2Stream) -> _Send:
        def send(request: bytes) -> asyncio.Future[int]:
            if conn.lost is not None:
                raise conn.lost
            waiter = stream.waiter = loop.create_future()
            if sid in conn.streams:
                conn.message(sid, stream, request)
            else:  # the server ended the stream
                waiter.set_result(_H2_NO_ANSWER)
            return waiter

        return send

    async def close() -> None:
        ends = []
        for sid, stream, _ in opened:
            if sid in conn.streams:  # half-close; the server answers what is in flight
                stream.ended = loop.create_future()
                ends.append(stream.ended)
                conn.send(sid, stream, b"", _H2_END_STREAM)
        if ends:
            await asyncio.wait_for(asyncio.gather(*ends), 30)
        assert conn.transport is not None
        conn.transport.close()

    return [sender(sid, stream) for sid, stream, _ in opened], close


async def _load_with(
    connect: Awaitable[tuple[list[_Send], Callable[[], Any]]],
    pid: int,
    requests: list[bytes],
    warmup: float,
    duration: float,
) -> dict[str, Any]:
    senders, close = await connect
    latencies: list[float] = []
    errors: dict[int, int] = {}
    start = time.perf_counter()
    t_measure = start + warmup
    t_end = t_measure + duration
    counter = [0]
    n_requests = len(requests)
    cpu = [float("nan")]
    client_cpu = [float("nan")]

    async def worker(send: _Send) -> None:
        record = latencies.append
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            i = counter[0]
            counter[0] = i + 1
            status = await send(requests[i % n_requests])
            t1 = time.perf_counter()
            if t0 >= t_measure:
                if status == 200:
                    record(t1 - t0)
                else:
                    errors[status] = errors.get(status, 0) + 1

    async def cpu_meter() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        before = _cpu_seconds(pid)
        ours = time.process_time()  # this process: the client alone, all its threads
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        cpu[0] = _cpu_seconds(pid) - before
        client_cpu[0] = time.process_time() - ours

    await asyncio.gather(cpu_meter(), *(worker(s) for s in senders))
    closed = close()
    if closed is not None:
        await closed
    lat = np.array(latencies) * 1e3
    done = len(latencies) + sum(errors.values())
    return {
        "rps": len(latencies) / duration,
        "p50": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "ok": len(latencies),
        "errors": errors,
        "cpu_us_per_request": cpu[0] / done * 1e6 if done else float("nan"),
        "client_cpu_us_per_request": client_cpu[0] / done * 1e6 if done else float("nan"),
    }


# The rows driven over gRPC, by their clients (the others are HTTP/1.1): the raw HTTP/2
# client (the default) or grpc.aio (--grpc-client aio).
_CLIENTS = {
    "raw": {"inferline-grpc": _raw_grpc_clients, "inferline-grpc-stream": _raw_grpc_stream_clients},
    "aio": {"inferline-grpc": _grpc_clients, "inferline-grpc-stream": _grpc_stream_clients},
}


def _inputs(n_features: int, count: int) -> np.ndarray:
    """``count`` distinct inputs (one item each), so no server can answer from a cache."""
    return np.random.default_rng(0).standard_normal((count, n_features)).astype(np.float32)


def _grpc_requests(model: str, n_features: int, count: int) -> list[bytes]:
    """The same inputs as serialized ModelInferRequests with raw contents (as tritonclient
    sends them)."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, n_features])
    return [
        pb.ModelInferRequest(
            model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]
        ).SerializeToString()
        for x in _inputs(n_features, count)
    ]


def _requests(model: str, n_features: int, count: int) -> list[bytes]:
    """The inputs as HTTP requests with KServe v2 JSON bodies."""
    out = []
    for x in _inputs(n_features, count):
        tensor = {
            "name": "x",
            "shape": [1, n_features],
            "datatype": "FP32",
            "data": [round(float(v), 6) for v in x],
        }
        body = json.dumps({"inputs": [tensor]}).encode()
        head = (
            f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


def _check_grpc(port: int, request: bytes) -> None:
    """One gRPC request: the server answers OK with outputs."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = channel.unary_unary(f"/{GRPC_SERVICE}/ModelInfer")(request, timeout=30)
    assert pb.ModelInferResponse.FromString(answer).raw_output_contents, answer


def _check_grpc_stream(port: int, request: bytes) -> bytes:
    """One request on a ModelStreamInfer stream: one answer, without an error, with outputs;
    returns the answer's bytes."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        rpc = channel.stream_stream(f"/{GRPC_SERVICE}/ModelStreamInfer")
        (answer,) = list(rpc(iter([request]), timeout=30))
    message = pb.ModelStreamInferResponse.FromString(answer)
    assert not message.error_message and message.infer_response.raw_output_contents, message
    answer_bytes: bytes = answer
    return answer_bytes


def _check(port: int, request: bytes) -> None:
    """One request through a plain socket: the server answers 200 with outputs."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += s.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"server answered {head[:40]!r}: {body[:300]!r}")
    assert json.loads(body)["outputs"], body


def _targets(results: dict[int, dict[str, dict[str, Any]]], levels: list[int]) -> None:
    """The project's HTTP targets, each beside the figure of this run."""
    print("\ntargets (every figure from this run):")
    lines = []
    if 64 in results:
        row = results[64]
        ours = row["inferline"]["rps"]
        for name in row:  # the gRPC rows (unary, stream; /aio: grpc.aio's client)
            if name.startswith("inferline-grpc"):
                got = row[name]["rps"] / ours
                what = f"c=64 {name} req/s vs HTTP/JSON"
                lines.append((got >= 1.5, what, f"{got:.2f}x (>= 1.5x)"))
        if GRPC_ECHO in row:  # not a target: what no grpc.aio server can exceed
            got = row[GRPC_ECHO]["rps"] / ours
            print(f"  (ceiling) c=64 {GRPC_ECHO} req/s vs HTTP/JSON: {got:.2f}x")
        for name, need in (("fastapi-batched", 2.0), ("fastapi-inline", 5.0)):
            if name in row:
                got = ours / row[name]["rps"]
                lines.append((got >= need, f"c=64 req/s vs {name}", f"{got:.2f}x (>= {need:g}x)"))
    low = min(levels)
    if "fastapi-inline" in results[low]:
        ours_p50 = results[low]["inferline"]["p50"]
        base = results[low]["fastapi-inline"]["p50"]
        lines.append(
            (
                ours_p50 <= base + 0.5,
                f"c={low} p50 <= fastapi-inline's + 0.5 ms",
                f"{ours_p50:.2f} ms vs {base:.2f} + 0.5 ms",
            )
        )
    for ok, what, got in lines:
        print(f"  {'met' if ok else 'MISSED':<7} {what:<46} {got}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repo", default=str(ROOT / "examples" / "repository"))
    ap.add_argument("--model", default="classifier")
    ap.add_argument("--features", type=int, default=16, help="input width of the model")
    ap.add_argument("--concurrency", default="1,64,256")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure every point this many times, servers interleaved; report medians",
    )
    ap.add_argument(
        "--distinct",
        type=int,
        default=50_000,
        help="distinct request bodies, cycled (more than any result cache holds)",
    )
    ap.add_argument(
        "--baselines",
        default="inline,batched",
        help="FastAPI endpoints, comma-separated: inline (async def, the model on the loop), "
        "threadpool (plain def), batched (async def awaiting baseline.HandBatcher)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 s per point, 0.3 s warm-up, 2,000 distinct bodies, one repetition",
    )
    ap.add_argument(
        "--no-grpc",
        dest="grpc",
        action="store_false",
        help="leave out the gRPC rows (inferline serve --grpc-port, the same model; a raw "
        "grpc.aio client, one channel with c concurrent unary calls, or c ModelStreamInfer "
        "streams with one request in flight each)",
    )
    ap.add_argument(
        "--grpc-client",
        default="raw",
        help="the gRPC rows' load generator: raw (a minimal HTTP/2 client on asyncio, as cheap "
        "per message as the HTTP/1.1 one) or aio (grpc.aio, as tritonclient.grpc.aio uses it); "
        "a comma-separated list adds rows for the others (e.g. inferline-grpc-stream/aio), "
        "each against its own server process, measured in the same run",
    )
    ap.add_argument(
        "--grpc-ceiling",
        action="store_true",
        help=f"add the {GRPC_ECHO} row: a grpc.aio server answering each ModelStreamInfer "
        "message at once with the real server's answer bytes (no parsing, no model), driven "
        "like the stream row: what no server on grpc.aio can exceed here",
    )
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument(
        "--serve",
        choices=["inferline", "inferline-grpc", "grpc-echo", "baseline"],
        help=argparse.SUPPRESS,
    )
    ap.add_argument("--answer-file", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-mode", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup, args.distinct, args.repeat = 1.0, 0.3, 2000, 1
    modes = [m.strip() for m in args.baselines.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--baselines takes a comma-separated list of {', '.join(MODES)}")

    if args.serve in ("inferline", "inferline-grpc"):
        serve_inferline(args.repo, args.model, grpc=args.serve == "inferline-grpc")
        return
    if args.serve == "baseline":
        serve_baseline(args.repo, args.model, args.baseline_mode)
        return
    if args.serve == "grpc-echo":
        serve_grpc_echo(args.answer_file)
        return
    if args.grpc_ceiling and not args.grpc:
        ap.error("--grpc-ceiling needs the gRPC rows (leave out --no-grpc)")

    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    levels = [int(c) for c in args.concurrency.split(",")]
    kinds = [c.strip() for c in args.grpc_client.split(",") if c.strip()]
    if not kinds or set(kinds) - set(_CLIENTS):
        ap.error(f"--grpc-client takes a comma-separated list of {', '.join(_CLIENTS)}")
    # Each gRPC row: its client; the first client's rows keep the plain names.
    grpc_clients: dict[str, Any] = {}
    if args.grpc:
        for i, client in enumerate(kinds):
            for row, connect in _CLIENTS[client].items():
                grpc_clients[row if i == 0 else f"{row}/{client}"] = connect
    requests = _requests(args.model, args.features, args.distinct)
    common = ["--repo", args.repo, "--model", args.model]
    servers = {"inferline": Server("--serve", "inferline", *common)}
    if args.grpc:
        grpc_requests = _grpc_requests(args.model, args.features, args.distinct)
        for row in grpc_clients:
            servers[row] = Server("--serve", "inferline-grpc", *common)
    for mode in modes:
        servers[f"fastapi-{mode}"] = Server("--serve", "baseline", "--baseline-mode", mode, *common)
    samples: dict[int, dict[str, list[dict[str, Any]]]] = {
        c: {name: [] for name in servers} for c in levels
    }
    answer_dir = None
    try:
        for name, s in list(servers.items()):
            if name.startswith("inferline-grpc-stream"):
                answer = _check_grpc_stream(s.port, grpc_requests[0])
                if args.grpc_ceiling and GRPC_ECHO not in servers:
                    answer_dir = tempfile.TemporaryDirectory(prefix="http_bench_")
                    answer_file = Path(answer_dir.name) / "answer.bin"
                    answer_file.write_bytes(answer)
                    servers[GRPC_ECHO] = echo = Server(
                        "--serve", "grpc-echo", "--answer-file", str(answer_file)
                    )
                    grpc_clients[GRPC_ECHO] = _CLIENTS[kinds[0]]["inferline-grpc-stream"]
                    assert _check_grpc_stream(echo.port, grpc_requests[0]) == answer
            elif name.startswith("inferline-grpc"):
                _check_grpc(s.port, grpc_requests[0])
            else:
                _check(s.port, requests[0])
        for c in levels:
            samples[c].update({name: [] for name in servers if name not in samples[c]})
        names = list(servers)
        for rep in range(args.repeat):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for c in levels:
                for name in order:  # same run, back to back, same client, rotated order
                    s = servers[name]
                    connect = grpc_clients.get(name, _http_clients)
                    clients = connect(s.port, c)
                    bodies = grpc_requests if name in grpc_clients else requests
                    samples[c][name].append(
                        run(_load_with(clients, s.proc.pid, bodies, args.warmup, args.duration))
                    )
    finally:
        for s in servers.values():
            s.stop()
        if answer_dir is not None:
            answer_dir.cleanup()

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    results = {
        c: {
            name: {
                **{
                    k: median(runs, k)
                    for k in (
                        "rps",
                        "p50",
                        "p99",
                        "cpu_us_per_request",
                        "client_cpu_us_per_request",
                    )
                },
                "errors": sum(sum(r["errors"].values()) for r in runs),
                "runs": runs,
            }
            for name, runs in row.items()
        }
        for c, row in samples.items()
    }
    print(
        f"\nmodel {args.model!r} from {args.repo}; {args.duration:g}s per point"
        + (f", median of {args.repeat} interleaved runs" if args.repeat > 1 else "")
        + f"; {os.cpu_count()} CPUs shared by the client and the servers"
        + (f"; gRPC client: {', '.join(kinds)}" if args.grpc else "")
    )
    header = (
        f"{'conc':>5} {'server':<25} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'cpu us/req':>10} {'client us':>9}   inferline vs this: req/s  p99"
    )
    print(header)
    print("-" * len(header))
    for c, row in results.items():
        ours = row["inferline"]
        for name, r in row.items():
            ratio = ""
            if name != "inferline":
                ratio = f"{ours['rps'] / r['rps']:>26.2f}x {ours['p99'] / r['p99']:>5.2f}x"
            print(
                f"{c:>5} {name:<25} {r['rps']:>8.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                f"{r['errors']:>7} {r['cpu_us_per_request']:>10.0f} "
                f"{r['client_cpu_us_per_request']:>9.0f}{ratio}"
            )
    _targets(results, levels)
    print(
        "req/s ratio > 1: inferline serves more; p99 ratio < 1: inferline's p99 is lower.\n"
        "cpu us/req: the server process' CPU time (all threads) per answered request;\n"
        "client us: the load generator's (this process, all threads) per answered request."
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({str(c): row for c, row in results.items()}, indent=2)
        )


if __name__ == "__main__":
    main()
