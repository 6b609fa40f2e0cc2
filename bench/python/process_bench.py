"""Process instances against thread instances for a GIL-bound Python model, same run.

The model does pure-Python work per row (a loop of ``--work`` iterations), so two thread
instances take turns on one GIL while two process instances each have their own. Closed-loop
clients keep both contenders saturated; they alternate for ``--rounds`` rounds of
``--seconds`` each and the table shows req/s, the baseline (threads) and the ratio.

Then recovery: while a few clients keep the process instances busy, one child is killed with
SIGKILL ``--kills`` times; each kill is timed from the signal until the engine answers from a
newly started child again (its pid differs), against the one-second target. Requests that were
in the killed child's batch must fail with ``ModelError``; any other error is counted as lost.

    python bench/python/process_bench.py [--seconds 3] [--rounds 2] [--clients 64] [--kills 5]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
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


def _pids(engine: inferline.Engine, name: str) -> list[int]:
    return next(v for v in engine.live_versions() if v.name == name).instance_pids()


async def recovery(engine: inferline.Engine, name: str, kills: int, work: int) -> None:
    """SIGKILLs one child ``kills`` times under light load and prints how long each took to
    serve again from a new child, and how the requests in flight were answered."""
    x = np.zeros(4, np.float32)
    x[0] = work // 20  # short batches: the time measured is the restart, not the work
    outcomes: dict[str, int] = {}
    stop = False

    async def client() -> None:
        while not stop:
            try:
                await engine.infer(name, x)
                kind = "ok"
            except inferline.ModelError:
                kind = "ModelError"
            except Exception as e:  # anything else is a lost answer: counted, shown
                kind = type(e).__name__
            outcomes[kind] = outcomes.get(kind, 0) + 1

    clients = [asyncio.ensure_future(client()) for _ in range(4)]
    times: list[float] = []
    try:
        for _ in range(kills):
            await engine.infer(name, x)  # every child up and serving before the kill
            victim = _pids(engine, name)[0]
            t0 = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            deadline = t0 + 30.0
            while time.monotonic() < deadline:  # a new child in the victim's place ...
                pids = _pids(engine, name)
                if victim not in pids and all(p > 0 for p in pids):
                    break
                await asyncio.sleep(0.002)
            while time.monotonic() < deadline:  # ... that has answered a batch
                try:
                    await engine.infer(name, x)
                    if victim not in _pids(engine, name):
                        break
                except inferline.ModelError:
                    pass
            times.append(time.monotonic() - t0)
    finally:
        stop = True
        await asyncio.gather(*clients)
    lost = sum(n for k, n in outcomes.items() if k not in ("ok", "ModelError"))
    print(
        f"recovery after SIGKILL ({kills} kills): median {statistics.median(times) * 1e3:.0f} ms,"
        f" max {max(times) * 1e3:.0f} ms (target: back within 1000 ms);"
        f" answers {dict(sorted(outcomes.items()))}, lost {lost}"
    )


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
        report(args, rates)
        if args.kills:
            await recovery(engine, "processes", args.kills, args.work)


def report(args: argparse.Namespace, rates: dict[str, list[float]]) -> None:
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
    p.add_argument("--kills", type=int, default=5, help="SIGKILLs for the recovery figure")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
