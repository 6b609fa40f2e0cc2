"""``serve`` tunes Python's garbage collector while it serves (inferline.server.runner) and
puts it back when it stops; ``tune_gc=False`` leaves it alone.

Each server binds 127.0.0.1 on a free port in a thread of its own, and stops itself once
started (what SIGTERM does); the thread is joined with a bound.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator

import pytest

import inferline
from inferline.server.runner import GC_THRESHOLDS, _build


def serve_once(tune_gc: bool) -> dict[str, object]:
    """Starts a server, records the collector's settings once it listens, stops it."""
    seen: dict[str, object] = {}
    server = _build(
        inferline.Engine(),
        "127.0.0.1",
        0,
        drain_timeout=1.0,
        grace_period=0.0,
        log_level="warning",
        access_log=False,
        on_started=lambda port: (
            seen.update(threshold=gc.get_threshold(), frozen=gc.get_freeze_count()),
            server.begin_shutdown("the test is done"),
        ),
        app_kwargs={"tune_gc": tune_gc},
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()))
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the server did not stop"
    assert server.started
    return seen


Settings = tuple[tuple[int, int, int], int]


@pytest.fixture
def gc_defaults() -> Iterator[Settings]:
    before = gc.get_threshold(), gc.get_freeze_count()
    assert before[1] == 0, "something else froze the collector"
    yield before
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_serve_tunes_the_collector_and_puts_it_back(gc_defaults: Settings) -> None:
    seen = serve_once(tune_gc=True)
    assert seen["threshold"] == GC_THRESHOLDS
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 0


def test_tune_gc_false_leaves_the_collector_alone(gc_defaults: Settings) -> None:
    threshold, _ = gc_defaults
    assert serve_once(tune_gc=False) == {"threshold": threshold, "frozen": 0}
