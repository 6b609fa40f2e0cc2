"""Load benchmark: the native MLP backend against the same MLP as a numpy model, through the
same engine with the same batch policy, in the same run.

Model (the reference example classifier): linear+gelu, linear+gelu, linear, softmax, with the
tanh form of GELU on both sides (numpy has no erf). The native model reads its weights from a
.safetensors file written by this script and runs on the worker thread without the GIL; the
numpy model is a Python callable the worker calls with the GIL held for the elementwise ops.

    python bench/python/native_bench.py [--seconds 3] [--concurrency 256] [--in 128]
        [--hidden 256] [--classes 16] [--max-batch-size 64] [--max-queue-delay-ms 2]

Prints requests/s and p50/p99 latency for both and the ratios (target: native >= 1.5x the
numpy model's requests/s at concurrency 256). Both contenders use 1 BLAS thread unless
--blas-threads says otherwise. Machines here are shared and noisy: compare ratios from one run.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loadgen import limit_blas_threads

    limit_blas_threads(sys.argv)

import argparse
import asyncio
import functools
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import inferline
from inferline.backends.native import native_model


def make_weights(n_in: int, hidden: int, classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)

    def init(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / math.sqrt(inp)).astype(np.float32)

    return {
        "fc1.weight": init(hidden, n_in),
        "fc1.bias": np.zeros(hidden, np.float32),
        "fc2.weight": init(hidden, hidden),
        "fc2.bias": np.zeros(hidden, np.float32),
        "fc3.weight": init(classes, hidden),
        "fc3.bias": np.zeros(classes, np.float32),
    }


def numpy_model(w: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    # Weights pre-transposed once, as a careful numpy author would.
    w1, w2, w3 = (np.ascontiguousarray(w[f"fc{i}.weight"].T) for i in (1, 2, 3))
    b1, b2, b3 = w["fc1.bias"], w["fc2.bias"], w["fc3.bias"]
    k = np.float32(math.sqrt(2 / math.pi))

    def gelu_tanh(x: np.ndarray) -> np.ndarray:
        return 0.5 * x * (1 + np.tanh(k * (x + np.float32(0.044715) * x * x * x)))

    def mlp(batch: np.ndarray) -> np.ndarray:
        h = gelu_tanh(batch @ w1 + b1)
        h = gelu_tanh(h @ w2 + b2)
        logits = h @ w3 + b3
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    return mlp


async def run(args: argparse.Namespace) -> None:
    from loadgen import drive

    w = make_weights(args.inp, args.hidden, args.classes)
    folder = Path(tempfile.mkdtemp(prefix="inferline_native_bench_"))
    from safetensors.numpy import save_file

    save_file(w, str(folder / "mlp.safetensors"))
    x_spec = [inferline.TensorSpec("x", "FP32", (args.inp,))]
    y_spec = [inferline.TensorSpec("probs", "FP32", (args.classes,))]
    table = {
        "weights": "mlp.safetensors",
        "ops": [
            {"op": "linear", "weight": "fc1.weight", "bias": "fc1.bias", "activation": "gelu_tanh"},
            {"op": "linear", "weight": "fc2.weight", "bias": "fc2.bias", "activation": "gelu_tanh"},
            {"op": "linear", "weight": "fc3.weight", "bias": "fc3.bias"},
            {"op": "softmax"},
        ],
    }
    native = native_model(
        table, inputs=x_spec, outputs=y_spec, folder=folder, max_batch_size=args.max_batch_size
    )
    numpy_fn = numpy_model(w)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(args.inp).astype(np.float32) for _ in range(64)]
    batch = np.stack(inputs)
    np.testing.assert_allclose(native.forward(batch), numpy_fn(batch), atol=1e-5)

    batching = inferline.Batching(
        max_batch_size=args.max_batch_size,
        max_queue_delay_ms=args.max_queue_delay_ms,
        max_queue_size=4096,
    )
    engine = inferline.Engine(blas_threads=int(args.blas_threads))
    for name, model in (("native", native), ("numpy", numpy_fn)):
        engine.register(
            name,
            model,
            inputs=x_spec,
            outputs=y_spec,
            batching=batching,
            warmup=[1, args.max_batch_size],
        )
    rows = []
    async with engine:
        for c in args.concurrency:
            res: dict[str, list[dict[str, float]]] = {"native": [], "numpy": []}
            for name in ("native", "numpy"):  # warm
                await drive(functools.partial(engine.infer, name), inputs, c, 0.3)
            for _ in range(args.rounds):  # alternate so drift on a shared machine hits both
                for name in ("native", "numpy"):
                    infer = functools.partial(engine.infer, name)
                    res[name].append(await drive(infer, inputs, c, args.seconds / args.rounds))
            best = {
                n: {
                    "rps": statistics.fmean(r["rps"] for r in rs),
                    "p50": statistics.median(r["p50"] for r in rs),
                    "p99": statistics.median(r["p99"] for r in rs),
                }
                for n, rs in res.items()
            }
            rows.append(
                (c, best["native"], best["numpy"], engine.stats("native"), engine.stats("numpy"))
            )

    print(
        f"model: MLP {args.inp}->{args.hidden}->{args.hidden}->{args.classes} (gelu_tanh, "
        f"softmax), max_batch_size={args.max_batch_size}, "
        f"max_queue_delay={args.max_queue_delay_ms}ms, BLAS threads={args.blas_threads}"
    )
    print(
        f"{'conc':>5} | {'native rps':>10} {'p50 ms':>7} {'p99 ms':>7} {'batch':>6} | "
        f"{'numpy rps':>10} {'p50 ms':>7} {'p99 ms':>7} {'batch':>6} | "
        f"{'rps ratio':>9} {'p99 ratio':>9}"
    )
    for c, a, b, sa, sb in rows:
        print(
            f"{c:>5} | {a['rps']:>10,.0f} {a['p50']:>7.3f} {a['p99']:>7.3f} "
            f"{sa['batch_size']['mean']:>6.1f} | {b['rps']:>10,.0f} {b['p50']:>7.3f} "
            f"{b['p99']:>7.3f} {sb['batch_size']['mean']:>6.1f} | "
            f"{a['rps'] / b['rps']:>8.2f}x {a['p99'] / b['p99']:>8.2f}x"
        )
    print(
        "rps ratio = native / numpy (higher is better); p99 ratio = native / numpy (lower is "
        "better)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per contender")
    p.add_argument("--rounds", type=int, default=3, help="alternations per concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[256])
    p.add_argument("--in", dest="inp", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--blas-threads", default="1", help="BLAS threads for both contenders")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
