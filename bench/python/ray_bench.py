"""inferline on Ray Serve against Ray Serve's own ``@serve.batch``, same model, same run.

A local Ray (started here, 127.0.0.1, no dashboard) serves one numpy model two ways, one after
the other, on the same number of replicas behind Ray's HTTP proxy:

- **inferline**: ``inferline.ray.app`` over a repository whose ``model.py`` is the model (the
  engine batches inside each replica; the v2 REST app answers);
- **serve.batch**: a deployment whose ``__call__`` parses the same v2 JSON request and awaits a
  ``@serve.batch`` method that runs the same ``model.py`` function (same ``max_batch_size``,
  a ``batch_wait_timeout_s`` equal to inferline's ``max_queue_delay_ms``).

The same closed-loop client (aiohttp, ``concurrency`` connections, one item per request, the
same request bodies) drives each through the proxy for ``--seconds`` per point, then the same
items through a ``DeploymentHandle`` (``infer``). Prints req/s, p50/p99 (ms) and refusals per
contender, path and concurrency, and the ratio inferline / serve.batch.

    python bench/python/ray_bench.py --seconds 5 --concurrency 1 16 64 --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import drive, limit_blas_threads

limit_blas_threads(sys.argv)

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from starlette.requests import Request  # noqa: E402

import inferline.ray as inferline_ray  # noqa: E402

MODEL = "mlp"
DIM = 64
MAX_BATCH = 16
DELAY_MS = 2.0

MODEL_PY = f'''
"""A two-layer MLP, {DIM} -> {DIM} -> {DIM}, float32: the model both contenders run."""

import numpy as np

_rng = np.random.default_rng(0)
W1 = (_rng.standard_normal(({DIM}, {DIM})) / np.sqrt({DIM})).astype(np.float32)
W2 = (_rng.standard_normal(({DIM}, {DIM})) / np.sqrt({DIM})).astype(np.float32)


def predict(x: np.ndarray) -> np.ndarray:
    """x: [B, {DIM}] float32 -> [B, {DIM}] float32."""
    return np.maximum(np.maximum(x @ W1, 0) @ W2, 0).astype(np.float32)
'''

MODEL_TOML = f"""
backend = "python"

[[inputs]]
name = "x"
datatype = "FP32"
shape = [{DIM}]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [{DIM}]

[batching]
max_batch_size = {MAX_BATCH}
max_queue_delay_ms = {DELAY_MS}
max_queue_size = 4096

[python]
allow_code = true
entry = "predict"
"""


DEPLOYMENT = {"inferline": "inferline", "serve.batch": "ServeBatchV2"}


class Refused(Exception):
    """A 503 (or 429) answer: counted apart from the latencies."""


@serve.deployment
class ServeBatchV2:
    """The baseline: Ray Serve's own batching over the same model file, answering the v2 JSON
    request that inferline answers (one item per request, as the client sends)."""

    def __init__(self, model_py: str) -> None:
        spec = importlib.util.spec_from_file_location("bench_model", model_py)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.predict = module.predict

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=DELAY_MS / 1e3)
    async def run(self, rows: list[np.ndarray]) -> list[np.ndarray]:
        return list(self.predict(np.stack(rows)))

    async def infer(self, x: np.ndarray) -> np.ndarray:
        """The DeploymentHandle path: one item in, one row out."""
        return await self.run(x)

    async def __call__(self, request: Request) -> Any:
        body = orjson.loads(await request.body())
        (inp,) = body["inputs"]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(DIM)
        y = await self.run(x)
        return {
            "model_name": MODEL,
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, DIM], "data": y.tolist()}],
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bodies(count: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((count, DIM)).astype(np.float32)
    return [
        orjson.dumps(
            {"inputs": [{"name": "x", "shape": [1, DIM], "datatype": "FP32", "data": x.tolist()}]}
        )
        for x in xs
    ]


async def _measure(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, check: np.ndarray
) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        headers = {"content-type": "application/json"}

        async def infer(body: bytes) -> None:
            async with session.post(url, data=body, headers=headers) as r:
                data = await r.read()
                if r.status in (429, 503):
                    raise Refused
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")

        # One checked answer first (both contenders must compute the same thing), then a short
        # warm-up, then the measured run.
        async with session.post(url, data=bodies[0], headers=headers) as r:
            y = np.asarray(orjson.loads(await r.read())["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(y.reshape(check.shape), check, rtol=1e-4, atol=1e-5)
        await drive(infer, bodies, concurrency, min(1.0, seconds / 2), refusals=(Refused,))
        return await drive(infer, bodies, concurrency, seconds, refusals=(Refused,))


async def _measure_handle(
    contender: str, rows: np.ndarray, concurrency: int, seconds: float, check: np.ndarray
) -> dict[str, float]:
    """The same closed loop through a DeploymentHandle: ``infer(model, x)`` on inferline's
    replicas, ``infer(x)`` on the baseline's."""
    handle = serve.get_deployment_handle(DEPLOYMENT[contender], app_name="bench")
    if contender == "inferline":

        async def infer(x: np.ndarray) -> Any:
            return await handle.infer.remote(MODEL, x)
    else:

        async def infer(x: np.ndarray) -> Any:
            return await handle.infer.remote(x)

    np.testing.assert_allclose((await infer(rows[0])).reshape(check.shape), check, rtol=1e-4)
    await drive(infer, list(rows), concurrency, min(1.0, seconds / 2))
    return await drive(infer, list(rows), concurrency, seconds)


def _wait_ready(url: str, timeout: float = 120.0) -> None:
    async def probe() -> bool:
        try:
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    deadline = time.monotonic() + timeout
    while not asyncio.run(probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout:g}s")
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs the local Ray offers")
    p.add_argument("--blas-threads", default="1", help="BLAS threads (both contenders)")
    args = p.parse_args()

    temp = tempfile.mkdtemp(prefix="ilraybench")
    repo = Path(temp) / "repo" / MODEL
    (repo / "1").mkdir(parents=True)
    (repo / "model.toml").write_text(textwrap.dedent(MODEL_TOML))
    model_py = repo / "1" / "model.py"
    model_py.write_text(MODEL_PY)
    spec = importlib.util.spec_from_file_location("bench_model", model_py)
    assert spec is not None and spec.loader is not None
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    bodies = _bodies(256)
    rows = np.stack([np.asarray(orjson.loads(b)["inputs"][0]["data"], np.float32) for b in bodies])
    first = np.asarray(orjson.loads(bodies[0])["inputs"][0]["data"], np.float32).reshape(1, DIM)
    check = reference.predict(first)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=temp,
        log_to_driver=False,
        configure_logging=False,
    )
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        base = f"http://127.0.0.1:{port}"
        actor = {"num_cpus": args.num_cpus / (args.replicas + 1)}
        contenders: dict[str, Any] = {
            "inferline": inferline_ray.app(
                repo.parent,
                allow_code=True,
                blas_threads=int(args.blas_threads),
                num_replicas=args.replicas,
                ray_actor_options=actor,
            ),
            "serve.batch": ServeBatchV2.options(
                num_replicas=args.replicas,
                max_ongoing_requests=inferline_ray.builder.DEFAULT_MAX_ONGOING_REQUESTS,
                ray_actor_options=actor,
            ).bind(str(model_py)),
        }
        for name, application in contenders.items():
            serve.run(application, name="bench", route_prefix="/")
            if name == "inferline":
                _wait_ready(base + "/v2/health/ready")
            url = f"{base}/v2/models/{MODEL}/infer"
            for path in ("proxy", "handle"):
                results[f"{name} {path}"] = {}
                for c in args.concurrency:
                    if path == "proxy":
                        r = asyncio.run(_measure(url, bodies, c, args.seconds, check))
                    else:
                        r = asyncio.run(_measure_handle(name, rows, c, args.seconds, check))
                    results[f"{name} {path}"][c] = r
                    print(
                        f"{name:<12} {path:<6} c={c:<4} {r['rps']:>9,.0f} req/s  p50 "
                        f"{r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  refused {r['refused']:.0f}",
                        flush=True,
                    )
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)

    print(
        f"\n{args.replicas} replicas, model {DIM}x{DIM} MLP, max_batch_size {MAX_BATCH}, "
        f"window {DELAY_MS:g} ms, {args.seconds:g} s per point, {args.num_cpus} CPUs for Ray\n"
    )
    print(
        "| path   | conc | inferline req/s | p50 / p99 ms    "
        "| serve.batch req/s | p50 / p99 ms    | ratio |"
    )
    print(
        "|--------|-----:|----------------:|-----------------"
        "|------------------:|-----------------|------:|"
    )
    for path in ("proxy", "handle"):
        for c in args.concurrency:
            a, b = results[f"inferline {path}"][c], results[f"serve.batch {path}"][c]
            la = f"{a['p50']:.1f} / {a['p99']:.1f}"
            lb = f"{b['p50']:.1f} / {b['p99']:.1f}"
            print(
                f"| {path:<6} | {c:>4} | {a['rps']:>15,.0f} | {la:<15} "
                f"| {b['rps']:>17,.0f} | {lb:<15} | {a['rps'] / b['rps']:.2f}x |"
            )


if __name__ == "__main__":
    main()
