"""Running a repository's model.py needs two keys: the repository's ``[python] allow_code``
and the operator's (``Engine.from_repository(..., allow_code=True)``, ``inferline serve
--allow-code``). Unloading the model removes its module; the repository routes can be off.

Every server here is started by the test on 127.0.0.1 and stopped by it.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from python_models import python_model_toml
from test_server import ServerThread

import inferline
from inferline.cli import main as cli_main
from inferline.server import create_app

TOML = python_model_toml(batching="max_batch_size = 4")

# The model records that its code ran (a file beside it), so a test can tell that a refused
# load executed nothing.
CODE = """from pathlib import Path
Path(__file__).with_name("ran").write_text("yes")
def predict(x):
    return x * 2
"""


def make_repo(root: Path) -> Path:
    d = root / "repo" / "doubler"
    (d / "1").mkdir(parents=True)
    (d / "model.toml").write_text(TOML)
    (d / "1" / "model.py").write_text(CODE)
    return root / "repo"


def ran(repo: Path) -> bool:
    return (repo / "doubler" / "1" / "ran").exists()


def model_modules() -> set[str]:
    return {m for m in sys.modules if m.startswith("inferline_model_doubler_")}


@pytest.mark.asyncio
async def test_without_the_operators_key_model_py_does_not_run(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    async with inferline.Engine.from_repository(repo) as engine:
        assert not engine.ready
        (row,) = [r for r in engine.repository_index() if r["name"] == "doubler"]
        assert row["state"] == "UNAVAILABLE"
        assert "[python] allow_code = true in model.toml" in row["reason"]
        assert "`inferline serve --allow-code`" in row["reason"]
        assert "the operator's opt-in was not given" in row["reason"]
        with pytest.raises(inferline.ModelNotReady, match="operator's opt-in was not given"):
            await engine.infer("doubler", np.zeros(4, np.float32))
        # The load route goes through the same gate: still refused, still nothing ran.
        with pytest.raises(inferline.ModelError, match="operator's opt-in was not given"):
            await engine.load("doubler")
    assert not ran(repo)


@pytest.mark.asyncio
async def test_with_both_keys_it_serves_and_unload_removes_the_module(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    before = model_modules()
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        y = await engine.infer("doubler", np.ones(4, np.float32))
        np.testing.assert_array_equal(y, np.full(4, 2, np.float32))
        assert ran(repo)
        loaded = model_modules() - before
        assert len(loaded) == 1
        await engine.unload("doubler")
        with pytest.raises(inferline.ModelNotReady, match="is not loaded"):
            await engine.infer("doubler", np.ones(4, np.float32))
        # The module leaves sys.modules once the engine has let go of the model.
        deadline = time.monotonic() + 20
        while loaded & set(sys.modules):
            assert time.monotonic() < deadline, "the unloaded model's module is still loaded"
            gc.collect()
            await asyncio.sleep(0.01)
    assert model_modules() == before


def test_http_load_refused_without_the_operators_key(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    app = create_app(inferline.Engine.from_repository(repo))
    with ServerThread(app) as s:
        r = httpx.post(f"{s.base}/v2/repository/models/doubler/load", timeout=30)
        assert r.status_code == 400
        assert "operator's opt-in was not given" in r.json()["error"]
        assert "`inferline serve --allow-code`" in r.json()["error"]
    assert not ran(repo)


def test_repository_routes_can_be_turned_off(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    engine = inferline.Engine.from_repository(repo, allow_code=True)
    with ServerThread(create_app(engine, repository_api=False)) as s:
        for action in ("load", "unload"):
            r = httpx.post(f"{s.base}/v2/repository/models/doubler/{action}", timeout=30)
            assert r.status_code == 403
            assert r.json()["error"] == (
                f"repository {action} is turned off on this server (--no-repository-api); "
                "the operator loads and unloads models"
            )
        # The index (read-only) and inference still work.
        r = httpx.post(f"{s.base}/v2/repository/index", timeout=30)
        assert r.status_code == 200 and r.json()[0]["state"] == "READY"
        doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]}
        r = httpx.post(f"{s.base}/v2/models/doubler/infer", json=doc, timeout=30)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0] * 4


def test_cli_names_both_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--allow-code" in out and "--no-repository-api" in out
