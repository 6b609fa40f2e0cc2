"""inferline engines as Ray Serve replicas, on a local Ray started here.

One module-scoped Ray (2 CPUs, 127.0.0.1, no dashboard, a short temp dir) serves a repository
with one Python model (``y = 2x + 1`` after a short sleep, so requests are in flight) on 2
replicas. tritonclient talks v2 REST to Ray's proxy; a ``DeploymentHandle`` calls the replica
methods; then one replica is killed under load: every request gets its answer or 503 (the
retryable status), and the deployment gets back to 2 running replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
tc_aio = pytest.importorskip("tritonclient.http.aio")
from ray.serve.config import AutoscalingContext  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import inferline.ray as inferline_ray  # noqa: E402
from inferline import Engine  # noqa: E402
from inferline.errors import InvalidInput, ModelNotReady  # noqa: E402

APP = "inferline"
MODEL = "twice"
DIM = 4

MODEL_TOML = f"""
backend = "python"
inputs = [{{ name = "x", datatype = "FP32", shape = [{DIM}] }}]
outputs = [{{ name = "y", datatype = "FP32", shape = [{DIM}] }}]
batching = {{ max_batch_size = 8, max_queue_size = 256 }}
warmup = {{ batch_sizes = [1] }}
python = {{ allow_code = true, entry = "predict" }}
"""

MODEL_PY = """
import time

import numpy as np


def predict(x: np.ndarray) -> np.ndarray:
    time.sleep(0.002)  # keeps requests in flight while the test kills a replica
    return (2.0 * x + 1.0).astype(np.float32)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running_replicas() -> int:
    status = serve.status().applications.get(APP)
    if status is None or APP not in status.deployments:
        return 0
    d = status.deployments[APP]
    return int(d.replica_states.get("RUNNING", 0)) if d.status == "HEALTHY" else 0


@dataclass(frozen=True)
class Cluster:
    url: str  # Serve's proxy, host:port
    repository: Path  # the model repository the replicas serve


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A local Ray with Serve's proxy on a free 127.0.0.1 port, the deployment on 2
    replicas; yields the proxy's host:port and shuts everything down after."""
    # Unix socket paths must stay short: a temp dir of our own, not pytest's deep tmp_path.
    temp = tempfile.mkdtemp(prefix="ilray")
    repo = Path(temp) / "repo" / MODEL
    (repo / "1").mkdir(parents=True)
    (repo / "model.toml").write_text(textwrap.dedent(MODEL_TOML))
    (repo / "1" / "model.py").write_text(MODEL_PY)
    # The proxy and the replicas inherit Ray's environment: the proxy middleware that turns
    # a dead replica's missing answer into 503.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "inferline.ray:proxy_middlewares")
        # A request the proxy's router loses while it re-routes from the killed replica is
        # answered 503 after this bound (the default, 120 s, would outlast the test's wait).
        mp.setenv(inferline_ray.ANSWER_TIMEOUT_ENV, "10")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=temp,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            inferline_ray.app(
                repo.parent,
                allow_code=True,
                strict=True,  # a model that fails to load fails the deployment, loudly
                num_replicas=2,
                drain_timeout=5.0,
                ray_actor_options={"num_cpus": 0.5},
            ),
            name=APP,
            route_prefix="/",
        )
        yield Cluster(f"127.0.0.1:{port}", repo.parent)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def x_of(i: int) -> np.ndarray:
    return np.full((1, DIM), float(i), dtype=np.float32)


@pytest.mark.asyncio
async def test_v2_rest_through_the_proxy(cluster: Cluster) -> None:
    # The asyncio client: the gevent one fails in __del__ when a Ray thread collects it.
    client = tc_aio.InferenceServerClient(cluster.url)
    try:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready(MODEL)
        assert (await client.get_model_metadata(MODEL))["inputs"][0]["shape"] == [-1, DIM]
        inp = tc_aio.InferInput("x", [3, DIM], "FP32")
        x = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
        inp.set_data_from_numpy(x, binary_data=True)
        result = await client.infer(MODEL, [inp])
        np.testing.assert_allclose(result.as_numpy("y"), 2 * x + 1)
        # inferline's own errors and bodies, unchanged by the proxy
        with pytest.raises(InferenceServerException) as e:
            await client.get_model_metadata("nope")
        assert e.value.status() == "404"
        assert "nope" in e.value.message()
    finally:
        await client.close()


def test_deployment_handle(cluster: Cluster) -> None:
    handle = serve.get_deployment_handle(APP, app_name=APP)
    y = handle.infer.remote(MODEL, np.ones(DIM, dtype=np.float32)).result(timeout_s=30)
    np.testing.assert_allclose(y, np.full(DIM, 3.0))
    rows = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    np.testing.assert_allclose(
        handle.infer_batch.remote(MODEL, rows).result(timeout_s=30), 2 * rows + 1
    )
    # The engine's errors reach the caller as themselves.
    with pytest.raises(InvalidInput, match="shape"):
        handle.infer.remote(MODEL, np.ones(DIM + 1, dtype=np.float32)).result(timeout_s=30)
    stats = handle.record_autoscaling_stats.remote().result(timeout_s=30)
    assert set(stats) == {inferline_ray.IN_FLIGHT, inferline_ray.QUEUE_DEPTH}
    assert all(isinstance(v, float) and v >= 0 for v in stats.values())
    index = handle.models.remote().result(timeout_s=30)
    assert [(r["name"], r["state"]) for r in index] == [(MODEL, "READY")]


async def _load(url: str, stop: asyncio.Event, outcomes: Counter[str], errors: list[str]) -> None:
    """8 callers sending requests until ``stop``; counts answers by outcome, checks values."""
    client = tc_aio.InferenceServerClient(url)

    async def caller(k: int) -> None:
        i = k
        while not stop.is_set():
            inp = tc_aio.InferInput("x", [1, DIM], "FP32")
            inp.set_data_from_numpy(x_of(i), binary_data=True)
            try:
                result = await client.infer(MODEL, [inp])
            except InferenceServerException as e:
                outcomes[str(e.status())] += 1
                if e.status() != "503" or outcomes["503"] <= 3:
                    errors.append(f"{e.status()}: {e.message()}")
            else:
                y = result.as_numpy("y")
                outcomes["ok" if np.array_equal(y, 2 * x_of(i) + 1) else "wrong"] += 1
            i += 8

    try:
        await asyncio.gather(*(caller(k) for k in range(8)))
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_replica_killed_under_load_loses_no_request(cluster: Cluster) -> None:
    handle = serve.get_deployment_handle(APP, app_name=APP)
    victim_name = await handle.replica_actor_name.remote()
    victim = ray.get_actor(victim_name, namespace="serve")
    stop = asyncio.Event()
    outcomes: Counter[str] = Counter()
    errors: list[str] = []
    load = asyncio.ensure_future(_load(cluster.url, stop, outcomes, errors))

    async def until(what: str, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert not load.done(), f"the load stopped: {load.exception()!r}"
            if time.monotonic() > deadline:
                seen = f"{dict(outcomes)} {errors[:3]}"
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {seen}")
            await asyncio.sleep(0.1)

    try:
        await until("answers before the kill", lambda: outcomes["ok"] >= 200)
        ray.kill(victim, no_restart=True)
        killed_at = outcomes["ok"]
        # Serve notices the death and starts a replacement; the load goes on meanwhile.
        await until("answers after the kill", lambda: outcomes["ok"] >= killed_at + 200)
        # back to 2 running replicas, the victim not among them
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread(recovered_without, victim_name):
            assert time.monotonic() < deadline, f"not recovered: {serve.status().applications}"
            await asyncio.sleep(0.5)
        settled = outcomes["ok"]
        await until("answers with 2 replicas again", lambda: outcomes["ok"] >= settled + 100)
    finally:
        stop.set()
        await asyncio.wait_for(load, 30)
    assert [e for e in errors if not e.startswith("503: ")] == [], errors[:5]
    assert outcomes["wrong"] == 0
    assert set(outcomes) <= {"ok", "503"}, outcomes


def recovered_without(victim: str) -> bool:
    """Serve reports the deployment healthy with 2 running replicas, and no replica actor
    of the deployment is named ``victim`` any more."""
    if running_replicas() != 2:
        return False
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    return victim not in names


def test_policy_asks_for_replicas_by_engine_load() -> None:
    config = inferline_ray.autoscaling_config(min_replicas=1, max_replicas=8, target_in_flight=10)
    ctx = _context(config, {inferline_ray.IN_FLIGHT: {"r1": 25.0, "r2": 15.0}})
    assert inferline_ray.engine_load_policy(ctx) == (4.0, {})
    # idle: one replica (min_replicas decides about zero)
    ctx = _context(config, {inferline_ray.IN_FLIGHT: {"r1": 0.0}})
    assert inferline_ray.engine_load_policy(ctx) == (1.0, {})
    # nothing reported yet: the current target stays
    assert inferline_ray.engine_load_policy(_context(config, {})) == (3.0, {})
    with pytest.raises(ValueError, match="target_in_flight must be a positive number"):
        inferline_ray.autoscaling_config(target_in_flight=0)


def _context(config: Any, metrics: dict[str, dict[str, float]]) -> Any:
    return AutoscalingContext(
        deployment_id=None,
        deployment_name=APP,
        app_name=APP,
        current_num_replicas=3,
        target_num_replicas=3,
        running_replicas=[],
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics=None,
        capacity_adjusted_min_replicas=config.min_replicas,
        capacity_adjusted_max_replicas=config.max_replicas,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=None,
        config=config,
    )


def test_build_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['replicas'\]"):
        inferline_ray.build({"repository": str(tmp_path), "replicas": "2"})
    with pytest.raises(ValueError, match="missing argument: repository=PATH"):
        inferline_ray.build({})
    with pytest.raises(ValueError, match="allow_code must be true or false, got 'maybe'"):
        inferline_ray.build({"repository": str(tmp_path), "allow_code": "maybe"})
    with pytest.raises(ValueError, match="num_replicas must be an integer, got 'two'"):
        inferline_ray.build({"repository": str(tmp_path), "num_replicas": "two"})
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        inferline_ray.build({"repository": str(tmp_path / "missing")})
    app = inferline_ray.build(
        {"repository": str(tmp_path), "num_replicas": "3", "allow_code": "true"}
    )
    assert isinstance(app, serve.Application)


def test_importing_inferline_does_not_import_ray() -> None:
    code = "import sys, inferline, inferline.server, inferline.cli; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert out.stdout.strip() == "False"


@pytest.mark.asyncio
async def test_check_health_follows_the_engines_readiness(cluster: Cluster) -> None:
    handle = serve.get_deployment_handle(APP, app_name=APP)
    assert await handle.check_health.remote() is None  # the replicas' engines are ready
    # An engine that has not started (as while a replica loads): check_health raises, saying why.
    # (The method on a plain holder of its two fields: Serve's ingress class is built by Serve.)
    replica = types.SimpleNamespace(_engine=Engine(), _strict=False)
    with pytest.raises(ModelNotReady, match="inferline engine not ready: the engine is created"):
        await inferline_ray.InferlineReplica.check_health(replica)


def test_autoscaling_deployment_serves(cluster: Cluster) -> None:
    # A second application in the same cluster, scaled by engine_load_policy: Serve accepts
    # the policy, the replica serves, and the app is removed again.
    application = inferline_ray.app(
        cluster.repository,
        allow_code=True,
        strict=True,
        name="scaled",
        autoscaling=inferline_ray.autoscaling_config(min_replicas=1, max_replicas=2),
        ray_actor_options={"num_cpus": 0.25},
    )
    handle = serve.run(application, name="scaled", route_prefix="/scaled")
    try:
        y = handle.infer.remote(MODEL, np.zeros(DIM, dtype=np.float32)).result(timeout_s=60)
        np.testing.assert_allclose(y, np.ones(DIM))
        status = serve.status().applications["scaled"]
        assert status.status == "RUNNING", status
        assert status.deployments["scaled"].status == "HEALTHY", status
    finally:
        serve.delete("scaled")


async def _through_middleware(
    app: Any, answer_timeout_s: float | None = 120.0
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer", "headers": []}
    middleware = inferline_ray.ReplicaLossAsUnavailable(app, answer_timeout_s=answer_timeout_s)
    await middleware(scope, receive, send)
    return sent


@pytest.mark.asyncio
async def test_proxy_middleware_answers_a_missing_response_with_503() -> None:
    async def replica_died(scope: Any, receive: Any, send: Any) -> None:
        return None  # what Ray's proxy does when the replica died before answering

    start, body = await _through_middleware(replica_died)
    assert start["status"] == 503
    assert (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"]) == {
        "error": "the replica serving /v2/models/m/infer stopped before answering; "
        "retry the request"
    }

    async def answered(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    # A response the replica started is forwarded as it is, even an error.
    sent = await _through_middleware(answered)
    assert [m.get("status") for m in sent] == [500, None]
    assert len(inferline_ray.proxy_middlewares()) == 1


@pytest.mark.asyncio
async def test_proxy_middleware_bounds_the_wait_for_an_answer() -> None:
    # What Ray's router does to a request it loses while re-routing from a dead replica:
    # nothing, forever. The middleware cancels it and answers 503 once the bound is past.
    cancelled = asyncio.Event()

    async def lost(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    start, body = await _through_middleware(lost, answer_timeout_s=0.05)
    assert cancelled.is_set()
    assert start["status"] == 503
    assert (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"]) == {
        "error": "no replica answered /v2/models/m/infer within 0.05s; retry the request"
    }

    # The bound is on the start of the answer: a response that starts in time and finishes
    # well after the bound is forwarded whole.
    async def slow_body(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        finished = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, finished.set)
        await finished.wait()
        await send({"type": "http.response.body", "body": b"late"})

    sent = await _through_middleware(slow_body, answer_timeout_s=0.05)
    assert [m.get("status") or m.get("body") for m in sent] == [200, b"late"]


def test_proxy_middleware_timeout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def configured() -> Any:
        (middleware,) = inferline_ray.proxy_middlewares()
        return middleware.kwargs["answer_timeout_s"]

    monkeypatch.delenv(inferline_ray.ANSWER_TIMEOUT_ENV, raising=False)
    assert configured() == 120.0
    monkeypatch.setenv(inferline_ray.ANSWER_TIMEOUT_ENV, "2.5")
    assert configured() == 2.5
    monkeypatch.setenv(inferline_ray.ANSWER_TIMEOUT_ENV, "0")
    assert configured() is None  # no bound
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(inferline_ray.ANSWER_TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=inferline_ray.ANSWER_TIMEOUT_ENV):
            inferline_ray.proxy_middlewares()
    with pytest.raises(ValueError, match="answer_timeout_s must be a positive number"):
        inferline_ray.ReplicaLossAsUnavailable(lambda *a: None, answer_timeout_s=0)
