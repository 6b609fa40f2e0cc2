"""One huge request among ordinary ones: do the other clients notice?

``inferline serve`` runs a small Python model (``overload.py``'s, 4 features, a batch of up to 32
in ``--batch-ms``). ``--clients`` closed-loop clients send one-row JSON requests the whole run.
The run alternates windows of ``--window-s`` seconds: in a *quiet* window nothing else happens;
in a *big* window a binary request of ``--rows`` rows (500,000 x 4 float32 = 8 MB of tensor
data by default, over ``max_rows_per_request``) is sent every ``--big-every-s`` seconds, each by
curl in a process of its own, the whole body written as a real client would. Windows
alternate, so drift on a shared machine hits both kinds alike.

Printed: the ordinary clients' p50 and p99 in quiet and in big windows and their ratio, how long
each huge request took to be answered (and with which status), and the server's RSS before and
after. The fault-containment targets: the huge request refused in under 50 ms, RSS growth under
20 MB, and the other clients' p99 unchanged within noise.

    python bench/python/big_request.py [--rounds 10] [--window-s 2] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from overload import FEATURES, Client, serve_work_model
from soak import sample


def big_body(rows: int) -> tuple[bytes, int]:
    """A binary-data request of ``rows`` rows: the JSON header, then the tensor bytes."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [rows, FEATURES],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows * FEATURES * 4},
                }
            ]
        }
    ).encode()
    return header + bytes(rows * FEATURES * 4), len(header)


async def send_big(port: int, body_file: Path, header_len: int) -> tuple[int, float]:
    """Sends one huge request with curl, a process of its own (so writing the body costs the
    ordinary clients' event loop nothing); its status and the seconds until the answer's first
    byte (curl's time_starttransfer: the body may still be on its way)."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_starttransfer}",
        "-H", "Content-Type: application/octet-stream",
        "-H", f"Inference-Header-Content-Length: {header_len}",
        "-H", "Expect:",  # send the body at once, as most clients do
        "--data-binary", f"@{body_file}",
        f"http://127.0.0.1:{port}/v2/models/work/infer",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    status, took = out.decode().split()
    return int(status), float(took)


async def run(args: argparse.Namespace, port: int, pid: int, tmp: Path) -> int:
    small = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [1.0] * 4}]}
    ).encode()
    body, header_len = big_body(args.rows)
    body_file = tmp / "huge.bin"
    body_file.write_bytes(body)
    latencies: dict[str, list[float]] = {"quiet": [], "big": []}
    per_window: list[tuple[str, list[float]]] = []  # each window's own latencies
    big_answers: list[tuple[int, float]] = []
    errors: list[str] = []
    window = "warm-up"
    stop = False

    async def client() -> None:
        c = Client(port, small)
        try:
            while not stop:
                kind, start = window, time.monotonic()
                try:
                    status = await asyncio.wait_for(c.send(), 20.0)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                    errors.append(type(e).__name__)
                    c.close()
                    continue
                if status != 200:
                    errors.append(f"status {status}")
                elif kind == window and kind in latencies:  # wholly inside one window
                    latencies[kind].append(time.monotonic() - start)
                    per_window[-1][1].append(time.monotonic() - start)
        finally:
            c.close()

    async def big_sender() -> None:
        while not stop:
            if window != "big":
                await asyncio.sleep(0.01)
                continue
            next_at = time.monotonic() + args.big_every_s
            try:
                big_answers.append(await send_big(port, body_file, header_len))
            except (OSError, ValueError) as e:
                errors.append(f"huge request: {type(e).__name__}")
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    print(
        f"big_request: inferline serve (PID {pid}) on 127.0.0.1:{port}; {args.clients} clients "
        f"of one row; a huge request of {args.rows:,} rows ({len(body) / 1e6:.1f} MB) every "
        f"{args.big_every_s:g} s in every other {args.window_s:g} s window, {args.rounds} rounds"
    )
    tasks = [asyncio.ensure_future(client()) for _ in range(args.clients)]
    tasks.append(asyncio.ensure_future(big_sender()))
    await asyncio.sleep(args.window_s)  # warm-up
    rss_before = sample(pid)[0]
    for _ in range(args.rounds):
        for kind in ("quiet", "big"):
            per_window.append((kind, []))
            window = kind
            await asyncio.sleep(args.window_s)
    window = "done"
    stop = True
    await asyncio.gather(*tasks)
    rss_after = sample(pid)[0]

    def p(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")

    print(f"{'window':>8}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for kind, values in latencies.items():
        print(f"{kind:>8}{len(values):>10}{p(values, 50) * 1e3:>9.2f}{p(values, 99) * 1e3:>9.2f}")
    ratio = p(latencies["big"], 99) / p(latencies["quiet"], 99)
    window_p99s: dict[str, list[float]] = {"quiet": [], "big": []}
    for kind, values in per_window:
        if len(values) > 1:
            window_p99s[kind].append(p(values, 99))
    statuses = sorted({s for s, _ in big_answers})
    takes = sorted(t for _, t in big_answers)
    worst = takes[-1] if takes else float("nan")
    median = statistics.median(takes) if takes else float("nan")
    print(
        f"huge requests: {len(big_answers)} answered, statuses {statuses}, answered in "
        f"median {median * 1e3:.1f} ms, max {worst * 1e3:.1f} ms"
    )
    print(f"server RSS: {rss_before:.1f} -> {rss_after:.1f} MB ({rss_after - rss_before:+.1f})")
    # No pass/fail for this one: whether a ratio is "within noise" is read against the spread
    # of quiet windows, printed beside it.
    print(f"others' p99, big windows / quiet windows: {ratio:.2f}; each window's own p99:")
    for kind, p99s in window_p99s.items():
        if p99s:
            print(
                f"  {kind:>5}: median {statistics.median(p99s) * 1e3:.2f} ms, range "
                f"{min(p99s) * 1e3:.2f}-{max(p99s) * 1e3:.2f} ms over {len(p99s)} windows"
            )
    if errors:
        print(f"errors: {len(errors)}, e.g. {errors[:3]}")
    checks = {
        f"huge request refused (413) in < 50 ms (max {worst * 1e3:.1f} ms)": (
            bool(big_answers) and statuses == [413] and worst < 0.05
        ),
        f"RSS growth < 20 MB ({rss_after - rss_before:+.1f})": rss_after - rss_before < 20,
        "no errors for the ordinary clients": not errors,
    }
    for what, ok in checks.items():
        print(f"  {'met   ' if ok else 'MISSED'} {what}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=10, help="quiet + big window pairs")
    p.add_argument("--window-s", type=float, default=2.0)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--batch-ms", type=float, default=1.0, help="compute time of one batch")
    p.add_argument("--big-every-s", type=float, default=0.25, help="huge-request spacing")
    args = p.parse_args()
    return serve_work_model(
        "big_request", 1024, args.batch_ms, lambda port, pid, tmp: run(args, port, pid, tmp)
    )


if __name__ == "__main__":
    sys.exit(main())
