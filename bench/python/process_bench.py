"""Process instances against thread instances for a GIL-bound Python model, same run.

The model does pure-Python work per row (a loop of ``--work`` iterations), so two thread
instances take turns on one GIL while two process instances each have their own. Closed-loop
clients keep both contenders saturated; they alternate for ``--rounds`` rounds of
``--seconds`` each and the table shows req/s, the baseline (threads) and the ratio.

    python bench/python/process_bench.py [--seconds 3] [--rounds 2] [--clients 64]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import statistics
import time

import numpy as np

import inferline
from inferline import Batching, TensorSpec

WORK = 20_000  # default loop iterations per row (--work); the count travels in the input


def gil_bound(batch: np.ndarray) -> np.ndarray:
    """Per row: a Python loop (holds the GIL throughout), then the row's sum plus the loop's."""
    out = np.empty((batch.shape[0], 1), np.float32)
    for i in range(batch.shape[0]):
        acc = 0
        for k in range(int(batch[i, 0])):
            acc += k & 7
        out[i, 0] = float(batch[i].sum()) + (acc & 1)
    return out


async def load(
    engine: inferline.Engine, name: str, clients: int, seconds: float, work: int
) -> float:
    x = np.zeros(4, np.float32)
    x[0] = work  # the model's loop count travels in the input
    done = 0
    stop = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < stop:
            await engine.infer(name, x)
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.monotonic() - t0)


async def run(args: argparse.Namespace) -> None:
    # Run as a script this file is __main__, which a child cannot import: register the same
    # function through its importable name.
    model = importlib.import_module("process_bench").gil_bound
    engine = inferline.Engine()
    spec_in = [TensorSpec("x", "FP32", (4,))]
    spec_out = [TensorSpec("y", "FP32", (1,))]
    batching = Batching(max_batch_size=args.max_batch_size)
    for name, isolation in (("threads", "thread"), ("processes", "process")):
        engine.register(
            name,
            model,
            inputs=spec_in,
            outputs=spec_out,
            batching=batching,
            instances=args.instances,
            isolation=isolation,
            warmup=[1],
        )
    rates: dict[str, list[float]] = {"threads": [], "processes": []}
    async with engine:
        for _ in range(args.rounds):
            for name in rates:
                rates[name].append(await load(engine, name, args.clients, args.seconds, args.work))
    base = statistics.median(rates["threads"])
    print(
        f"{args.instances} instances, {args.work} Python loop iterations per row, "
        f"{args.clients} clients, max_batch_size {args.max_batch_size}"
    )
    print(f"{'contender':<22}{'req/s (median)':>16}{'ratio':>8}")
    for name, label in (("threads", "thread instances"), ("processes", "process instances")):
        r = statistics.median(rates[name])
        print(f"{label:<22}{r:>16.0f}{r / base:>8.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per round")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two contenders")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--instances", type=int, default=2)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--work", type=int, default=WORK, help="Python loop iterations per row")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
