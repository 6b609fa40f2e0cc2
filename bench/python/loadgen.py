"""Shared by the Python load benchmarks: BLAS thread setup and a closed-loop asyncio driver.

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


async def drive(
    infer: Callable[[Any], Awaitable[Any]],
    inputs: Sequence[Any],
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    """Runs ``concurrency`` closed-loop clients for ``seconds`` (each sends its next request
    when the last is answered); returns requests/s, p50 and p99 latency in ms, and the count."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await infer(inputs[i % len(inputs)])
            latencies.append(time.perf_counter() - t0)
            i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    q = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else latencies * 99
    )
    return {
        "rps": len(latencies) / elapsed,
        "p50": q[49] * 1e3,
        "p99": q[98] * 1e3,
        "n": float(len(latencies)),
    }
