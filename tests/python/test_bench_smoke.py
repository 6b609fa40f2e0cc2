"""The soak script runs end to end against ``inferline serve`` and finds nothing lost.

Marked ``slow``: about 30 seconds, a server subprocess started and stopped (by PID) by the
script itself on 127.0.0.1. It checks the script's verdict (exit status) and its table, not
speed.
"""

from __future__ import annotations

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
