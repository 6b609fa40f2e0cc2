"""Registry and repository lifecycle: versions, aliases, load/unload, hot swap, bounds, cache."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from python_models import python_model_toml

import inferline
from inferline import Batching, TensorSpec

ROOT = Path(__file__).resolve().parents[2]
X = [TensorSpec("x", "FP32", (4,))]
Y = [TensorSpec("y", "FP32", (4,))]


def load_example_builder() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_repository", ROOT / "examples" / "make_repository.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def py_toml(extra: str) -> str:
    return python_model_toml(
        batching="max_batch_size = 8\nmax_queue_delay_ms = 1.0", warmup="[1, 8]", extra=extra
    )


def write_python_model(
    repo: Path, name: str, version: int, factor: float, extra: str = "", body: str | None = None
) -> None:
    d = repo / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.toml").write_text(py_toml(extra))
    v = d / str(version)
    v.mkdir(exist_ok=True)
    code = body or (
        f"import numpy as np\ndef predict(x):\n    return (x * {factor}).astype(np.float32)\n"
    )
    (v / "model.py").write_text(code)


def item(value: float) -> np.ndarray:
    return np.full(4, value, np.float32)


@pytest.mark.asyncio
async def test_versions_aliases_and_default_policy() -> None:
    engine = inferline.Engine()
    for n in (1, 2, 3):
        engine.register("m", lambda b, n=n: b * n, inputs=X, outputs=Y, version=n, warmup=False)
    async with engine:
        np.testing.assert_array_equal(await engine.infer("m", item(1)), item(3))  # latest
        np.testing.assert_array_equal(await engine.infer("m", item(1), version=1), item(1))
        np.testing.assert_array_equal(await engine.infer("m", item(1), version="2"), item(2))
        engine.set_alias("m", "stable", 1)
        engine.set_alias("m", "canary", 3)
        np.testing.assert_array_equal(await engine.infer("m", item(1), version="stable"), item(1))
        engine.set_alias("m", "stable", 2)  # moved at run time
        np.testing.assert_array_equal(await engine.infer("m", item(1), version="stable"), item(2))
        engine.set_default("m", "stable")
        np.testing.assert_array_equal(await engine.infer("m", item(1)), item(2))
        engine.set_alias("m", "stable", 1)  # the default follows its alias
        np.testing.assert_array_equal(await engine.infer("m", item(1)), item(1))
        engine.set_default("m", "latest")
        np.testing.assert_array_equal(await engine.infer("m", item(1)), item(3))
        infos = {i.version: i for i in engine.models()}
        assert infos[1].aliases == {"stable": 1} and infos[3].aliases == {"canary": 3}
        assert infos[3].default and not infos[1].default
        assert all(i.state == "ready" for i in infos.values())
        with pytest.raises(inferline.ModelNotFound, match="no version or alias 'beta'"):
            await engine.infer("m", item(1), version="beta")
        with pytest.raises(inferline.ModelNotFound, match="has no version 7"):
            await engine.infer("m", item(1), version=7)
        with pytest.raises(inferline.ModelNotFound, match="has no version 9"):
            engine.set_alias("m", "x", 9)
        with pytest.raises(ValueError, match="alias must be a non-numeric name"):
            engine.set_alias("m", "12", 1)
        engine.remove_alias("m", "canary")
        with pytest.raises(inferline.ModelNotFound, match="no alias 'canary'"):
            engine.remove_alias("m", "canary")
        await engine.unload("m", 3)
        np.testing.assert_array_equal(await engine.infer("m", item(1)), item(2))
        assert sorted(i.version for i in engine.models()) == [1, 2]


@pytest.mark.asyncio
async def test_repository_loads_and_isolates_failures(tmp_path: Path) -> None:
    repo = load_example_builder().build_repository(tmp_path / "repo")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "model.toml").write_text(
        'backend = "onnx"\n[batching]\nmax_batch_size = -3\n'
    )
    # A checksum mismatch fails that model only.
    bad = repo / "badsum"
    shutil.copytree(repo / "scaler", bad)
    (bad / "1" / "model.py").write_text((bad / "1" / "model.py").read_text() + "\n# changed\n")
    engine = inferline.Engine.from_repository(repo, allow_code=True)
    async with engine:
        names = {i.name for i in engine.models() if i.state == "ready"}
        assert {"classifier", "classifier_fixed", "scaler"} <= names
        index = {(r["name"], r["version"]): r for r in engine.repository_index()}
        assert index[("broken", "")]["state"] == "UNAVAILABLE"
        assert "batching.max_batch_size" in index[("broken", "")]["reason"]
        assert "sha256" in index[("badsum", "")]["reason"]
        with pytest.raises(inferline.ModelNotReady, match=r"batching\.max_batch_size: expected"):
            await engine.infer("broken", item(1))
        with pytest.raises(inferline.ModelNotReady, match="sha256"):
            await engine.infer("badsum", np.zeros(8, np.float32))
        y = await engine.infer("scaler", np.ones(8, np.float32))
        np.testing.assert_allclose(y, np.full(8, 3.0, np.float32))
        probs = await engine.infer("classifier", np.zeros(16, np.float32))
        assert probs.shape == (4,) and abs(float(probs.sum()) - 1) < 1e-4
        fixed = engine.model_info("classifier_fixed")
        assert fixed.max_batch_size == 1 and any("fixed batch" in n for n in fixed.notes)
        assert not engine.ready  # a model failed: readiness says so


@pytest.mark.asyncio
async def test_hot_swap_under_load_fails_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", 1, 1.0)
    engine = inferline.Engine.from_repository(repo, allow_code=True)
    answers: list[tuple[bool, float]] = []  # (sent after the swap completed, answer)
    failures: list[BaseException] = []
    swapped = [False]
    stop = asyncio.Event()

    async def client(k: int) -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            after_swap = swapped[0]
            try:
                y = await engine.infer("m", item(1.0))
                answers.append((after_swap, float(y[0])))
            except Exception as exc:  # any failure breaks the swap's promise
                failures.append(exc)
            i += 1

    async with engine:
        clients = [asyncio.ensure_future(client(k)) for k in range(16)]
        deadline = time.monotonic() + 30
        while len(answers) < 100 and not failures:  # traffic on version 1 before the swap
            assert time.monotonic() < deadline, "no answers from version 1"
            await asyncio.sleep(0.01)
        write_python_model(repo, "m", 2, 2.0)
        info = await engine.load("m")
        swapped[0] = True
        assert info.version == 2 and info.state == "ready"
        while sum(after for after, _ in answers) < 100 and not failures:  # and after it
            assert time.monotonic() < deadline, "no answers after the swap"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*clients)
        while [i.version for i in engine.models()] != [2]:  # the old version drains, unloads
            assert time.monotonic() < deadline, engine.models()
            await asyncio.sleep(0.02)
        versions = [i.version for i in engine.models()]
    assert not failures
    values = {a for _, a in answers}
    assert values == {1.0, 2.0}
    # Requests sent after the swap completed answer from the new version only.
    after = [a for sent_after, a in answers if sent_after]
    assert after and set(after) == {2.0}
    assert versions == [2]


@pytest.mark.asyncio
async def test_failed_new_version_rolls_back(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", 1, 1.0)
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        write_python_model(
            repo, "m", 2, 0, body="def predict(x):\n    raise RuntimeError('bad weights')\n"
        )
        with pytest.raises(inferline.ModelError, match=r"version 2: warm-up failed: .*bad weights"):
            await engine.load("m")
        np.testing.assert_array_equal(await engine.infer("m", item(2)), item(2))
        assert engine.model_info("m").version == 1
        index = {(r["name"], r["version"]): r for r in engine.repository_index()}
        assert index[("m", "2")]["state"] == "UNAVAILABLE"
        assert "bad weights" in index[("m", "2")]["reason"]
        with pytest.raises(inferline.ModelNotFound, match="no model 'nope'"):
            await engine.load("nope")
        with pytest.raises(inferline.ModelNotFound, match=r"no model '\.\./m'"):
            await engine.load("../m")


@pytest.mark.asyncio
async def test_watch_picks_up_new_versions_and_removed_models(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", 1, 1.0)
    write_python_model(repo, "gone", 1, 1.0)
    engine = inferline.Engine.from_repository(repo, watch=True, poll_interval=0.05, allow_code=True)
    async with engine:
        np.testing.assert_array_equal(await engine.infer("m", item(1)), item(1))
        write_python_model(repo, "m", 2, 3.0)
        shutil.rmtree(repo / "gone")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = {(i.name, i.version) for i in engine.models()}
            if names == {("m", 2)}:
                break
            await asyncio.sleep(0.05)
        np.testing.assert_array_equal(await engine.infer("m", item(1)), item(3))
        with pytest.raises(inferline.ModelNotFound):
            await engine.infer("gone", item(1))


def resident_bytes() -> int:
    """This process's current resident set (not the lifetime peak that ru_maxrss reports)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.asyncio
async def test_flood_keeps_memory_bounded_and_answers_everything() -> None:
    dim = 16384  # 64 KiB items
    gate = threading.Event()
    entered = threading.Event()

    def slow(b: np.ndarray) -> np.ndarray:
        entered.set()
        gate.wait(30)
        return b[:, :1].copy()

    engine = inferline.Engine()
    engine.register(
        "slow",
        slow,
        inputs=[TensorSpec("x", "FP32", (dim,))],
        outputs=[TensorSpec("y", "FP32", (1,))],
        batching=Batching(
            max_batch_size=8, max_queue_size=10_000, max_queue_bytes=64 * 65536
        ),  # 64 items of 64 KiB
        warmup=False,
    )
    x = np.ones(dim, np.float32)
    async with engine:
        blocker = asyncio.ensure_future(engine.infer("slow", x))
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        rss_before = resident_bytes()
        # 3200 items at once while the only worker is held: unbounded, 200 MiB would queue.
        flood = [asyncio.ensure_future(engine.infer("slow", x)) for _ in range(3200)]
        deadline = time.monotonic() + 30
        while sum(f.done() for f in flood) < 3200 - 64:
            assert time.monotonic() < deadline, engine.stats("slow")
            await asyncio.sleep(0.01)
        rss_full = resident_bytes()
        queued = engine.stats("slow")["queue_depth"]
        gate.set()
        results = await asyncio.gather(blocker, *flood, return_exceptions=True)
        stats = engine.stats("slow")
    ok = [r for r in results if isinstance(r, np.ndarray)]
    full = [r for r in results if isinstance(r, inferline.QueueFullError)]
    assert queued == 64
    assert len(ok) == 1 + 64 and len(full) == 3200 - 64
    assert "queue is full (64 requests waiting)" in str(full[0])
    assert stats["in_flight"] == 0
    assert rss_full - rss_before < 50 * 1024 * 1024, (rss_before, rss_full)


def test_max_item_bytes_refuses_at_registration() -> None:
    engine = inferline.Engine()
    with pytest.raises(
        ValueError, match=r"one item is 16 bytes, more than Batching\.max_item_bytes=8"
    ):
        engine.register("m", lambda b: b, inputs=X, batching=Batching(max_item_bytes=8))


@pytest.mark.asyncio
async def test_result_cache_hits_and_never_serves_an_old_version(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "m", 1, 1.0, extra="[cache]\nmax_entries = 4\nmax_bytes = 4096\n")
    calls_before = 0
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        (v1,) = [v for v in engine.live_versions() if (v.name, v.version) == ("m", 1)]
        assert v1.cache_stats is not None
        calls_before = engine.stats("m")["items_computed"]
        a = await engine.infer("m", item(5))
        b = await engine.infer("m", item(5))
        b[0] = 99  # a caller mutating its answer cannot poison the cache
        c = await engine.infer("m", item(5))
        np.testing.assert_array_equal(a, item(5))
        np.testing.assert_array_equal(c, item(5))
        assert engine.stats("m")["items_computed"] - calls_before == 1
        assert v1.cache_stats["hits"] == 2 and v1.cache_stats["misses"] == 1
        for i in range(10):  # bounded by entries
            await engine.infer("m", item(100 + i))
        assert v1.cache_stats["entries"] <= 4
        write_python_model(repo, "m", 2, 10.0, extra="[cache]\nmax_entries = 4\nmax_bytes = 4096\n")
        await engine.load("m")
        np.testing.assert_array_equal(await engine.infer("m", item(5)), item(50))


@pytest.mark.asyncio
async def test_probability_output_check_names_the_check(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(
        repo,
        "p",
        1,
        0,
        extra='[output_checks]\nprobabilities = ["y"]\nprobabilities_tolerance = 1e-3\n',
        body="import numpy as np\ndef predict(x):\n    return np.full_like(x, 0.25)\n",
    )
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        y = await engine.infer("p", item(0))
        np.testing.assert_allclose(y.sum(), 1.0)
    write_python_model(
        repo,
        "p",
        1,
        0,
        extra='[output_checks]\nprobabilities = ["y"]\n',
        body="import numpy as np\ndef predict(x):\n    out = np.full_like(x, 0.25)\n"
        "    out[x[:, 0] > 1] = 0.5\n    return out\n",
    )
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        with pytest.raises(
            inferline.ModelError,
            match=r"output check 'probabilities' failed: output 'y' row 0 sums to 2",
        ):
            await engine.infer("p", item(5))
        np.testing.assert_allclose(await engine.infer("p", item(0)), np.full(4, 0.25))


@pytest.mark.asyncio
async def test_request_trace_logs_stage_timestamps(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="inferline.requests")
    engine = inferline.Engine()
    engine.register("m", lambda b: b, inputs=X, outputs=Y, warmup=False)
    async with engine:
        await asyncio.gather(*(engine.infer("m", item(i)) for i in range(3)))
    records = [r for r in caplog.records if r.name == "inferline.requests"]
    assert len(records) == 3
    msg = records[0].getMessage()
    for field in (
        "model=m",
        "outcome=success",
        "enqueue=",
        "batch_formed=",
        "compute_start=",
        "compute_end=",
        "answered=",
    ):
        assert field in msg
    assert {r.request_id for r in records} == {1, 2, 3}  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_native_model_from_repository_matches_onnx(tmp_path: Path) -> None:
    repo = load_example_builder().build_repository(tmp_path / "repo")
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        info = engine.model_info("classifier_native")
        assert info.state == "ready" and info.platform == "inferline_native"
        rng = np.random.default_rng(3)
        xs = [rng.standard_normal(16).astype(np.float32) for _ in range(64)]
        native = await asyncio.gather(*(engine.infer("classifier_native", x) for x in xs))
        onnx = await asyncio.gather(*(engine.infer("classifier", x, version=1) for x in xs))
        stats = engine.stats("classifier_native")
    for a, b in zip(native, onnx, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Every item computed once (work-conserving: how they were grouped depends on timing).
    assert stats["requests"]["success"] >= 64
    assert stats["batch_size"]["sum"] == stats["requests"]["success"]


@pytest.mark.asyncio
async def test_native_model_with_bad_weights_fails_alone(tmp_path: Path) -> None:
    repo = load_example_builder().build_repository(tmp_path / "repo")
    toml = repo / "classifier_native" / "model.toml"
    text = toml.read_text().replace('weight = "W2"', 'weight = "W9"')
    toml.write_text(text.split("[artifacts]")[0])
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        with pytest.raises(inferline.ModelNotReady, match="W9"):
            await engine.infer("classifier_native", np.zeros(16, np.float32))
        assert engine.model_info("classifier").state == "ready"


@pytest.mark.asyncio
async def test_native_model_finite_output_check_fails_its_batch(tmp_path: Path) -> None:
    repo = load_example_builder().build_repository(tmp_path / "repo")
    toml = repo / "classifier_native" / "model.toml"
    text = toml.read_text().replace('name = "probs"', 'name = "probs"\nfinite = true')
    toml.write_text(text)
    async with inferline.Engine.from_repository(repo, allow_code=True) as engine:
        bad = np.full(16, np.nan, np.float32)
        with pytest.raises(
            inferline.ModelError, match=r"output 'probs' contains NaN or Inf \(finite check\)"
        ):
            await engine.infer("classifier_native", bad)
        ok = await engine.infer("classifier_native", np.zeros(16, np.float32))
        assert np.isfinite(ok).all()
        stats = engine.stats("classifier_native")
    assert stats["requests"]["model_error"] == 1
    assert stats["in_flight"] == 0
