"""Load benchmark: inferline's engine against a pure-asyncio batcher, in the same run.

Both serve the same model (128x128 float32 matmul + relu) with the same batch policy
(max_batch_size, max_queue_delay). The baseline is what one writes without inferline: an
asyncio.Queue, a batcher task that waits for max_batch_size items or max_queue_delay since the
oldest, ``np.stack``, the model in a thread executor, then ``set_result`` per future.

    python bench/python/engine_bench.py [--seconds 3] [--concurrency 1 64 256] [--uvloop]

Prints requests/s and p50/p99 latency per concurrency for both, and the ratios. Machines here
are shared and noisy: compare ratios from one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loadgen import limit_blas_threads

    limit_blas_threads(sys.argv)

import numpy as np
from safetensors.numpy import save_file

import inferline
from inferline.backends.native import native_model

DIM = 128


def make_model() -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32)

    def mlp(batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.maximum(batch @ w, 0)
        return out

    return mlp, w


def make_native_model(w: np.ndarray, max_batch_size: int, folder: Path) -> Any:
    """The same matmul + relu as native kernels (one fused linear op), off the GIL."""
    save_file({"w": w}, str(folder / "w.safetensors"))
    table = {
        "weights": "w.safetensors",
        "ops": [{"op": "linear", "weight": "w", "activation": "relu", "layout": "in_out"}],
    }
    spec_x = [inferline.TensorSpec("x", "FP32", (DIM,))]
    spec_y = [inferline.TensorSpec("y", "FP32", (DIM,))]
    return native_model(
        table, inputs=spec_x, outputs=spec_y, folder=folder, max_batch_size=max_batch_size
    )


class AsyncioBatcher:
    """The baseline: a pure-asyncio dynamic batcher with the model in a thread executor."""

    def __init__(
        self, fn: Callable[[np.ndarray], np.ndarray], max_batch_size: int, max_queue_delay_ms: float
    ) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.delay = max_queue_delay_ms / 1000.0
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray], float]] = (
            asyncio.Queue()
        )
        self.full = asyncio.Event()  # set by producers once a whole batch is waiting
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def infer(self, x: np.ndarray) -> np.ndarray:
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((x, fut, time.monotonic()))
        if self.queue.qsize() >= self.max_batch_size:
            self.full.set()
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self.queue.get()
            items = [first]
            # Wait for a full batch or until the oldest item has waited max_queue_delay.
            left = first[2] + self.delay - time.monotonic()
            if self.queue.qsize() + 1 < self.max_batch_size and left > 0:
                self.full.clear()
                try:
                    await asyncio.wait_for(self.full.wait(), left)
                except TimeoutError:
                    pass
            while len(items) < self.max_batch_size and not self.queue.empty():
                items.append(self.queue.get_nowait())
            batch = np.stack([x for x, _, _ in items])
            try:
                out = await loop.run_in_executor(None, self.fn, batch)
            except Exception as exc:  # one failing batch fails its callers only
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for i, (_, fut, _) in enumerate(items):
                if not fut.done():
                    fut.set_result(out[i])


async def run(args: argparse.Namespace) -> None:
    from loadgen import drive  # beside this script: on sys.path only when run as one

    fn, w = make_model()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(DIM).astype(np.float32) for _ in range(64)]
    folder = Path(tempfile.mkdtemp(prefix="inferline_engine_bench_"))
    native = make_native_model(w, args.max_batch_size, folder)
    check = np.random.default_rng(2).standard_normal((4, DIM)).astype(np.float32)
    np.testing.assert_allclose(native.forward(check), fn(check), rtol=1e-4, atol=1e-5)
    rows = []
    for c in args.concurrency:
        engine = inferline.Engine()
        for name, model in (("mlp", fn), ("mlp_native", native)):
            engine.register(
                name,
                model,
                inputs=[inferline.TensorSpec("x", "FP32", (DIM,))],
                outputs=[inferline.TensorSpec("y", "FP32", (DIM,))],
                batching=inferline.Batching(
                    max_batch_size=args.max_batch_size,
                    max_queue_delay_ms=args.max_queue_delay_ms,
                    max_queue_size=4096,
                    idle_spin_us=args.idle_spin_us,
                ),
                instances=args.instances,
            )
        base = AsyncioBatcher(fn, args.max_batch_size, args.max_queue_delay_ms)
        await engine.start()
        await base.start()
        # Short warm runs, then alternate so drift on a shared machine hits every contender.
        infer = functools.partial(engine.infer, "mlp")
        infer_native = functools.partial(engine.infer, "mlp_native")
        for f in (infer, base.infer, infer_native):
            await drive(f, inputs, c, 0.3)
        res_i = await drive(infer, inputs, c, args.seconds)
        res_b = await drive(base.infer, inputs, c, args.seconds)
        res_n = await drive(infer_native, inputs, c, args.seconds)
        stats = engine.stats("mlp")
        await engine.stop()
        await base.stop()
        rows.append((c, res_i, res_b, res_n, stats["batch_size"]["mean"]))

    print(
        f"model: {DIM}x{DIM} float32 matmul+relu, max_batch_size={args.max_batch_size}, "
        f"max_queue_delay={args.max_queue_delay_ms}ms, loop={args.loop}, "
        f"BLAS threads={os.environ.get('OPENBLAS_NUM_THREADS')}, instances={args.instances}"
    )
    print(
        f"{'conc':>5} | {'inferline rps':>13} {'p50 ms':>7} {'p99 ms':>7} {'batch':>6} | "
        f"{'asyncio rps':>11} {'p50 ms':>7} {'p99 ms':>7} | {'rps ratio':>9} {'p99 ratio':>9} | "
        f"{'native rps':>10} {'p99 ms':>7} {'rps ratio':>9}"
    )
    for c, a, b, n, mean_batch in rows:
        print(
            f"{c:>5} | {a['rps']:>13,.0f} {a['p50']:>7.3f} {a['p99']:>7.3f} {mean_batch:>6.1f} | "
            f"{b['rps']:>11,.0f} {b['p50']:>7.3f} {b['p99']:>7.3f} | "
            f"{a['rps'] / b['rps']:>8.2f}x {a['p99'] / b['p99']:>8.2f}x | "
            f"{n['rps']:>10,.0f} {n['p99']:>7.3f} {n['rps'] / b['rps']:>8.2f}x"
        )
    print(
        "rps ratio = inferline / asyncio baseline (higher is better); "
        "p99 ratio = inferline / baseline (lower is better); native = the same matmul+relu "
        "as one fused native linear op through the same engine (no GIL in the worker)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--idle-spin-us", type=float, default=0.0)
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--blas-threads", default="1", help="BLAS threads for both contenders")
    args = p.parse_args()
    if args.loop == "uvloop":
        import uvloop  # optional: only for --loop uvloop

        uvloop.run(run(args))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
