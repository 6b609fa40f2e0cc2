"""The ``inferline`` command: ``demo`` (an embedded model under load), ``serve REPO``,
``models REPO`` (load and warm every model, print each one's state and reason, serve nothing)
and ``import-embedding DIR --into REPO`` (a sentence-embedding weights folder as a repository
entry with sha256s)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, build_info, observability
from .engine import Batching, Engine
from .models.importer import import_embedding
from .server import serve
from .server.admission import DEFAULT_MAX_BODY_BYTES_IN_FLIGHT, DEFAULT_MAX_ROWS_PER_REQUEST
from .types import TensorSpec

__all__ = ["main"]


def _demo_model(dim: int) -> Any:
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)
    w2 = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32)

    def mlp(batch: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.maximum(np.maximum(batch @ w1, 0) @ w2, 0)
        return out

    return mlp


async def _demo(args: argparse.Namespace) -> int:
    dim = args.dim
    # The model is cheap and ours (it cannot hang): on the loop unless several instances.
    isolation = args.isolation or ("loop" if args.instances == 1 else "thread")
    engine = Engine(blas_threads=args.blas_threads)
    engine.register(
        "demo-mlp",
        _demo_model(dim),
        inputs=[TensorSpec("x", "FP32", (dim,))],
        outputs=[TensorSpec("y", "FP32", (dim,))],
        batching=Batching(
            max_batch_size=args.max_batch_size,
            max_queue_delay_ms=args.max_queue_delay_ms,
            max_queue_size=max(1024, 2 * args.concurrency),
        ),
        instances=args.instances,
        isolation=isolation,
    )
    print(
        f"inferline {__version__} demo: a {dim}x{dim} two-layer MLP (float32), "
        f"{args.concurrency} concurrent callers, max_batch_size={args.max_batch_size}, "
        f"max_queue_delay={args.max_queue_delay_ms}ms, isolation={isolation}, "
        f"{args.seconds:g}s"
    )
    info = build_info()
    print(
        f"native core: {info['compiler']}, CUDA compiled: {info['cuda_compiled']}, "
        f"CUDA devices: {info['cuda_device_count']}"
    )
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal(dim).astype(np.float32) for _ in range(256)]
    reference = _demo_model(dim)
    stop_at = time.monotonic() + args.seconds
    answered = [0]
    wrong = [0]

    async def caller(k: int) -> None:
        i = k
        while time.monotonic() < stop_at:
            x = inputs[i % len(inputs)]
            y = await engine.infer("demo-mlp", x)
            if i % 997 == 0 and not np.allclose(y, reference(x[None])[0], rtol=1e-4, atol=1e-5):
                wrong[0] += 1
            answered[0] += 1
            i += args.concurrency

    async def reporter() -> None:
        last_n, last_t = 0, time.monotonic()
        last_batches = 0
        last_items = 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(1.0)
            s = engine.stats("demo-mlp")
            now = time.monotonic()
            n = answered[0]
            batches = s["batches"]
            rate = (n - last_n) / (now - last_t)
            items = s["items_computed"]
            mean_batch = (items - last_items) / max(1, batches - last_batches)
            last_items = items
            r = s["request"]
            print(
                f"  {rate:>10,.0f} req/s | mean batch {mean_batch:5.1f} | latency p50 "
                f"{r['p50'] * 1e3:6.3f} ms  p90 {r['p90'] * 1e3:6.3f} ms  p99 "
                f"{r['p99'] * 1e3:6.3f} ms | queue {s['queue_depth']:>4}",
                flush=True,
            )
            last_n, last_t, last_batches = n, now, batches

    async with engine:
        t0 = time.monotonic()
        await asyncio.gather(reporter(), *(caller(k) for k in range(args.concurrency)))
        elapsed = time.monotonic() - t0
        s = engine.stats("demo-mlp")
    r = s["request"]
    print(
        f"done: {answered[0]:,} requests in {elapsed:.1f}s = {answered[0] / elapsed:,.0f} req/s, "
        f"{s['batches']:,} batches (mean {s['batch_size']['mean']:.1f}, max "
        f"{s['batch_size']['max']:.0f}), latency p50 {r['p50'] * 1e3:.3f} ms p99 "
        f"{r['p99'] * 1e3:.3f} ms, outcomes {s['requests']}"
    )
    if wrong[0]:
        print(f"error: {wrong[0]} answers differed from the reference", file=sys.stderr)
        return 1
    return 0


async def _models(repository: str, allow_code: bool) -> int:
    """Loads and warms every model of ``repository`` as ``serve`` would, prints one line per
    model version (state and reason) and returns 1 when any is not READY."""
    engine = Engine.from_repository(repository, allow_code=allow_code)
    async with engine:
        rows = engine.repository_index()
    broken = 0
    for row in rows:
        version = f" v{row['version']}" if row.get("version") else ""
        reason = f": {row['reason']}" if row.get("reason") else ""
        print(f"{row['name']}{version} {row['state']}{reason}")
        broken += row["state"] != "READY"
    print(f"{len(rows)} model version(s), {broken} not ready", file=sys.stderr)
    return 1 if broken or not rows else 0


def _serve(args: argparse.Namespace) -> int:
    if args.list:
        return asyncio.run(_models(args.repository, args.allow_code))
    if args.otel:
        try:
            print(observability.configure_sdk(), file=sys.stderr)
        except (ImportError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        observability.enable()
    engine = Engine.from_repository(
        args.repository,
        watch=args.watch,
        poll_interval=args.poll_interval,
        allow_code=args.allow_code,
        strict=args.strict_readiness,
    )
    serve(
        engine,
        args.host,
        args.port,
        drain_timeout=args.drain_timeout,
        max_body_bytes=args.max_body_mib * 1024 * 1024,
        max_body_bytes_in_flight=args.max_body_mib_in_flight * 1024 * 1024,
        max_rows_per_request=args.max_rows_per_request,
        max_in_flight=args.max_in_flight,
        repository_api=args.repository_api,
        strict_readiness=args.strict_readiness,
        grpc_port=args.grpc_port,
    )
    return 0


def _default_repository() -> str:
    here = Path(__file__).resolve()
    for candidate in (
        here.parent / "examples" / "repository",
        here.parents[2] / "examples" / "repository",
    ):
        if candidate.is_dir():
            return str(candidate)
    return "examples/repository"


def _repository_arg(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "repository",
        nargs="?",
        default=argparse.SUPPRESS,
        help="model repository folder (default: the bundled example repository)",
    )


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="inferline",
        description="Serve AI models with a native batching core.",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"inferline {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("INFERLINE_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (env INFERLINE_LOG_LEVEL)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="serve an embedded model to many concurrent callers", formatter_class=fmt
    )
    demo.add_argument("--seconds", type=float, default=5.0, help="how long to run")
    demo.add_argument("--concurrency", type=int, default=256, help="concurrent callers")
    demo.add_argument("--max-batch-size", type=int, default=32, help="largest batch")
    demo.add_argument(
        "--max-queue-delay-ms", type=float, default=2.0, help="batching window (fixed_window)"
    )
    demo.add_argument("--instances", type=int, default=1, help="model worker threads")
    demo.add_argument(
        "--isolation",
        choices=("loop", "thread"),
        default=None,
        help="where the model runs (default: loop with one instance, else thread)",
    )
    demo.add_argument("--dim", type=int, default=128, help="width of the MLP")
    demo.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="asyncio" if sys.platform == "win32" else "uvloop",
        help="event loop",
    )
    demo.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads while serving (default 1: batching feeds BLAS already)",
    )

    serve_cmd = sub.add_parser(
        "serve",
        help="serve a model repository over HTTP (Open Inference Protocol v2)",
        formatter_class=fmt,
    )
    _repository_arg(serve_cmd)
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve_cmd.add_argument("--port", type=int, default=8000, help="port to bind (0: any free one)")
    serve_cmd.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the protocol over gRPC (KServe v2 / Triton GRPCInferenceService) on "
        "this port of the same host (0: any free one; default: no gRPC)",
    )
    serve_cmd.add_argument(
        "--watch",
        action="store_true",
        help="poll the repository: load new versions, swap defaults, unload removed ones, "
        "and reload a loaded model whose model.toml changed (warmed beside the serving one, "
        "then swapped; a broken edit leaves the old config serving); every change is logged",
    )
    serve_cmd.add_argument(
        "--strict-readiness",
        action="store_true",
        help="a model that fails to load or warm up fails start-up, and /v2/health/ready "
        "requires every model (default: the others serve, readiness counts the models that "
        "loaded, and /v2/repository/index says why a model is UNAVAILABLE)",
    )
    serve_cmd.add_argument(
        "--list",
        action="store_true",
        help="load and warm every model, print each one's state and reason and exit (1 when "
        "any is not ready) without serving; for CI (same as `inferline models REPO`)",
    )
    serve_cmd.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between --watch polls"
    )
    serve_cmd.add_argument(
        "--max-body-mib", type=int, default=64, help="largest request body accepted (MiB)"
    )
    serve_cmd.add_argument(
        "--max-body-mib-in-flight",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES_IN_FLIGHT >> 20,
        help="request bodies held at once (MiB); beyond it, 503 with Retry-After",
    )
    serve_cmd.add_argument(
        "--max-rows-per-request",
        type=int,
        default=DEFAULT_MAX_ROWS_PER_REQUEST,
        help="rows one inference request may carry; beyond it, 413",
    )
    serve_cmd.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="inference requests in the server at once; beyond it, 503 with Retry-After "
        "before the body is read (None: the models' queue sizes, at least two batches each)",
    )
    serve_cmd.add_argument(
        "--allow-code",
        action="store_true",
        help="let models whose model.toml says [python] allow_code = true run their "
        "model.py (code from the repository runs in this process); both keys are needed",
    )
    serve_cmd.add_argument(
        "--no-repository-api",
        dest="repository_api",
        action="store_false",
        help="turn off the repository load/unload routes (they answer 403)",
    )
    serve_cmd.add_argument(
        "--otel",
        action="store_true",
        help="OpenTelemetry traces (needs inferline[otel]): one span per request with queue, "
        "compute and serialise children, parented by the caller's traceparent; exported by "
        "the process's TracerProvider, else an SDK one per OTEL_TRACES_EXPORTER (otlp, "
        "console or none); INFERLINE_OTEL=1 does the same for engines made in code",
    )
    serve_cmd.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="seconds accepted requests get to finish after SIGTERM",
    )

    models_cmd = sub.add_parser(
        "models",
        help="check a model repository: load and warm every model, print each one's state "
        "and reason, exit 1 when any is not ready (nothing is served)",
        formatter_class=fmt,
    )
    _repository_arg(models_cmd)
    models_cmd.add_argument(
        "--allow-code", action="store_true", help="as for serve: let model.py files run"
    )

    import_cmd = sub.add_parser(
        "import-embedding",
        help="copy a sentence-embedding weights folder (model.safetensors, config.json, "
        "tokenizer.json, sentence_bert_config.json) into a repository as a text_encoder model "
        "with the files' sha256s",
        formatter_class=fmt,
    )
    import_cmd.add_argument("source", help="the weights folder")
    import_cmd.add_argument("--into", required=True, help="the model repository folder")
    import_cmd.add_argument("--name", default="minilm", help="the model's name")
    import_cmd.add_argument("--version", type=int, default=1, help="the version folder's number")
    import_cmd.add_argument(
        "--max-batch-tokens", type=int, default=8192, help="a batch's real tokens at most"
    )

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        if args.concurrency < 1 or args.seconds <= 0:
            parser.error("--concurrency must be >= 1 and --seconds > 0")
        if args.loop == "uvloop":
            import uvloop  # a dependency everywhere but Windows, where the default is asyncio

            return int(uvloop.run(_demo(args)))
        return asyncio.run(_demo(args))
    if args.command == "import-embedding":
        try:
            folder = import_embedding(
                args.source,
                args.into,
                name=args.name,
                version=args.version,
                max_batch_tokens=args.max_batch_tokens,
            )
        except (ValueError, OSError) as exc:
            print(f"inferline import-embedding: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {folder} (serve it with: inferline serve {args.into})")
        return 0
    if getattr(args, "repository", None) is None:
        args.repository = _default_repository()
    if args.command == "models":
        return asyncio.run(_models(args.repository, args.allow_code))
    return _serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
