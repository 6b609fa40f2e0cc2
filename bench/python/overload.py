"""Overload: many more connections than the model's queue holds, against ``inferline serve``.

``--connections`` closed-loop clients (default 1,500), each on its own keep-alive connection,
send to a Python model whose queue holds ``--queue`` rows (default 1,024) and which computes a
batch of up to 32 rows in ``--batch-ms`` (a sleep: the model is slower than the HTTP layer, so
the queue, not the sockets, is what fills). A client answered 503 waits a short random backoff
(at most ``--backoff-ms``) before its next request, or, with ``--retry-after``, what the
answer's Retry-After header asks (jittered to 50-100% of it), as a well-behaved client does;
every request has a ``--client-timeout`` (20 s) after which it counts as a client timeout.

Checked, as the fault-containment targets ask:

- only 200 and 503 answers, and no client timeouts;
- p99 of the 200s at most twice the time to drain a full queue (``--queue`` rows at the
  throughput measured in the same run);
- the server's RSS flat within +-10% after the first 10% of the run (sampled every 5 s).

Where the time goes, printed beside the targets (all after the first 10%):

- the CPU of the server's event-loop thread (the main thread) and of the whole server, as a
  share of one core, and the loop's CPU per answer;
- the load generator's own CPU and how late its event loop runs a 10 ms timer (p99): a
  client loop that is saturated adds its own queueing to every latency it measures;
- ``--probe N`` of the connections (default 16) are driven by a separate process with
  blocking sockets, one thread each, under the same backoff: the p99 of *its* 200s is the
  server's latency as a client that is not CPU-bound sees it.

The load generator runs on uvloop (``--client-loop asyncio`` for the standard loop, which
costs it more of the 2 vCPUs it shares with the server).

``--compare`` runs the server in several settings one after another, ``--rounds`` times (in
order, then reversed, after a short settling run that is not counted): ``before`` (the
baseline: the 503 answered by the app, ``INFERLINE_FAST_REFUSAL=0``, and Python's collector
untouched, ``INFERLINE_TUNE_GC=0``), ``protocol 503``, ``GC tuned`` and ``both``
(``--contenders`` picks), and prints each figure with its ratio against the baseline measured
in the same run. ``--baseline`` picks another baseline; ``in-flight=q+b``, ``in-flight=q``
and ``in-flight=q-b`` run the server with ``--max-in-flight`` the queue plus one batch (the
default until the queue alone met the p99 target at no cost in throughput), the queue (the
default now) and the queue less one batch. ``--refusal-cost S`` then also runs each for S
seconds against a model that takes a second per batch, with 64 more connections than the
server lets in retrying at once: nearly every answer is a 503, so the loop's CPU per answer
is the cost of one refusal.

    python bench/python/overload.py [--minutes 10] [--connections 1500] [--queue 1024]
    python bench/python/overload.py --minutes 1 --queue 150 --compare --refusal-cost 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import uvloop
from soak import _free_port, _http, _wait_ready, sample, start_server, stop_server

FEATURES = 4
BATCH = 32  # the model's max_batch_size

_TOML = """backend = "python"

[[inputs]]
name = "x"
datatype = "FP32"
shape = [{features}]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [{features}]

[batching]
max_batch_size = {batch}
max_queue_size = {queue}

[warmup]
batch_sizes = [1]

[python]
allow_code = true
entry = "predict"
"""

_MODEL = "import time\n\n\ndef predict(x):\n    time.sleep({seconds})\n    return x + 1.0\n"


# ``--server-timing``: a sitecustomize module put on the server's path. It times each 200 in
# the server (uvicorn's httptools protocol and request cycle, wrapped) from when the loop
# reads the request's first bytes to when the answer is written, split at the start of the
# request's ASGI task (where the app admits it); how late the server's loop runs a 10 ms
# timer; and the garbage collector's pauses by generation. SIGUSR1 starts the count afresh
# (the load generator sends it after the warm-up), and at exit the figures go to
# $INFERLINE_BENCH_TIMING as JSON. Fixed histograms of 0.1 ms buckets, so the server's memory
# does not grow with the run. A diagnostic: the wrapping costs the loop a few microseconds
# per request.
_TIMING_HOOK = """
import atexit, json, os, signal, time

_OUT = os.environ.get("INFERLINE_BENCH_TIMING")
_N = 50_000
_H = {k: [0] * _N for k in ("read_to_answer", "task_to_answer", "read_to_task", "loop_lag")}
_GC = {}  # generation -> [collections, seconds, longest]
_gc_started = [0.0]


def _add(name, seconds):
    _H[name][min(_N - 1, max(0, int(seconds * 1e4)))] += 1


def _pct(h, q):
    total = sum(h)
    if not total:
        return None
    seen, want = 0, q * total
    for i, n in enumerate(h):
        seen += n
        if seen >= want:
            return (i + 1) / 1e4
    return None


def _reset(*_):
    for h in _H.values():
        h[:] = [0] * _N
    _GC.clear()


def _on_gc(phase, info):
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _gc_started[0]
    g = _GC.setdefault(str(info["generation"]), [0, 0.0, 0.0])
    g[0] += 1
    g[1] += took
    g[2] = max(g[2], took)


def _dump():
    doc = {k: {"n": sum(h), **{f"p{q}": _pct(h, q / 100) for q in (50, 90, 99)}}
           for k, h in _H.items()}
    doc["gc"] = _GC
    with open(_OUT, "w") as f:
        json.dump(doc, f)


def _install():
    import asyncio
    from uvicorn.protocols.http import httptools_impl as h
    from inferline.server import fast_refusal as fr

    cycle, proto = h.RequestResponseCycle, fr.RefusingHttpToolsProtocol
    run_asgi, send = cycle.run_asgi, cycle.send
    begin, complete = proto.on_message_begin, proto.on_response_complete
    lag = []

    async def timed_run_asgi(self, app):
        self._t_task = time.monotonic()
        await run_asgi(self, app)

    async def timed_send(self, message):
        if message["type"] == "http.response.start":
            self._status = message["status"]
        await send(self, message)

    def tick(loop, due):
        now = time.monotonic()
        _add("loop_lag", now - due)
        loop.call_at(now + 0.01, tick, loop, now + 0.01)

    def timed_begin(self):
        self._t_read = time.monotonic()
        if not lag:
            loop = asyncio.get_running_loop()
            lag.append(loop.call_soon(tick, loop, time.monotonic()))
        begin(self)

    def timed_complete(self):
        c = self.cycle
        if c is not None and getattr(c, "_status", 0) == 200 and c.response_complete:
            c._status = 0
            now = time.monotonic()
            _add("read_to_answer", now - self._t_read)
            _add("task_to_answer", now - c._t_task)
            _add("read_to_task", c._t_task - self._t_read)
        complete(self)

    cycle.run_asgi, cycle.send = timed_run_asgi, timed_send
    proto.on_message_begin, proto.on_response_complete = timed_begin, timed_complete


if _OUT:
    _install()
    signal.signal(signal.SIGUSR1, _reset)
    import gc
    gc.callbacks.append(_on_gc)
    atexit.register(_dump)
"""


def write_repository(root: Path, queue: int, batch_ms: float) -> None:
    (root / "work" / "1").mkdir(parents=True)
    (root / "work" / "model.toml").write_text(
        _TOML.format(features=FEATURES, batch=BATCH, queue=queue)
    )
    (root / "work" / "1" / "model.py").write_text(_MODEL.format(seconds=batch_ms / 1000))


def parse_head(head: bytes) -> tuple[int, int, bool, float | None]:
    """An answer's status line and headers: (status, Content-Length, whether the server
    closes the connection, Retry-After in seconds or None)."""
    lines = head.decode("latin-1").split("\r\n")
    length, close, retry_after = 0, False, None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.lower()
        if k == "content-length":
            length = int(v)
        elif k == "connection" and v.strip().lower() == "close":
            close = True
        elif k == "retry-after":
            retry_after = float(v)
    return int(lines[0].split()[1]), length, close, retry_after


class _Answers(asyncio.Protocol):
    """The answers read off one connection, handed to the request waiting for each."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool, float | None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        status, length, close, retry_after = parse_head(bytes(self.buf[:end]))
        if len(self.buf) < end + 4 + length:
            return
        del self.buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, close, retry_after))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("the server closed the connection"))


class Client:
    """One keep-alive connection sending requests one after another (an asyncio protocol,
    not streams: the load generator shares the 2 vCPUs with the server it measures)."""

    def __init__(self, port: int, body: bytes) -> None:
        self.port = port
        self.request = (
            "POST /v2/models/work/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.answers: _Answers | None = None
        self.retry_after = 0.0  # seconds, from the last answer's Retry-After header

    async def send(self) -> int:
        loop = asyncio.get_running_loop()
        if self.answers is None:
            _, self.answers = await loop.create_connection(_Answers, "127.0.0.1", self.port)
        answers = self.answers
        assert answers.transport is not None
        answers.waiter = loop.create_future()
        answers.transport.write(self.request)
        status, close, retry_after = await answers.waiter
        if retry_after is not None:
            self.retry_after = retry_after
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.answers is not None and self.answers.transport is not None:
            self.answers.transport.close()
        self.answers = None


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds of a process (or of one of its threads), from /proc."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy (not idle or waiting), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[q - 1]


@dataclass
class Figures:
    """One run's figures, all after the first 10% unless said."""

    statuses: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    ok_per_s: float = 0.0
    refused_per_s: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    drain_s: float = float("inf")
    probe_p99: float = float("nan")
    probe_n: int = 0
    loop_cpu: float = float("nan")  # share of one core: the server's main (event-loop) thread
    server_cpu: float = float("nan")  # share of one core: the whole server
    loop_us_per_answer: float = float("nan")
    client_cpu: float = float("nan")
    # Cores busy with anything but the server, the load generator and the probe: another
    # process on the machine that competes for its cores makes the run's figures its own.
    other_cpu: float = float("nan")
    client_lag_p99: float = float("nan")
    engine_p99: float = float("nan")  # enqueue to answered, over the whole run
    queue_wait_p99: float = float("nan")  # enqueue to its batch formed, over the whole run
    compute_p99: float = float("nan")  # one batch's model call, over the whole run
    mean_batch: float = float("nan")
    rss: list[tuple[float, float]] = field(default_factory=list)
    # --server-timing: percentiles (s) of the server's own times of the 200s, after the warm-up
    server: dict[str, dict[str, Any]] = field(default_factory=dict)

    def server_p(self, which: str, q: str = "p99") -> float:
        v = self.server.get(which, {}).get(q)
        return float("nan") if v is None else v

    @property
    def ratio(self) -> float:
        return self.p99 / self.drain_s


def probe_child(argv: list[str]) -> int:
    """``--probe-child PORT CONNECTIONS SECONDS WARMUP BACKOFF_MS SEED``: closed-loop clients
    on blocking sockets, one thread each; prints the latencies (s) of the 200s of requests
    sent after WARMUP seconds, the count of each status after WARMUP, and errors, as JSON."""
    port, n, seconds, warmup, backoff_ms, seed = argv
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [1.0] * 4}]}
    ).encode()
    request = Client(int(port), body).request
    t0 = time.monotonic()
    stop_at, measure_from = t0 + float(seconds), t0 + float(warmup)
    latencies: list[float] = []
    counts: Counter[int] = Counter()  # statuses of requests sent after WARMUP
    errors: list[str] = []

    def one(i: int) -> None:
        rng = random.Random(int(seed) * 1000 + i)
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as s:
                buf = b""
                while time.monotonic() < stop_at:
                    start = time.monotonic()
                    s.sendall(request)
                    while b"\r\n\r\n" not in buf:
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed by the server")
                        buf += chunk
                    top, buf = buf.split(b"\r\n\r\n", 1)
                    status, length, _, _ = parse_head(top)
                    while len(buf) < length:
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError("closed inside an answer")
                        buf += chunk
                    buf = buf[length:]
                    if start >= measure_from:
                        counts[status] += 1
                        if status == 200:
                            latencies.append(time.monotonic() - start)
                    if status != 200:
                        time.sleep(rng.uniform(0, float(backoff_ms) / 1000))
        except OSError as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(int(n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"latencies": latencies, "counts": counts, "errors": errors}))
    return 0


async def drive(args: argparse.Namespace, port: int, pid: int, label: str) -> Figures:
    """Runs the clients for ``args.minutes`` against the server and returns the figures."""
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [1.0] * 4}]}
    ).encode()
    f = Figures()
    statuses = f.statuses
    ok_latencies: list[float] = []
    lags: list[float] = []
    rng = random.Random(args.seed)
    seconds = args.minutes * 60
    t0 = time.monotonic()
    stop_at = t0 + seconds
    measure_from = t0 + seconds / 10  # the first 10% is warm-up for every figure
    probe = None
    if args.probe:
        probe = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--probe-child",
            str(port),
            str(args.probe),
            str(seconds),
            str(seconds / 10),
            str(args.backoff_ms),
            str(args.seed),
            stdout=subprocess.PIPE,
        )

    async def client() -> None:
        c = Client(port, body)
        try:
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    async with asyncio.timeout(args.client_timeout):  # no task, unlike wait_for
                        status = await c.send()
                except TimeoutError:
                    statuses["client timeout"] += 1
                    c.close()
                    continue
                except OSError as e:
                    statuses[f"connection error ({type(e).__name__})"] += 1
                    c.close()
                    await asyncio.sleep(rng.uniform(0, args.backoff_ms / 1000))
                    continue
                statuses[str(status)] += 1
                if status == 200 and start >= measure_from:
                    ok_latencies.append(time.monotonic() - start)
                elif status == 503:
                    if args.retry_after:
                        await asyncio.sleep(c.retry_after * rng.uniform(0.5, 1.0))
                    else:
                        await asyncio.sleep(rng.uniform(0, args.backoff_ms / 1000))
        finally:
            c.close()

    async def lag() -> None:
        while time.monotonic() < stop_at:
            t = time.monotonic()
            await asyncio.sleep(0.01)
            if t >= measure_from:
                lags.append(time.monotonic() - t - 0.01)

    print(
        f"{label}: inferline serve (PID {pid}) on 127.0.0.1:{port}, {args.minutes:g} min, "
        f"{args.connections} connections ({args.probe} of them in the probe process), "
        f"queue {args.queue}, a batch of <= 32 in {args.batch_ms:g} ms; after a 503 a client "
        "waits " + ("50-100% of Retry-After" if args.retry_after else f"0-{args.backoff_ms:g} ms"),
        flush=True,
    )
    print(f"{'t s':>6}{'200':>10}{'503':>10}{'other':>8}{'RSS MB':>9}", flush=True)
    tasks = [asyncio.ensure_future(client()) for _ in range(args.connections - args.probe)]
    tasks.append(asyncio.ensure_future(lag()))
    counted_at_measure: Counter[str] | None = None
    cpu0 = (0.0, 0.0, 0.0, 0.0, 0.0)
    probe_cpu = (lambda: cpu_seconds(probe.pid)) if probe is not None else (lambda: 0.0)
    tick = min(5.0, seconds / 10)
    while time.monotonic() < stop_at:
        await asyncio.sleep(min(tick, max(0.0, stop_at - time.monotonic())))
        now = time.monotonic()
        if counted_at_measure is None and now >= measure_from:
            counted_at_measure = Counter(statuses)
            if args.server_timing:
                os.kill(pid, signal.SIGUSR1)  # the server's timing hook starts afresh
            cpu0 = (
                cpu_seconds(pid),
                cpu_seconds(pid, pid),
                time.process_time(),
                probe_cpu(),
                machine_busy_seconds(),
            )
            measured_from = now
        f.rss.append((now - t0, sample(pid)[0]))
        if len(f.rss) % 12 == 0:
            other = sum(n for k, n in statuses.items() if k not in ("200", "503"))
            print(
                f"{now - t0:>6.0f}{statuses['200']:>10}{statuses['503']:>10}{other:>8}"
                f"{f.rss[-1][1]:>9.1f}",
                flush=True,
            )
    measured = time.monotonic() - measured_from
    server_cpu, loop_cpu = cpu_seconds(pid) - cpu0[0], cpu_seconds(pid, pid) - cpu0[1]
    f.client_cpu = (time.process_time() - cpu0[2]) / measured
    busy = machine_busy_seconds() - cpu0[4]
    f.other_cpu = (busy - server_cpu - (probe_cpu() - cpu0[3])) / measured - f.client_cpu
    await asyncio.gather(*tasks)
    assert counted_at_measure is not None
    ok = statuses["200"] - counted_at_measure["200"]
    refused = statuses["503"] - counted_at_measure["503"]
    if probe is not None:
        out, _ = await probe.communicate()
        doc = json.loads(out)
        for e in doc["errors"]:
            statuses[f"probe: {e}"] += 1
        f.probe_n = len(doc["latencies"])
        f.probe_p99 = percentile(doc["latencies"], 99)
        ok += doc["counts"].get("200", 0)
        refused += doc["counts"].get("503", 0)
    f.seconds = measured
    f.ok_per_s = ok / measured
    f.refused_per_s = refused / measured
    f.drain_s = args.queue / f.ok_per_s if ok else float("inf")
    f.p50 = statistics.median(ok_latencies) if ok_latencies else float("nan")
    f.p99 = percentile(ok_latencies, 99)
    f.loop_cpu, f.server_cpu = loop_cpu / measured, server_cpu / measured
    f.loop_us_per_answer = loop_cpu / max(1, ok + refused) * 1e6
    f.client_lag_p99 = percentile(lags, 99)
    stats = json.loads((await _http(port, "GET", "/v2/models/work/stats"))[1])
    engine = stats["model_stats"][0]["inferline"]
    f.engine_p99, f.mean_batch = engine["request"]["p99"], engine["batch_size"]["mean"]
    f.queue_wait_p99, f.compute_p99 = engine["queue_wait"]["p99"], engine["compute"]["p99"]
    return f


def report(args: argparse.Namespace, f: Figures) -> bool:
    """Prints the figures against the targets; True when all are met."""
    after = [m for t, m in f.rss if t >= args.minutes * 6]
    first, last, top, low = after[0], after[-1], max(after), min(after)
    others = {k: n for k, n in f.statuses.items() if k not in ("200", "503")}
    print(f"answers: {dict(sorted(f.statuses.items()))}")
    print(
        f"200s: {f.ok_per_s:.0f}/s after the first 10%, p50 {f.p50 * 1e3:.0f} ms, p99 "
        f"{f.p99 * 1e3:.0f} ms; a full queue drains in {f.drain_s * 1e3:.0f} ms "
        f"(p99 / drain = {f.ratio:.2f}, target <= 2); 503s: {f.refused_per_s:.0f}/s"
    )
    if f.probe_n:
        print(
            f"probe process (blocking sockets): {f.probe_n} 200s, p99 "
            f"{f.probe_p99 * 1e3:.0f} ms (p99 / drain = {f.probe_p99 / f.drain_s:.2f})"
        )
    print(
        f"in the engine (enqueue to answered, whole run): p99 {f.engine_p99 * 1e3:.0f} ms "
        f"(p99 / drain = {f.engine_p99 / f.drain_s:.2f}), of which queue wait p99 "
        f"{f.queue_wait_p99 * 1e3:.0f} ms, a batch's compute p99 {f.compute_p99 * 1e3:.0f} ms; "
        f"mean batch {f.mean_batch:.1f} rows"
    )
    print(
        f"CPU, share of one core: server loop thread {f.loop_cpu:.2f} "
        f"({f.loop_us_per_answer:.0f} us per answer), whole server {f.server_cpu:.2f}, "
        f"load generator {f.client_cpu:.2f} (its loop's timer lateness p99 "
        f"{f.client_lag_p99 * 1e3:.0f} ms), other processes {f.other_cpu:.2f}"
    )
    print(
        f"server RSS MB after the first 10%: first {first:.1f}, last {last:.1f}, min {low:.1f},"
        f" max {top:.1f} ({(top / first - 1) * 100:+.1f}% / {(low / first - 1) * 100:+.1f}%,"
        f" target within +-10%)"
    )
    checks = {
        "only 200 and 503": not others,
        "p99 <= 2x drain": f.p99 <= 2 * f.drain_s,
        "RSS within +-10%": top <= 1.1 * first and low >= 0.9 * first,
    }
    for what, met in checks.items():
        print(f"  {'met   ' if met else 'MISSED'} {what}")
    return all(checks.values())


# The server's settings compared: the first is the baseline (the app's 503, the collector
# untouched, as before the protocol's 503 and the GC tuning existed).
# Each is the server's environment and what it adds to ``inferline serve``'s command ("{queue}"
# and "{batch}" stand for ``--queue`` and the model's batch size).
CONTENDERS: dict[str, tuple[dict[str, str], list[str]]] = {
    "before": ({"INFERLINE_FAST_REFUSAL": "0", "INFERLINE_TUNE_GC": "0"}, []),
    "protocol 503": ({"INFERLINE_TUNE_GC": "0"}, []),
    "GC tuned": ({"INFERLINE_FAST_REFUSAL": "0"}, []),
    "both": ({}, []),
    # The in-flight bound: the queue plus one batch (the default before it became the queue
    # alone, :func:`inferline.server.admission.version_in_flight`) against other sizes.
    "in-flight=q+b": ({}, ["--max-in-flight", "{queue_batch}"]),
    "in-flight=q": ({}, ["--max-in-flight", "{queue}"]),
    "in-flight=q-b": ({}, ["--max-in-flight", "{queue_less_batch}"]),
}


def one_run(
    args: argparse.Namespace, label: str, env: dict[str, str], serve_args: list[str] | None = None
) -> tuple[int, Figures]:
    """One run of the server with ``env`` and ``serve_args`` (a contender's: "{queue}" and the
    like are filled in from ``args``)."""
    result: list[Figures] = []

    async def body(port: int, pid: int, tmp: Path) -> int:
        result.append(await drive(args, port, pid, label))
        return 0 if report(args, result[-1]) else 1

    extra = ["--max-in-flight", str(args.max_in_flight)] if args.max_in_flight else []
    sizes = {
        "queue": args.queue,
        "queue_batch": args.queue + BATCH,
        "queue_less_batch": max(1, args.queue - BATCH),
    }
    extra += [a.format(**sizes) for a in serve_args or []]
    with tempfile.TemporaryDirectory(prefix="inferline_overload_timing_") as hook:
        env = dict(env)
        timing = Path(hook) / "timing.json"
        if args.server_timing:
            (Path(hook) / "sitecustomize.py").write_text(_TIMING_HOOK)
            python = str(Path(__file__).resolve().parents[2] / "python")
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (hook, python, os.environ.get("PYTHONPATH", "")) if p
            )
            env["INFERLINE_BENCH_TIMING"] = str(timing)
        code = serve_work_model(
            "overload",
            args.queue,
            args.batch_ms,
            body,
            env_extra=env,
            loop=args.client_loop,
            serve_args=extra,
        )
        if result and timing.exists():
            f = result[0]
            f.server = json.loads(timing.read_text())

            def ms(which: str, q: str = "p99") -> str:
                return f"{f.server_p(which, q) * 1e3:.1f}"

            print(
                f"in the server, the 200s after the first 10% ({f.server['read_to_answer']['n']}):"
                f" request read to answer written p50 {ms('read_to_answer', 'p50')} ms, p99 "
                f"{ms('read_to_answer')} ms (p99 / drain = "
                f"{f.server_p('read_to_answer') / f.drain_s:.2f}); read to its ASGI task "
                f"p99 {ms('read_to_task')} ms; task (admission) to answer p99 "
                f"{ms('task_to_answer')} ms; the loop runs a 10 ms timer late by p50 "
                f"{ms('loop_lag', 'p50')} ms, p99 {ms('loop_lag')} ms; the collector: "
                + (
                    ", ".join(
                        f"generation {g}: {n} collections, {total * 1e3:.0f} ms in all, the "
                        f"longest {top * 1e3:.1f} ms"
                        for g, (n, total, top) in sorted(f.server.get("gc", {}).items())
                    )
                    or "no collections"
                ),
                flush=True,
            )
    return code, result[0] if result else Figures()


def compare(args: argparse.Namespace) -> int:
    """Rounds of the contenders, in order then reversed (ABBA for two); a table of each run's
    figures and the ratio of the medians to the baseline's."""
    base_name = args.baseline
    names = [base_name, *(c for c in args.contenders.split(",") if c != base_name)]
    for c in names:
        if c not in CONTENDERS:
            raise SystemExit(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS)}")
    runs: dict[str, list[Figures]] = {c: [] for c in names}
    if args.rounds:
        # The first run on a machine just handed over from other work came out slower in
        # every series tried (p99 / drain 3.5-4.0 against about 2), which ABBA cannot undo
        # as it always falls to the baseline: a short run first, not counted.
        settle = argparse.Namespace(**vars(args))
        settle.minutes = min(args.minutes, 0.25)
        one_run(settle, f"{base_name}, settling run (not counted)", *CONTENDERS[base_name])
    for r in range(args.rounds):
        for label in names if r % 2 == 0 else names[::-1]:
            runs[label].append(one_run(args, label, *CONTENDERS[label])[1])
    cost: dict[str, float] = {}
    if args.refusal_cost:
        sub = argparse.Namespace(**vars(args))
        sub.minutes, sub.batch_ms, sub.backoff_ms = args.refusal_cost / 60, 1000.0, 0.0
        # 64 connections beyond what the server lets in (the queue and one batch).
        sub.connections, sub.probe = args.queue + 32 + 64, 0
        for label in names:
            f = one_run(sub, f"{label}, refusal cost", *CONTENDERS[label])[1]
            cost[label] = f.loop_us_per_answer
    rows: list[tuple[str, Callable[[Figures], float], str]] = [
        ("p99 / drain", lambda f: f.ratio, "{:.2f}"),
        ("p99 of the 200s (ms)", lambda f: f.p99 * 1e3, "{:.0f}"),
        ("probe's p99 (ms)", lambda f: f.probe_p99 * 1e3, "{:.0f}"),
        ("engine's p99 (ms)", lambda f: f.engine_p99 * 1e3, "{:.0f}"),
        ("mean batch (rows)", lambda f: f.mean_batch, "{:.1f}"),
        ("p50 of the 200s (ms)", lambda f: f.p50 * 1e3, "{:.0f}"),
        ("200s per s", lambda f: f.ok_per_s, "{:.0f}"),
        ("503s per s", lambda f: f.refused_per_s, "{:.0f}"),
        (
            "503 share of answers",
            lambda f: f.refused_per_s / (f.refused_per_s + f.ok_per_s),
            "{:.2f}",
        ),
        ("server loop CPU (cores)", lambda f: f.loop_cpu, "{:.2f}"),
        ("loop us per answer", lambda f: f.loop_us_per_answer, "{:.1f}"),
        ("load generator CPU (cores)", lambda f: f.client_cpu, "{:.2f}"),
        ("client timer lateness p99 (ms)", lambda f: f.client_lag_p99 * 1e3, "{:.0f}"),
        ("other processes' CPU (cores)", lambda f: f.other_cpu, "{:.2f}"),
        ("server: read to answer p99 (ms)", lambda f: f.server_p("read_to_answer") * 1e3, "{:.0f}"),
        ("server: admitted to answer p99", lambda f: f.server_p("task_to_answer") * 1e3, "{:.0f}"),
        ("server: loop timer lateness p99", lambda f: f.server_p("loop_lag") * 1e3, "{:.1f}"),
    ]
    print(
        f"\n{args.rounds} round(s), in order then reversed; each run's value, and for each "
        f"contender the ratio of its median to the baseline's ({base_name})"
    )
    width = max(16, 2 + max(len(c) for c in names), 6 * args.rounds)
    print(f"{'':<31}" + "".join(f"{c:>{width}}{'x':>6}" for c in names))
    for name, get, fmt in rows if args.rounds else []:
        base = statistics.median([get(f) for f in runs[base_name]])
        line = f"{name:<31}"
        for c in names:
            values = [get(f) for f in runs[c]]
            ratio = statistics.median(values) / base if base else float("nan")
            line += f"{'/'.join(fmt.format(v) for v in values):>{width}}{ratio:>6.2f}"
        print(line)
    if cost:
        line = f"{'loop us per 503 (refusal cost)':<31}"
        for c in names:
            line += f"{cost[c]:>{width}.1f}{cost[c] / cost[base_name]:>6.2f}"
        print(line)
    return 0 if all(f.ratio <= 2 for f in runs[names[-1]]) else 1


def main() -> int:
    if sys.argv[1:2] == ["--probe-child"]:
        return probe_child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=1500)
    p.add_argument("--probe", type=int, default=16, help="connections in the probe process")
    p.add_argument("--queue", type=int, default=1024, help="the model's max_queue_size")
    p.add_argument("--batch-ms", type=float, default=20.0, help="compute time of one batch")
    p.add_argument("--backoff-ms", type=float, default=200.0, help="most a 503'd client waits")
    p.add_argument(
        "--retry-after", action="store_true", help="a 503'd client waits what Retry-After says"
    )
    p.add_argument("--client-timeout", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--client-loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=0,
        help="the server's --max-in-flight (default: derived, the queue)",
    )
    p.add_argument(
        "--server-timing",
        action="store_true",
        help="time the 200s inside the server too (a diagnostic hook; needs the protocol's 503)",
    )
    p.add_argument("--compare", action="store_true", help="the server's settings compared")
    p.add_argument(
        "--contenders",
        default="protocol 503,GC tuned,both",
        help=f"--compare: beside the baseline, comma-separated from {', '.join(CONTENDERS)}",
    )
    p.add_argument(
        "--baseline", default="before", help="--compare: the contender the others are set against"
    )
    p.add_argument("--rounds", type=int, default=2, help="--compare: pairs of runs")
    p.add_argument(
        "--refusal-cost", type=float, default=0.0, help="--compare: seconds of the cost runs"
    )
    args = p.parse_args()
    if not 0 <= args.probe < args.connections:
        p.error("--probe must be at least 0 and less than --connections")
    if args.compare:
        return compare(args)
    return one_run(args, "overload", {})[0]


def serve_work_model(
    name: str,
    queue: int,
    batch_ms: float,
    body: Callable[[int, int, Path], Coroutine[Any, Any, int]],
    env_extra: dict[str, str] | None = None,
    loop: str = "asyncio",
    serve_args: list[str] | None = None,
) -> int:
    """Runs ``inferline serve`` on the work model (``queue``, ``batch_ms``) in a temporary
    repository (``env_extra`` added to its environment, ``serve_args`` to its command),
    awaits ``body(port, pid, tmp)`` once it is ready, on ``loop`` ("asyncio" or "uvloop"),
    and returns its exit status; the server is stopped by its PID whatever happens, and its
    exit is printed."""
    with tempfile.TemporaryDirectory(prefix=f"inferline_{name}_") as tmp:
        repo = Path(tmp) / "repo"
        write_repository(repo, queue, batch_ms)
        port = _free_port()
        proc = start_server(repo, port, Path(tmp) / "server.log", 10.0, env_extra, serve_args)
        try:
            try:
                asyncio.run(_wait_ready(port, proc, 120.0, models=("work",)))
            except RuntimeError as e:
                print(f"FAILED: {e}; log:\n{(Path(tmp) / 'server.log').read_text()[-2000:]}")
                return 1
            run = uvloop.run if loop == "uvloop" else asyncio.run
            return run(body(port, proc.pid, Path(tmp)))
        finally:
            code, took, in_time = stop_server(proc, 30.0)
            print(
                f"server exit code {code} {took:.1f}s after SIGTERM"
                + ("" if in_time else " (killed: it did not stop in time)")
            )


if __name__ == "__main__":
    sys.exit(main())
