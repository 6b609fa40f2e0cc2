"""``inferline serve`` as a child process for tests: started on a free 127.0.0.1 port, its
port read from its log, stopped (by its PID) when the test is done."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Served:
    """A running ``inferline serve``: its process, port and the log lines read so far."""

    proc: subprocess.Popen[str]
    port: int
    log: list[str] = field(default_factory=list)


@contextlib.contextmanager
def served_repository(
    repo: Path | str, *args: str, ready_within: float = 120.0
) -> Iterator[Served]:
    """Runs ``inferline serve REPO --port 0 ARGS`` until uvicorn says where it listens (the
    log lines so far are in the assertion message when it exits or takes longer than
    ``ready_within`` seconds), yields it, then kills it if the test left it running."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferline.cli", "serve", str(repo), "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stderr = proc.stderr
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in stderr], daemon=True)
    reader.start()
    try:
        port = None
        seen: list[str] = []
        deadline = time.monotonic() + ready_within
        while port is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if "running on http://127.0.0.1:" in line:
                port = int(line.split("127.0.0.1:")[1].split()[0])
        assert port is not None, "".join(seen)
        yield Served(proc, port, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        stderr.close()
