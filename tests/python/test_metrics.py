"""Prometheus export: real traffic through a real engine, the exposition checked against stats."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import inferline
from inferline import Batching, TensorSpec, metrics

DIM = 4
X = [TensorSpec("x", "FP32", (DIM,))]
Y = [TensorSpec("y", "FP32", (DIM,))]
LATENCY = {
    "queue_wait": "inferline_queue_wait_seconds",
    "compute": "inferline_compute_seconds",
    "request": "inferline_request_seconds",
}


class Gated:
    """A batch model that can be held inside its call; raises on rows marked ``fail_on``."""

    def __init__(self, scale: float = 2.0, fail_on: float | None = None) -> None:
        self.scale = scale
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        if self.fail_on is not None and (batch[:, 0] == self.fail_on).any():
            raise RuntimeError("unlucky row")
        return batch * self.scale


def item(marker: float) -> np.ndarray:
    return np.full(DIM, marker, dtype=np.float32)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def scrape(engine: inferline.Engine) -> dict[str, Any]:
    """Parses ``render(engine)``: family name -> parsed family."""
    text = metrics.render(engine).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(
    families: dict[str, Any], family: str, suffix: str = "", **labels: str
) -> list[tuple[dict[str, str], float]]:
    name = family + suffix
    return [
        (s.labels, s.value)
        for s in families[family].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(families: dict[str, Any], family: str, suffix: str = "", **labels: str) -> float:
    found = samples(families, family, suffix, **labels)
    assert len(found) == 1, f"{family}{suffix}{labels}: {found}"
    return found[0][1]


def histogram(
    families: dict[str, Any], family: str, model: str, version: str
) -> tuple[list[tuple[float, float]], float, float]:
    """(le, cumulative count) in exposition order, _count and _sum; checks the invariants."""
    buckets = [
        (float(lab["le"]), v)
        for lab, v in samples(families, family, "_bucket", model=model, version=version)
    ]
    count = value(families, family, "_count", model=model, version=version)
    total = value(families, family, "_sum", model=model, version=version)
    les = [le for le, _ in buckets]
    assert les == sorted(les) and les[-1] == math.inf, les
    counts = [c for _, c in buckets]
    assert counts == sorted(counts), f"{family} buckets not cumulative: {buckets}"
    assert counts[-1] == count, f"{family}: +Inf {counts[-1]} != _count {count}"
    # Each observation lies in its bucket's (previous le, le], so _sum does too, summed.
    lower = upper = 0.0
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        lower += (c - prev_c) * prev_le
        upper += (c - prev_c) * le if c > prev_c else 0.0
        prev_le, prev_c = le, c
    assert lower * (1 - 1e-9) <= total <= upper * (1 + 1e-9), (family, lower, total, upper)
    return buckets, count, total


async def hold(engine: inferline.Engine, model: Gated, version: int) -> asyncio.Future[Any]:
    """Blocks the version's single worker inside the model; returns that request."""
    model.gate.clear()
    model.entered.clear()
    blocker = asyncio.ensure_future(engine.infer("m", item(-1.0), version=version))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 10)
    return blocker


def two_version_engine(v1: Gated, v2: Gated) -> inferline.Engine:
    engine = inferline.Engine()
    engine.register(
        "m",
        v1,
        inputs=X,
        outputs=Y,
        version=1,
        warmup=False,
        batching=Batching(max_batch_size=4, max_queue_delay_ms=1.0, max_queue_size=3),
    )
    engine.register(
        "m",
        v2,
        inputs=X,
        outputs=Y,
        version=2,
        warmup=[1, 2],
        batching=Batching(max_batch_size=48, max_queue_delay_ms=1.0),
    )
    return engine


@pytest.mark.asyncio
async def test_exposition_matches_stats_for_every_outcome_and_version() -> None:
    v1, v2 = Gated(2.0, fail_on=13), Gated(3.0)
    async with two_version_engine(v1, v2) as engine:
        # v1: a queue_full (worker held, queue of 3 full), a model_error, a deadline.
        blocker = await hold(engine, v1, version=1)
        waiting = [asyncio.ensure_future(engine.infer("m", item(i), version=1)) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(inferline.QueueFullError, match=r"queue is full \(3 requests"):
            await engine.infer("m", item(99), version=1)
        families = scrape(engine)
        assert value(families, "inferline_in_flight", model="m", version="1") == 4
        assert value(families, "inferline_queue_depth", model="m", version="1") == 3
        assert value(families, "inferline_in_flight", model="m", version="2") == 0
        v1.gate.set()
        await asyncio.gather(blocker, *waiting)
        with pytest.raises(inferline.ModelError, match="model 'm' failed: RuntimeError: unlucky"):
            await engine.infer("m", item(13), version=1)
        # v2: 200 concurrent requests, so batches of several sizes form.
        ys = await asyncio.gather(*(engine.infer("m", item(i), version=2) for i in range(200)))
        np.testing.assert_array_equal(ys[7], item(7) * 3.0)
        families = scrape(engine)
        stats = {v: engine.stats("m", v) for v in (1, 2)}

    assert stats[1]["requests"]["queue_full"] == 1
    assert stats[1]["requests"]["model_error"] == 1
    assert stats[1]["requests"]["success"] == 4
    assert stats[2]["requests"]["success"] == 200
    for version, s in stats.items():
        labels = {"model": "m", "version": str(version)}
        by_outcome = {
            lab["outcome"]: v
            for lab, v in samples(families, "inferline_requests", "_total", **labels)
        }
        assert by_outcome == {k: float(n) for k, n in s["requests"].items()}
        assert value(families, "inferline_batches", "_total", **labels) == s["batches"]
        assert value(families, "inferline_queue_depth", **labels) == 0
        assert value(families, "inferline_in_flight", **labels) == 0
        assert value(families, "inferline_model_ready", **labels) == 1
        for key, family in LATENCY.items():
            buckets, count, total = histogram(families, family, "m", str(version))
            assert count == s[key]["count"]
            assert total == pytest.approx(s[key]["sum"], rel=1e-6)
            assert [le for le, _ in buckets[:-1]] == list(metrics.SECONDS_BUCKETS)
        buckets, count, total = histogram(families, "inferline_batch_size", "m", str(version))
        assert count == s["batches"] == s["batch_size"]["count"]
        assert total == s["items_computed"]  # the sum of batch sizes
        max_batch_size = {1: 4, 2: 48}[version]
        assert [le for le, _ in buckets[:-1]] == metrics.batch_size_buckets(max_batch_size)
        assert buckets[-2][1] == count  # every batch is <= max_batch_size
    # Every accepted request of v1 was answered: one per computed row or error.
    assert stats[1]["request"]["count"] == 5  # 4 successes + the model error (not queue_full)
    assert value(families, "inferline_ready") == 1
    assert metrics.batch_size_buckets(48) == [1, 2, 4, 8, 16, 32, 48]
    assert metrics.batch_size_buckets(1) == [1]
    assert metrics.batch_size_buckets(8) == [1, 2, 4, 8]


@pytest.mark.asyncio
async def test_batch_size_buckets_count_full_batches_exactly() -> None:
    # 64 rows in one call: batches of exactly 32 must land in le="32", not only in le="64".
    engine = inferline.Engine()
    gate = threading.Event()
    entered = threading.Event()

    def model(b: np.ndarray) -> np.ndarray:
        entered.set()
        gate.wait(10)
        return b

    engine.register(
        "m",
        model,
        inputs=X,
        outputs=Y,
        warmup=False,
        batching=Batching(max_batch_size=32, max_queue_delay_ms=50.0),
    )
    async with engine:
        first = asyncio.ensure_future(engine.infer("m", item(0)))
        await until(entered.is_set)  # the lone request leaves as a batch of 1, holds the worker
        rest = asyncio.ensure_future(engine.infer_batch("m", np.zeros((64, DIM), dtype=np.float32)))
        await until(lambda: engine.stats("m")["queue_depth"] == 64)
        gate.set()
        await asyncio.gather(first, rest)
        families = scrape(engine)
        stats = engine.stats("m")
    buckets, count, _ = histogram(families, "inferline_batch_size", "m", "1")
    le = dict(buckets)
    assert count == stats["batches"] == 3
    assert le[1.0] == 1 and le[16.0] == 1
    assert le[32.0] == 3  # both batches of exactly 32


@pytest.mark.asyncio
async def test_scrapes_during_traffic_are_consistent_and_monotonic() -> None:
    def model(b: np.ndarray) -> np.ndarray:
        time.sleep(0.0005)
        return b

    engine = inferline.Engine()
    engine.register(
        "m",
        model,
        inputs=X,
        outputs=Y,
        warmup=False,
        batching=Batching(max_batch_size=8),
    )
    loop = asyncio.get_running_loop()
    async with engine:
        load = asyncio.ensure_future(
            asyncio.gather(*(engine.infer("m", item(i)) for i in range(600)))
        )
        scrapes = []
        while not load.done():
            # From a scrape thread, as prometheus_client's own HTTP server would.
            text = await loop.run_in_executor(None, metrics.render, engine)
            scrapes.append({f.name: f for f in text_string_to_metric_families(text.decode())})
            await asyncio.sleep(0.002)
        await load
        scrapes.append(scrape(engine))
    assert len(scrapes) >= 2
    previous: dict[str, float] = {}
    for families in scrapes:
        for family in [*LATENCY.values(), "inferline_batch_size"]:
            _, count, _ = histogram(families, family, "m", "1")
            assert count >= previous.get(family, 0)
            previous[family] = count
        ok = value(
            families, "inferline_requests", "_total", model="m", version="1", outcome="success"
        )
        assert ok >= previous.get("success", 0)
        previous["success"] = ok
    assert previous["success"] == 600


@pytest.mark.asyncio
async def test_not_ready_versions_and_the_engine_readiness_are_exported() -> None:
    engine = inferline.Engine()

    def broken(b: np.ndarray) -> np.ndarray:
        raise RuntimeError("no weights")

    engine.register("ok", lambda b: b, inputs=X, outputs=Y, warmup=False)
    engine.register("bad", broken, inputs=X, outputs=Y, warmup=[1])
    families = scrape(engine)  # before start: every version is still loading
    assert value(families, "inferline_model_ready", model="ok", version="1") == 0
    assert value(families, "inferline_ready") == 0
    async with engine:
        families = scrape(engine)
        assert value(families, "inferline_model_ready", model="ok", version="1") == 1
        assert value(families, "inferline_model_ready", model="bad", version="1") == 0
        assert value(families, "inferline_ready") == 0  # "bad" has no ready version
        assert engine.model_info("bad").state == "failed"
    families = scrape(engine)  # after stop the last figures stay readable
    assert (
        value(families, "inferline_requests", "_total", model="ok", version="1", outcome="success")
        == 0
    )
    assert value(families, "inferline_ready") == 0


@pytest.mark.asyncio
async def test_a_draining_version_is_exported_until_it_is_unloaded() -> None:
    v1, v2 = Gated(2.0), Gated(3.0)
    async with two_version_engine(v1, v2) as engine:
        await engine.infer("m", item(1), version=1)
        blocker = await hold(engine, v1, version=1)
        queued = [asyncio.ensure_future(engine.infer("m", item(i), version=1)) for i in range(2)]
        await asyncio.sleep(0)
        unloading = asyncio.ensure_future(engine.unload("m", 1))
        await asyncio.sleep(0.05)
        assert not unloading.done()
        families = scrape(engine)  # version 1 drains: still exported, not ready, in flight
        labels = {"model": "m", "version": "1"}
        assert value(families, "inferline_model_ready", **labels) == 0
        assert value(families, "inferline_in_flight", **labels) == 3
        assert value(families, "inferline_requests", "_total", outcome="success", **labels) == 1
        assert value(families, "inferline_model_ready", model="m", version="2") == 1
        v1.gate.set()
        await asyncio.gather(blocker, *queued)
        families = scrape(engine)  # answered, maybe not yet unloaded: the counts are final
        if samples(families, "inferline_in_flight", **labels):
            assert value(families, "inferline_requests", "_total", outcome="success", **labels) == 4
        await asyncio.wait_for(unloading, 10)
        families = scrape(engine)
    assert samples(families, "inferline_requests", "_total", **labels) == []
    assert samples(families, "inferline_request_seconds", "_count", **labels) == []
    assert value(families, "inferline_model_ready", model="m", version="2") == 1


@pytest.mark.asyncio
async def test_two_versions_under_the_same_labels_are_summed() -> None:
    # The repository keeps a version that failed to come up in the engine's retired list; a
    # later good load of the same number then shares its labels. One label set may appear
    # once per family, so the two are summed. Simulated here through the engine's state.
    v1, v2 = Gated(2.0), Gated(3.0)
    engine = two_version_engine(v1, v2)
    async with engine:
        await asyncio.gather(*(engine.infer("m", item(i), version=1) for i in range(3)))
        old = engine._router.models["m"].versions.pop(1)
        engine._router.retired.append(old)
        engine.register("m", Gated(2.0), inputs=X, outputs=Y, version=1, warmup=False)
        new = engine._router.models["m"].versions[1]
        await until(lambda: new.state == "ready")
        await engine.infer("m", item(1), version=1)
        families = scrape(engine)
        found = samples(
            families, "inferline_requests", "_total", model="m", version="1", outcome="success"
        )
        assert [v for _, v in found] == [4.0]
        _, count, _ = histogram(families, "inferline_request_seconds", "m", "1")
        assert count == 4
        buckets, count, _ = histogram(families, "inferline_batch_size", "m", "1")
        assert count == old.sched.stats()["batches"] + new.sched.stats()["batches"]
        assert [le for le, _ in buckets[:-1]] == [1, 2, 4, 8]  # both versions' bounds
        assert value(families, "inferline_model_ready", model="m", version="1") == 1
        engine._router.retired.remove(old)
        families = scrape(engine)
        assert (
            value(
                families, "inferline_requests", "_total", model="m", version="1", outcome="success"
            )
            == 1
        )
        engine._router.retired.append(old)  # so that stop() shuts its scheduler down


@pytest.mark.asyncio
async def test_cache_counters_only_for_versions_with_a_cache() -> None:
    engine = inferline.Engine()
    engine.register("plain", lambda b: b, inputs=X, outputs=Y, warmup=False)
    engine.register(
        "cached", lambda b: b + 1, inputs=X, outputs=Y, warmup=False, cache=(16, 1 << 16)
    )
    async with engine:
        for marker in (1, 2, 1, 1, 3):
            await engine.infer("cached", item(marker))
            await engine.infer("plain", item(marker))
        families = scrape(engine)
    assert samples(families, "inferline_cache_hits", "_total", model="plain") == []
    assert samples(families, "inferline_cache_misses", "_total", model="plain") == []
    assert value(families, "inferline_cache_hits", "_total", model="cached", version="1") == 2
    assert value(families, "inferline_cache_misses", "_total", model="cached", version="1") == 3
    # Hits never reach the scheduler.
    assert (
        value(
            families, "inferline_requests", "_total", model="cached", version="1", outcome="success"
        )
        == 3
    )


def test_collector_registers_and_describes_what_it_collects() -> None:
    engine = inferline.Engine()
    engine.register("m", lambda b: b, inputs=X, outputs=Y, warmup=False)
    c = metrics.collector(engine)
    assert isinstance(c, metrics.EngineCollector)
    registry = CollectorRegistry()
    registry.register(c)
    described = {m.name for m in c.describe()}
    collected = {m.name for m in c.collect()}
    assert described == collected
    assert {
        "inferline_requests",
        "inferline_batches",
        "inferline_queue_depth",
        "inferline_in_flight",
        "inferline_queue_wait_seconds",
        "inferline_compute_seconds",
        "inferline_request_seconds",
        "inferline_batch_size",
        "inferline_model_ready",
        "inferline_cache_hits",
        "inferline_cache_misses",
        "inferline_tokens",
        "inferline_padding_fraction",
        "inferline_ready",
    } == described
    assert all(not m.samples for m in c.describe())
    # A second collector of the same names in the same registry is refused.
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(metrics.collector(engine))
    assert (
        registry.get_sample_value(
            "inferline_requests_total", {"model": "m", "version": "1", "outcome": "success"}
        )
        == 0
    )


def test_seconds_buckets_are_fixed_and_increasing() -> None:
    b = metrics.SECONDS_BUCKETS
    assert b[0] == 50e-6 and b[-1] == 60.0
    assert list(b) == sorted(set(b))
    assert all(2.0 <= hi / lo <= 2.5 + 1e-9 for lo, hi in itertools.pairwise(b))
