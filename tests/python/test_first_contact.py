"""First contact: failure reasons where the caller looks, strict start-up and readiness,
--watch reloading an edited model.toml, `inferline models`, 405 and not-loaded answers, and one
invalid priority through every route."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

import inferline
from inferline import Batching, TensorSpec
from inferline.cli import main
from inferline.server import create_app

X = [TensorSpec("x", "FP32", (4,))]
Y = [TensorSpec("y", "FP32", (4,))]

TOML = """backend = "python"
inputs = [{{name = "x", datatype = "FP32", shape = [4]}}]
outputs = [{{name = "y", datatype = "FP32", shape = [4]}}]
batching = {{max_batch_size = {mbs}}}
warmup = {{batch_sizes = [1]}}
python = {{allow_code = true}}
"""

CODE = "import numpy as np\ndef predict(x):\n    return (x * 2).astype(np.float32)\n"


def write_model(repo: Path, name: str, mbs: int = 4) -> None:
    (repo / name / "1").mkdir(parents=True, exist_ok=True)
    (repo / name / "model.toml").write_text(TOML.format(mbs=mbs))
    (repo / name / "1" / "model.py").write_text(CODE)


def broken(b: np.ndarray) -> np.ndarray:
    raise ValueError("weights missing")


async def wait_until(cond: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def client(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_model_not_ready_carries_the_warmup_reason_and_readiness_can_ignore_it() -> None:
    engine = inferline.Engine()
    assert not engine.strict
    engine.register("bad", broken, inputs=X, outputs=Y)
    engine.register("good", lambda b: b, inputs=X, outputs=Y)
    async with engine:
        with pytest.raises(
            inferline.ModelNotReady,
            match=r"model 'bad' has no ready version; version 1 failed: warm-up failed: "
            r"ValueError: weights missing",
        ):
            await engine.infer("bad", np.ones(4, np.float32))
        assert not engine.ready
        assert "weights missing" in (engine.readiness() or "")
        assert engine.readiness(require_all=False) is None  # only the models that loaded
        app = create_app(engine, manage_engine=False)
        async with client(app) as c:
            r = await c.get("/v2/health/ready")
            assert r.status_code == 200
            r = await c.post("/v2/models/bad/infer", json={"inputs": []})
            assert (
                r.status_code == 503
                and "warm-up failed: ValueError: weights missing" in r.json()["error"]
            )
            r = await c.get("/v2/models/bad/ready")
            assert r.status_code == 400 and "weights missing" in r.json()["error"]
        strict_app = create_app(engine, manage_engine=False, strict_readiness=True)
        async with client(strict_app) as c:
            r = await c.get("/v2/health/ready")
            assert r.status_code == 400
            assert (
                "version 1 failed: warm-up failed: ValueError: weights missing" in r.json()["error"]
            )


@pytest.mark.asyncio
async def test_strict_start_up_raises_with_the_reason_and_stops() -> None:
    engine = inferline.Engine(strict=True)
    engine.register("bad", broken, inputs=X, outputs=Y)
    engine.register("good", lambda b: b, inputs=X, outputs=Y)
    with pytest.raises(
        inferline.ModelNotReady,
        match=r"strict start-up: .*warm-up failed: ValueError: weights missing",
    ):
        await engine.start()
    assert engine.state == "stopped"


@pytest.mark.asyncio
async def test_405_names_the_method_and_unloaded_model_is_503_not_loaded(tmp_path: Path) -> None:
    write_model(tmp_path, "scaler")
    engine = inferline.Engine.from_repository(tmp_path, allow_code=True)
    async with engine:
        app = create_app(engine, manage_engine=False)
        async with client(app) as c:
            r = await c.get("/v2/repository/index")
            assert r.status_code == 405 and r.headers["allow"] == "POST"
            assert r.json()["error"] == (
                "method GET is not allowed on /v2/repository/index; use POST"
            )
            assert (await c.post("/v2/repository/models/scaler/unload")).status_code == 200
            (row,) = (await c.post("/v2/repository/index")).json()
            assert row["state"] == "UNAVAILABLE"
            body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
            r = await c.post("/v2/models/scaler/infer", json=body)
            assert r.status_code == 503
            assert r.json()["error"].startswith("model 'scaler' is not loaded")
            r = await c.post("/v2/models/nope/infer", json=body)
            assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"]
        with pytest.raises(inferline.ModelNotReady, match="model 'scaler' is not loaded"):
            await engine.infer("scaler", np.ones(4, np.float32))


@pytest.mark.asyncio
async def test_watch_reloads_an_edited_model_toml_and_keeps_serving_on_a_broken_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="inferline")
    write_model(tmp_path, "m", mbs=4)
    engine = inferline.Engine.from_repository(
        tmp_path, allow_code=True, watch=True, poll_interval=0.05
    )
    failed: list[BaseException] = []
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                y = await engine.infer("m", np.ones(4, np.float32))
                assert float(y[0]) == 2.0
            except Exception as exc:  # every request must succeed across the swap
                failed.append(exc)

    async with engine:
        assert engine.model_info("m").max_batch_size == 4
        assert "max_batch_size=4, " in caplog.text and "policy=work_conserving (default)" in (
            caplog.text
        )
        callers = [asyncio.create_task(load()) for _ in range(8)]
        (tmp_path / "m" / "model.toml").write_text(TOML.format(mbs=16))
        await wait_until(lambda: engine.model_info("m").max_batch_size == 16, "the reload")
        assert "model m: model.toml change applied" in caplog.text
        # A broken edit: logged, shown in the index, the old config keeps serving.
        (tmp_path / "m" / "model.toml").write_text(TOML.format(mbs=-3))
        await wait_until(lambda: "edit rejected" in caplog.text, "the rejection")
        (row,) = engine.repository_index()
        assert row["state"] == "READY" and "batching.max_batch_size" in row["reason"]
        assert engine.model_info("m").max_batch_size == 16
        # An invalid model.toml dropped into the repository is logged.
        (tmp_path / "new").mkdir()
        (tmp_path / "new" / "model.toml").write_text("backend = [")
        await wait_until(lambda: "model new not loaded" in caplog.text, "the new model's log")
        stop.set()
        await asyncio.gather(*callers)
    assert failed == []


def test_models_command_lists_states_and_fails_on_a_broken_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_model(tmp_path, "ok")
    assert main(["models", str(tmp_path), "--allow-code"]) == 0
    assert capsys.readouterr().out == "ok v1 READY\n"
    write_model(tmp_path, "bad")
    (tmp_path / "bad" / "model.toml").write_text(TOML.format(mbs=0))
    assert main(["serve", str(tmp_path), "--list", "--allow-code"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("bad UNAVAILABLE: ") and "batching.max_batch_size" in out[0]
    assert out[1] == "ok v1 READY"


async def _priority_errors(engine: inferline.Engine, name: str) -> dict[str, str]:
    """The same invalid priority through each route; the message each one answers."""
    got: dict[str, str] = {}
    x = np.ones(4, np.float32)
    for route, call in (
        ("infer", lambda: engine.infer(name, x, priority=5)),
        ("infer_batch", lambda: engine.infer_batch(name, x[None], priority=5)),
    ):
        with pytest.raises(inferline.InvalidInput) as info:
            await call()
        got[route] = str(info.value)
    app = create_app(engine, manage_engine=False)
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}],
        "parameters": {"priority": 6},
    }
    async with client(app) as c:
        r = await c.post(f"/v2/models/{name}/infer", json=body)
        assert r.status_code == 400
        got["http_json"] = r.json()["error"]
        header = (
            b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],'
            b'"parameters":{"binary_data_size":16}}],"parameters":{"priority":6}}'
        )
        r = await c.post(
            f"/v2/models/{name}/infer",
            content=header + x.tobytes(),
            headers={"inference-header-content-length": str(len(header))},
        )
        assert r.status_code == 400
        got["http_binary"] = r.json()["error"]
    return got


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "cached",
    [False, True],
    ids=["uncached", "cached"],
)
async def test_an_invalid_priority_is_refused_on_every_route_in_its_own_terms(
    tmp_path: Path, cached: bool
) -> None:
    engine = inferline.Engine()
    engine.register(
        "m",
        lambda b: b * 2,
        inputs=X,
        outputs=Y,
        batching=Batching(priority_levels=2),
        cache=(64, 1 << 20) if cached else None,
    )
    async with engine:
        if cached:  # the answer is in the cache before the invalid requests come
            await engine.infer("m", np.ones(4, np.float32))
        got = await _priority_errors(engine, "m")
    # Python speaks 0 (highest) .. levels-1; HTTP speaks Triton's 1 (highest) .. levels, 0 default
    for route in ("infer", "infer_batch"):
        assert "priority" in got[route] and "5" in got[route] and "0..1" in got[route], got
    for route in ("http_json", "http_binary"):
        assert got[route] == (
            "parameter 'priority' is 6; model 'm' has 2 priority level(s): give 1 (the highest) "
            "to 2, or 0 for the default"
        )
