"""In-process load benchmark: inferline's engine against a hand-written asyncio batcher, every
figure from the same run, on the default asyncio loop and on uvloop.

    python bench/python/engine_bench.py [--seconds 1] [--repeat 3] [--concurrency 1 64 256]
                                        [--loops asyncio uvloop] [--quick] [--plot PATH]

Model: 128x128 float32 matmul + relu as a Python callable, max_batch_size 32, 2 ms window, one
BLAS thread for every contender (set before numpy loads). Contenders:

- ``inferline`` (policy ``work_conserving``, the default), ``fixed_window`` (Triton's) and
  ``latency_target`` (``--max-latency-ms``): one engine, one model per policy, each on a
  worker thread (``isolation="thread"``, the default);
- ``inferline-loop``: the default policy with ``isolation="loop"``, the model run on the event
  loop's thread between its callbacks (no worker thread, no GIL hand-over);
- ``hand-inline`` and ``hand-executor``: baseline.HandBatcher, the batcher an expert writes
  without inferline (fixed window, full batches leave at once), the model on the loop or in a
  one-thread executor.

Rounds are interleaved: each repetition runs every concurrency and every contender back to
back, in an order rotated per repetition, so drift on a shared machine hits all of them; the
tables give the median over repetitions and the spread (max-min)/median of req/s. Each point
reports req/s, p50/p99 latency, the mean batch size (from each contender's own counters,
over that point only) and the loop thread's busy share (``time.thread_time`` of the loop
thread over wall time).

Also measured in the same run: the identity model (on a worker thread, and on the loop) at
the highest concurrency against
baseline.FutureCeiling (the bare-future round trip, one ``call_soon`` wake per batch), and the
loop thread's CPU per row of one ``infer_batch`` of 1,024 rows beside 1,024 separate
``infer`` calls. The last table sets each figure beside the project's target for it.

``--plot PATH`` also writes a throughput-latency chart (PNG): one panel per loop, req/s against
p50 (solid) and p99 (dashed) latency, one line per contender through its concurrency points.
It needs matplotlib (``pip install 'inferline[bench]'``).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadgen import BatchCounter, drive, limit_blas_threads

if __name__ == "__main__":  # before numpy loads: OpenBLAS reads its thread count once
    limit_blas_threads(sys.argv)

import argparse
import asyncio
import shlex
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from baseline import FutureCeiling, HandBatcher  # beside this script (on sys.path above)
from safetensors.numpy import save_file

import inferline
from inferline.backends.native import native_model

DIM = 128
BATCH_ROWS = 1024
REFUSALS = (inferline.QueueFullError,)
IDENTITY = ("identity", "identity-loop", "future-ceiling")  # the identity model's rows
OURS = (
    "inferline",
    "inferline-loop",
)  # isolation thread (the default) and loop  # latency_target refuses what cannot make its target


def make_model() -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)).astype(np.float32)

    def mlp(batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.maximum(batch @ w, 0)
        return out

    return mlp, w


def identity(batch: np.ndarray) -> np.ndarray:
    return batch


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


def compute_time_us(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, n: int = 2000) -> float:
    """Median time of one call of the model on a batch of one, in microseconds."""
    batch = x[None]
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _engine_counter(engine: inferline.Engine, name: str) -> BatchCounter:
    def read() -> tuple[int, int]:
        s = engine.stats(name)
        return int(s["batches"]), int(s["items_computed"])

    return read


def _own_counter(obj: HandBatcher | FutureCeiling) -> BatchCounter:
    return lambda: (obj.batches, obj.items)


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rps = [r["rps"] for r in runs]
    out["spread"] = (max(rps) - min(rps)) / out["rps"] if out["rps"] else float("nan")
    return out


async def run_loop(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement on the running loop; returns the medians per point."""
    fn, w = make_model()
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(DIM).astype(np.float32) for _ in range(64)]
    spec_x = [inferline.TensorSpec("x", "FP32", (DIM,))]
    spec_y = [inferline.TensorSpec("y", "FP32", (DIM,))]
    engine = inferline.Engine()

    def batching(**kw: Any) -> inferline.Batching:
        return inferline.Batching(
            max_batch_size=args.max_batch_size,
            max_queue_delay_ms=args.max_queue_delay_ms,
            max_queue_size=4096,
            **kw,
        )

    models: dict[str, tuple[Any, inferline.Batching, str]] = {
        "inferline": (fn, batching(), "thread"),
        "inferline-loop": (fn, batching(), "loop"),
        "fixed_window": (fn, batching(policy="fixed_window"), "thread"),
        "latency_target": (fn, batching(max_latency_ms=args.max_latency_ms), "thread"),
        "identity": (identity, batching(), "thread"),
        "identity-loop": (identity, batching(), "loop"),
    }
    folder = None
    if args.native:
        folder = Path(tempfile.mkdtemp(prefix="inferline_engine_bench_"))
        native = make_native_model(w, args.max_batch_size, folder)
        models["native"] = (native, batching(), "thread")
    for name, (model, b, isolation) in models.items():
        engine.register(name, model, inputs=spec_x, outputs=spec_y, batching=b, isolation=isolation)
    inline = HandBatcher(fn, args.max_batch_size, args.max_queue_delay_ms, "inline")
    executor = HandBatcher(fn, args.max_batch_size, args.max_queue_delay_ms, "executor")
    ceiling = FutureCeiling(args.max_batch_size)
    await engine.start()
    for b in (inline, executor, ceiling):
        await b.start()

    def via_engine(name: str) -> Callable[[Any], Awaitable[Any]]:
        def call(x: Any) -> Awaitable[Any]:
            return engine.infer(name, x)

        return call

    contenders: dict[str, tuple[Callable[[Any], Awaitable[Any]], BatchCounter]] = {
        name: (via_engine(name), _engine_counter(engine, name))
        for name in models
        if name not in IDENTITY
    }
    contenders["hand-inline"] = (inline.infer, _own_counter(inline))
    contenders["hand-executor"] = (executor.infer, _own_counter(executor))
    top = max(args.concurrency)
    ident: dict[str, tuple[Callable[[Any], Awaitable[Any]], BatchCounter]] = {
        "identity": (via_engine("identity"), _engine_counter(engine, "identity")),
        "identity-loop": (via_engine("identity-loop"), _engine_counter(engine, "identity-loop")),
        "future-ceiling": (ceiling.infer, _own_counter(ceiling)),
    }
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    try:
        for c in args.concurrency:  # warm every contender at every level, unmeasured
            for f, counter in (*contenders.values(), *ident.values()):
                await drive(f, inputs, c, args.warmup, counter, REFUSALS)
        names = list(contenders)
        ident_names = list(ident)
        for rep in range(args.repeat):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for c in args.concurrency:
                for name in order:
                    f, counter = contenders[name]
                    samples.setdefault((c, name), []).append(
                        await drive(f, inputs, c, args.seconds, counter, REFUSALS)
                    )
            for name in (
                ident_names[rep % len(ident_names) :] + ident_names[: rep % len(ident_names)]
            ):
                f, counter = ident[name]
                samples.setdefault((top, name), []).append(
                    await drive(f, inputs, top, args.seconds, counter, REFUSALS)
                )
        rows = await _batch_cpu(engine, args.repeat)
    finally:
        await engine.stop()
        for b in (inline, executor, ceiling):
            await b.stop()
    return {
        "points": {key: _summary(runs) for key, runs in samples.items()},
        "compute_us": compute_time_us(fn, inputs[0]),
        "batch_cpu": rows,
    }


async def _batch_cpu(engine: inferline.Engine, repeat: int) -> dict[str, float]:
    """Loop-thread CPU per row: one infer_batch of 1,024 rows vs 1,024 infer calls (identity
    model, so the worker's compute is negligible and the figures are the loop's own)."""
    x = np.random.default_rng(3).standard_normal((BATCH_ROWS, DIM)).astype(np.float32)
    rows = list(x)

    async def one_batch() -> None:
        out = await engine.infer_batch("identity", x)
        assert out.shape == x.shape

    async def separate() -> None:
        await asyncio.gather(*(engine.infer("identity", r) for r in rows))

    out: dict[str, float] = {}
    for name, f in (("infer_batch", one_batch), ("separate infer", separate)):
        await f()  # warm
        cpu, wall = [], []
        for _ in range(max(5, 3 * repeat)):
            t0, c0 = time.perf_counter(), time.thread_time()
            await f()
            cpu.append(time.thread_time() - c0)
            wall.append(time.perf_counter() - t0)
        out[f"{name} cpu_us_per_row"] = statistics.median(cpu) / BATCH_ROWS * 1e6
        out[f"{name} wall_ms"] = statistics.median(wall) * 1e3
    return out


# ------------------------------------------------------------------------------ report


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    print(
        f"\nmodel: {DIM}x{DIM} float32 matmul+relu (Python callable), "
        f"max_batch_size={args.max_batch_size}, max_queue_delay={args.max_queue_delay_ms} ms, "
        f"latency_target max_latency={args.max_latency_ms} ms, "
        f"BLAS threads={os.environ.get('OPENBLAS_NUM_THREADS')}, {args.seconds:g}s per point, "
        f"median of {args.repeat} interleaved repetitions; {os.cpu_count()} CPUs, "
        f"load average before the run {args.load_before}"
    )
    targets: list[tuple[str, str, str, bool]] = []
    top = max(args.concurrency)
    for loop, res in results.items():
        pts = res["points"]
        print(f"\n== loop: {loop} ==")
        head = (
            f"{'conc':>5} {'contender':<15} {'req/s':>9} {'spread':>7} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'batch':>6} {'busy':>5} {'refused':>7} | "
            f"{'x hand-inline':>13} {'x hand-exec':>11}"
        )
        print(head)
        print("-" * len(head))
        for c in args.concurrency:
            inl = pts[(c, "hand-inline")]["rps"]
            exe = pts[(c, "hand-executor")]["rps"]
            for (cc, name), r in pts.items():
                if cc != c or name in IDENTITY:
                    continue
                print(
                    f"{c:>5} {name:<15} {r['rps']:>9,.0f} {r['spread']:>6.0%} "
                    f"{r['p50']:>7.3f} {r['p99']:>7.3f} {r['batch']:>6.1f} {r['busy']:>5.0%} "
                    f"{r['refused']:>7.0f} | {r['rps'] / inl:>12.2f}x {r['rps'] / exe:>10.2f}x"
                )
        ours = pts[(top, "inferline")]
        for name in OURS:
            r = pts[(top, name)]
            for base, need in (("hand-inline", 1.5), ("hand-executor", 2.0)):
                ratio = r["rps"] / pts[(top, base)]["rps"]
                targets.append(
                    (
                        loop,
                        f"c={top} {name} vs {base}",
                        f"{ratio:.2f}x (>= {need:g}x)",
                        ratio >= need,
                    )
                )

        # Policies.
        low = min(args.concurrency)
        fw = pts[(top, "fixed_window")]
        print(
            f"\npolicies ({loop}): model compute time, batch of 1: {res['compute_us']:.1f} us; "
            f"at c={top} as a share of fixed_window's"
        )
        for name in ("inferline", "inferline-loop", "fixed_window", "latency_target"):
            r, r1 = pts[(top, name)], pts[(low, name)]
            print(
                f"  {name:<15} c={low} p50 {r1['p50'] * 1e3:>8.0f} us | c={top} "
                f"{r['rps']:>9,.0f} req/s ({r['rps'] / fw['rps']:>5.0%}), batch "
                f"{r['batch']:>5.1f} ({r['batch'] / fw['batch']:>5.0%}), refused {r['refused']:.0f}"
            )
        bound = res["compute_us"] + 100
        for name in OURS:
            p50_us = pts[(low, name)]["p50"] * 1e3
            targets.append(
                (
                    loop,
                    f"c={low} {name} p50 <= compute + 100 us",
                    f"{p50_us:.0f} us vs {bound:.0f} us",
                    p50_us <= bound,
                )
            )
        share_rps = ours["rps"] / fw["rps"]
        share_batch = ours["batch"] / fw["batch"]
        targets.append(
            (
                loop,
                f"c={top} work_conserving vs fixed_window",
                f"req/s {share_rps:.0%}, batch {share_batch:.0%} (>= 95%)",
                share_rps >= 0.95 and share_batch >= 0.95,
            )
        )

        # Identity model vs the bare-future ceiling.
        ceil = pts[(top, "future-ceiling")]
        print(f"\nidentity model at c={top} ({loop}):")
        for name in IDENTITY:
            r = pts[(top, name)]
            print(
                f"  {name:<15} {r['rps']:>9,.0f} req/s (spread {r['spread']:.0%}), "
                f"batch {r['batch']:>5.1f}, loop busy {r['busy']:>4.0%}, "
                f"loop CPU {r['cpu_us']:.2f} us/request"
            )
        # The ceiling never waits (no other thread), so its busy share is the CPU the loop
        # thread could get on this machine in this run; on a shared machine it is below 100%.
        avail = ceil["busy"]
        need = 0.75 if loop == "asyncio" else 0.60
        for ident_name, mlp_name in (
            ("identity", "inferline"),
            ("identity-loop", "inferline-loop"),
        ):
            ident = pts[(top, ident_name)]
            frac = ident["rps"] / ceil["rps"]
            mlp_busy = pts[(top, mlp_name)]["busy"] / avail
            print(
                f"  {ident_name} / ceiling: req/s {frac:.0%}, loop CPU per request "
                f"{ceil['cpu_us'] / ident['cpu_us']:.0%}; loop busy relative to the ceiling's "
                f"(the CPU available here): identity {ident['busy'] / avail:.0%}, "
                f"MLP ({mlp_name}) {mlp_busy:.0%}"
            )
            targets.append(
                (
                    loop,
                    f"{ident_name} vs bare-future ceiling",
                    f"{frac:.0%} (>= {need:.0%})",
                    frac >= need,
                )
            )
            targets.append(
                (
                    loop,
                    f"loop busy at saturation ({ident_name})",
                    f"{ident['busy'] / avail:.0%} identity, {mlp_busy:.0%} MLP of "
                    f"the ceiling's {avail:.0%} (>= 95%)",
                    ident["busy"] / avail >= 0.95,
                )
            )

        bc = res["batch_cpu"]
        print(f"\n{BATCH_ROWS} rows, identity model ({loop}): loop-thread CPU per row / wall")
        for name in ("infer_batch", "separate infer"):
            print(
                f"  {name:<15} {bc[name + ' cpu_us_per_row']:>6.2f} us/row  "
                f"{bc[name + ' wall_ms']:>7.2f} ms"
            )
        per_row = bc["infer_batch cpu_us_per_row"]
        targets.append(
            (
                loop,
                f"infer_batch({BATCH_ROWS}) loop CPU/row",
                f"{per_row:.2f} us (<= 0.5 us; separate: "
                f"{bc['separate infer cpu_us_per_row']:.2f} us)",
                per_row <= 0.5,
            )
        )

    print("\ntargets (every figure from this run):")
    for loop, what, got, ok in targets:
        print(f"  {_verdict(ok):<7} {loop:<8} {what:<46} {got}")
    print(
        "\nbusy: loop thread CPU / wall (the loop-busy target divides it by the ceiling's)."
        "\nspread: (max - min) / median of req/s over repetitions."
        "\nrefused: QueueFullError answers (latency_target refuses what cannot make the target);"
        " they are not in req/s or latencies."
    )


# ------------------------------------------------------------------------------ plot

PLOT_HINT = "--plot needs matplotlib: pip install 'inferline[bench]'"
MARKERS = "osD^v"


def _pyplot() -> Any:
    # matplotlib is an optional dependency (the bench extra): imported only for --plot.
    try:
        import matplotlib
    except ImportError as e:
        raise SystemExit(PLOT_HINT) from e
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot(args: argparse.Namespace, results: dict[str, dict[str, Any]], path: str) -> None:
    """req/s against p50 (solid) and p99 (dashed) latency, log-log, one panel per loop, one
    line per contender through its concurrency points, each p50 point labelled with its
    concurrency."""
    plt = _pyplot()
    from matplotlib.lines import Line2D  # optional dependency, as in _pyplot

    loops = list(results)
    fig, axes = plt.subplots(
        1, len(loops), figsize=(7.5 * len(loops), 6.5), sharey=True, squeeze=False
    )
    names = [n for (c, n) in next(iter(results.values()))["points"] if c == args.concurrency[0]]
    style = {n: (f"C{i}", MARKERS[i % len(MARKERS)]) for i, n in enumerate(names)}
    for ax, loop in zip(axes[0], loops, strict=True):
        pts = results[loop]["points"]
        for name in names:
            color, marker = style[name]
            rps = [pts[(c, name)]["rps"] for c in args.concurrency]
            for key, line in (("p50", "-"), ("p99", "--")):
                ax.plot(
                    rps,
                    [pts[(c, name)][key] for c in args.concurrency],
                    linestyle=line,
                    marker=marker,
                    color=color,
                    markersize=6 if key == "p50" else 4,
                    alpha=1.0 if key == "p50" else 0.6,
                )
            for c, x in zip(args.concurrency, rps, strict=True):
                ax.annotate(
                    f"c={c}",
                    (x, pts[(c, name)]["p50"]),
                    textcoords="offset points",
                    xytext=(5, -12),
                    fontsize=8,
                    color=color,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"loop: {loop}")
        ax.set_xlabel("throughput (req/s, log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0][0].set_ylabel("latency (ms, log): p50 solid, p99 dashed")
    handles = [
        Line2D([], [], color=color, marker=marker, label=name)
        for name, (color, marker) in style.items()
    ]
    handles += [
        Line2D([], [], color="black", linestyle="-", label="p50"),
        Line2D([], [], color="black", linestyle="--", alpha=0.6, label="p99"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9)
    command = shlex.join(["python", "bench/python/engine_bench.py", *sys.argv[1:]])
    fig.suptitle(
        f"inferline engine: {DIM}x{DIM} float32 matmul+relu (Python callable), "
        f"max_batch_size {args.max_batch_size}, window {args.max_queue_delay_ms:g} ms, "
        f"median of {args.repeat} x {args.seconds:g} s\n"
        f"{os.cpu_count()} CPUs, load average before the run {args.load_before}\n{command}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"\nplot: {path}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=2.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds per point")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (median)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--max-latency-ms", type=float, default=10.0, help="latency_target's target")
    p.add_argument("--loops", nargs="+", choices=["asyncio", "uvloop"], default=None)
    p.add_argument("--native", action="store_true", help="also the native fused linear model")
    p.add_argument("--quick", action="store_true", help="smoke run: 0.5 s per point, 1 rep")
    p.add_argument("--blas-threads", default="1", help="BLAS threads for every contender")
    p.add_argument("--plot", metavar="PATH", help="also write a throughput-latency chart (PNG)")
    args = p.parse_args()
    if args.plot:
        _pyplot()  # fail before the run, not after it, when matplotlib is missing
    if args.quick:
        args.seconds, args.warmup, args.repeat = 0.5, 0.1, 1
    if args.loops is None:
        args.loops = ["asyncio"] if sys.platform == "win32" else ["asyncio", "uvloop"]
    args.load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    results = {}
    for loop in args.loops:
        if loop == "uvloop":
            import uvloop  # not on Windows: imported only when asked for

            results[loop] = uvloop.run(run_loop(args))
        else:
            results[loop] = asyncio.run(run_loop(args))
    report(args, results)
    if args.plot:
        plot(args, results, args.plot)


if __name__ == "__main__":
    main()
