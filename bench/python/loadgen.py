"""Shared by the in-process load benchmarks: BLAS thread setup and a closed-loop asyncio driver.

``limit_blas_threads(argv)`` must run before numpy is imported: OpenBLAS reads its thread count
once, and its spinning pool on a small machine starves the event loop and the workers. Every
contender in a benchmark run gets the same setting.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


def limit_blas_threads(argv: Sequence[str], default: str = "1") -> str:
    """Sets the BLAS/OpenMP thread variables from ``--blas-threads N`` (default 1)."""
    threads = argv[list(argv).index("--blas-threads") + 1] if "--blas-threads" in argv else default
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads
    return threads


BatchCounter = Callable[[], tuple[int, int]]
"""Reads a contender's (batches, items computed) so far; read before and after a point."""


async def drive(
    infer: Callable[[Any], Awaitable[Any]],
    inputs: Sequence[Any],
    concurrency: int,
    seconds: float,
    counter: BatchCounter | None = None,
    refusals: tuple[type[BaseException], ...] = (),
) -> dict[str, float]:
    """Runs ``concurrency`` closed-loop clients for ``seconds`` (each sends its next request
    when the last is answered). Returns req/s, p50 and p99 latency (ms), the count ``n``, the
    mean batch size over this point (from ``counter``; NaN without one), the loop thread's busy
    share (``time.thread_time`` of the calling thread, the loop's, over wall time), its CPU per
    request (us) and ``refused``: answers raising one of ``refusals`` (say QueueFullError),
    counted apart from the latencies (the refused client backs off 0.5 ms, as a client would,
    and tries its next request). Nothing here imports numpy: this module loads before the
    BLAS thread count is set."""
    latencies: list[float] = []
    refused = [0]
    perf = time.perf_counter
    stop_at = perf() + seconds
    n_inputs = len(inputs)

    async def client(k: int) -> None:
        i = k
        record = latencies.append
        while perf() < stop_at:
            t0 = perf()
            try:
                await infer(inputs[i % n_inputs])
            except refusals:
                refused[0] += 1
                await asyncio.sleep(0.0005)
                continue
            record(perf() - t0)
            i += 1

    b0, n0 = counter() if counter is not None else (0, 0)
    cpu0 = time.thread_time()
    t0 = perf()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    wall = perf() - t0
    cpu = time.thread_time() - cpu0
    b1, n1 = counter() if counter is not None else (0, 0)
    if len(latencies) > 1:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        p50, p99 = q[49] * 1e3, q[98] * 1e3
    else:
        p50 = p99 = latencies[0] * 1e3 if latencies else float("nan")
    return {
        "rps": len(latencies) / wall,
        "p50": p50,
        "p99": p99,
        "n": float(len(latencies)),
        "batch": (n1 - n0) / (b1 - b0) if b1 > b0 else float("nan"),
        "busy": cpu / wall,
        "cpu_us": cpu / max(1, len(latencies)) * 1e6,
        "refused": float(refused[0]),
    }
