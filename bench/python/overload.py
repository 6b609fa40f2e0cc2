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

    python bench/python/overload.py [--minutes 10] [--connections 1500] [--queue 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from soak import _free_port, _wait_ready, sample, start_server, stop_server

FEATURES = 4

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
max_batch_size = 32
max_queue_size = {queue}

[warmup]
batch_sizes = [1]

[python]
allow_code = true
entry = "predict"
"""

_MODEL = "import time\n\n\ndef predict(x):\n    time.sleep({seconds})\n    return x + 1.0\n"


def write_repository(root: Path, queue: int, batch_ms: float) -> None:
    (root / "work" / "1").mkdir(parents=True)
    (root / "work" / "model.toml").write_text(_TOML.format(features=FEATURES, queue=queue))
    (root / "work" / "1" / "model.py").write_text(_MODEL.format(seconds=batch_ms / 1000))


class Client:
    """One keep-alive connection sending requests one after another."""

    def __init__(self, port: int, body: bytes) -> None:
        self.port = port
        self.request = (
            "POST /v2/models/work/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.retry_after = 0.0  # seconds, from the last answer's Retry-After header

    async def send(self) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = 0
        close = False
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.lower() == "content-length":
                length = int(v)
            elif k.lower() == "connection" and v.strip().lower() == "close":
                close = True
            elif k.lower() == "retry-after":
                self.retry_after = float(v)
        await self.reader.readexactly(length)
        if close:
            self.close()
        return int(lines[0].split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run(args: argparse.Namespace, port: int, pid: int) -> int:
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [1.0] * 4}]}
    ).encode()
    statuses: Counter[str] = Counter()
    ok_latencies: list[float] = []
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    stop_at = t0 + args.minutes * 60
    measure_from = t0 + args.minutes * 6  # the first 10% is warm-up for every figure

    async def client() -> None:
        c = Client(port, body)
        try:
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    status = await asyncio.wait_for(c.send(), args.client_timeout)
                except asyncio.TimeoutError:
                    statuses["client timeout"] += 1
                    c.close()
                    continue
                except (OSError, asyncio.IncompleteReadError) as e:
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

    print(
        f"overload: inferline serve (PID {pid}) on 127.0.0.1:{port}, {args.minutes:g} min, "
        f"{args.connections} connections, queue {args.queue}, a batch of <= 32 in "
        f"{args.batch_ms:g} ms; after a 503 a client waits "
        + ("50-100% of Retry-After" if args.retry_after else f"0-{args.backoff_ms:g} ms")
    )
    print(f"{'t s':>6}{'200':>10}{'503':>10}{'other':>8}{'RSS MB':>9}")
    tasks = [asyncio.ensure_future(client()) for _ in range(args.connections)]
    rss: list[tuple[float, float]] = []
    ok_at_measure = 0
    while time.monotonic() < stop_at:
        await asyncio.sleep(5)
        now = time.monotonic()
        if not ok_at_measure and now >= measure_from:
            ok_at_measure = statuses["200"]
        rss.append((now - t0, sample(pid)[0]))
        if len(rss) % 12 == 0:
            other = sum(n for k, n in statuses.items() if k not in ("200", "503"))
            print(
                f"{now - t0:>6.0f}{statuses['200']:>10}{statuses['503']:>10}{other:>8}"
                f"{rss[-1][1]:>9.1f}"
            )
    await asyncio.gather(*tasks)
    measured_s = stop_at - measure_from
    throughput = (statuses["200"] - ok_at_measure) / measured_s
    drain_s = args.queue / throughput if throughput else float("inf")
    p50 = statistics.median(ok_latencies) if ok_latencies else float("nan")
    p99 = statistics.quantiles(ok_latencies, n=100)[98] if len(ok_latencies) > 1 else p50
    after = [m for t, m in rss if t >= args.minutes * 6]
    first, last, top, low = after[0], after[-1], max(after), min(after)
    others = {k: n for k, n in statuses.items() if k not in ("200", "503")}
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(
        f"200s: {throughput:.0f}/s after the first 10%, p50 {p50 * 1e3:.0f} ms, p99 "
        f"{p99 * 1e3:.0f} ms; a full queue drains in {drain_s * 1e3:.0f} ms "
        f"(p99 / drain = {p99 / drain_s:.2f}, target <= 2)"
    )
    print(
        f"server RSS MB after the first 10%: first {first:.1f}, last {last:.1f}, min {low:.1f},"
        f" max {top:.1f} ({(top / first - 1) * 100:+.1f}% / {(low / first - 1) * 100:+.1f}%,"
        f" target within +-10%)"
    )
    checks = {
        "only 200 and 503": not others,
        "p99 <= 2x drain": p99 <= 2 * drain_s,
        "RSS within +-10%": top <= 1.1 * first and low >= 0.9 * first,
    }
    for what, ok in checks.items():
        print(f"  {'met   ' if ok else 'MISSED'} {what}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=1500)
    p.add_argument("--queue", type=int, default=1024, help="the model's max_queue_size")
    p.add_argument("--batch-ms", type=float, default=20.0, help="compute time of one batch")
    p.add_argument("--backoff-ms", type=float, default=200.0, help="most a 503'd client waits")
    p.add_argument(
        "--retry-after", action="store_true", help="a 503'd client waits what Retry-After says"
    )
    p.add_argument("--client-timeout", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    return serve_work_model(
        "overload", args.queue, args.batch_ms, lambda port, pid, tmp: run(args, port, pid)
    )


def serve_work_model(
    name: str,
    queue: int,
    batch_ms: float,
    body: Callable[[int, int, Path], Coroutine[Any, Any, int]],
) -> int:
    """Runs ``inferline serve`` on the work model (``queue``, ``batch_ms``) in a temporary
    repository, awaits ``body(port, pid, tmp)`` once it is ready and returns its exit status;
    the server is stopped by its PID whatever happens, and its exit is printed."""
    with tempfile.TemporaryDirectory(prefix=f"inferline_{name}_") as tmp:
        repo = Path(tmp) / "repo"
        write_repository(repo, queue, batch_ms)
        port = _free_port()
        proc = start_server(repo, port, Path(tmp) / "server.log", drain=10.0)
        try:
            try:
                asyncio.run(_wait_ready(port, proc, 120.0, models=("work",)))
            except RuntimeError as e:
                print(f"FAILED: {e}; log:\n{(Path(tmp) / 'server.log').read_text()[-2000:]}")
                return 1
            return asyncio.run(body(port, proc.pid, Path(tmp)))
        finally:
            code, took, in_time = stop_server(proc, 30.0)
            print(
                f"server exit code {code} {took:.1f}s after SIGTERM"
                + ("" if in_time else " (killed: it did not stop in time)")
            )


if __name__ == "__main__":
    sys.exit(main())
