"""Soak: ``inferline serve`` under mixed, faulty traffic; every request must get exactly one
answer of an expected kind.

    python bench/python/soak.py [--minutes 2] [--clients 16]      # --minutes 10 for the real one

The script writes a temporary model repository, starts ``inferline serve REPO --watch`` on
127.0.0.1 (with ``--allow-code`` when the command has it: the models are ``model.py`` files),
drives it, and stops it by PID (SIGTERM, then SIGKILL past a bound, which fails the soak).

Models (python backend, 4 float32 features, priority_levels 3, a small queue so that bursts
overflow it):

- ``echo``: y = 2x + 1, hot-swapped: a new version folder every ``--swap-every`` seconds
  (the server's watcher loads it, warms it, swaps it in; the folder two versions back is
  removed, so the old version unloads);
- ``flaky``: raises ValueError on a batch holding a row with x[0] < -1000;
- ``slow``: sleeps ``--hang-seconds`` on a batch holding a row with x[0] > 1000 (a hang
  bounded so the soak ends; every request to it carries a deadline).

Traffic: ``--clients`` closed-loop clients pick a request kind at random (below) with a random
priority (0-3) and, for most, a deadline; every ``--burst-every`` seconds
``--burst-factor`` times as many clients join for ``--burst-seconds`` (overload). Each request
has its own connection (``Connection: close``), so an answer is attributed without doubt and
a second answer would show as bytes after the first.

kind            expected answers
echo            200 (id and values checked), 503 (queue full)
echo-nan        400 (NaN in an input declared finite)
flaky           200, 500 (its batch held a poisoned row), 503
flaky-poison    500 (ModelError), 503
slow            200, 503
slow-hang       503
cancel          an echo answer as above if it came within 0-5 ms, else cancelled by the client
disconnect      the client hangs up 0-20 ms after sending to ``slow``; no answer is read

and, for every kind but echo-nan and disconnect, 504 when (and only when) the request carried
a deadline.

A request that gets no answer (connection closed or 30 s without one), two answers, a status
not in its row, or a 200 with the wrong id or values is a failure. RSS and open file
descriptors of the server PID are sampled every second. The table prints every
``--report-every`` seconds and at the end; the exit status is 1 on any failure, if the server
died, or if it did not stop within its drain bound after SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FEATURES = 4
CLIENT_TIMEOUT_S = 30.0

EXPECTED: dict[str, set[str]] = {
    "echo": {"200", "503"},
    "echo-nan": {"400"},
    "flaky": {"200", "500", "503"},
    "flaky-poison": {"500", "503"},
    "slow": {"200", "503"},
    "slow-hang": {"503"},
    "cancel": {"200", "503", "cancelled"},
    "disconnect": {"disconnected"},
}
# Kinds that may also be answered 504, when they carried a deadline (and only then).
DEADLINE_KINDS = {"echo", "flaky", "flaky-poison", "slow", "slow-hang", "cancel"}
# Relative weights of the kinds for the steady clients; bursts send plain echo requests.
WEIGHTS = {
    "echo": 50,
    "echo-nan": 3,
    "flaky": 12,
    "flaky-poison": 3,
    "slow": 10,
    "slow-hang": 1,
    "cancel": 8,
    "disconnect": 4,
}
FAILURES = ("lost", "duplicated", "unexpected", "wrong")

# ------------------------------------------------------------------------------ repository

_TOML = """backend = "python"

[[inputs]]
name = "x"
datatype = "FP32"
shape = [{features}]
finite = true

[[outputs]]
name = "y"
datatype = "FP32"
shape = [{features}]

[batching]
max_batch_size = 8
max_queue_delay_ms = 1.0
max_queue_size = 64
priority_levels = 3

[warmup]
batch_sizes = [1, 8]

[python]
allow_code = true
entry = "predict"
"""

_MODELS = {
    "echo": "def predict(x):\n    return 2.0 * x + 1.0\n",
    "flaky": (
        "def predict(x):\n"
        "    if (x[:, 0] < -1000).any():\n"
        "        raise ValueError('poisoned row')\n"
        "    return x\n"
    ),
    "slow": (
        "import time\n\n\n"
        "def predict(x):\n"
        "    if (x[:, 0] > 1000).any():\n"
        "        time.sleep({hang})\n"
        "    return x\n"
    ),
}


def write_repository(root: Path, hang_seconds: float) -> None:
    for name, source in _MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "model.toml").write_text(_TOML.format(features=FEATURES))
        (root / name / "1" / "model.py").write_text(source.replace("{hang}", repr(hang_seconds)))


def add_version(root: Path, version: int) -> None:
    """Writes echo/<version> (a whole new folder, renamed into place so the watcher never
    sees half of it) and removes echo/<version - 2>."""
    tmp = root / f".echo-{version}"
    tmp.mkdir()
    (tmp / "model.py").write_text(_MODELS["echo"])
    tmp.rename(root / "echo" / str(version))
    shutil.rmtree(root / "echo" / str(version - 2), ignore_errors=True)


# ------------------------------------------------------------------------------ server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    repo: Path,
    port: int,
    log_path: Path,
    drain: float,
    env_extra: dict[str, str] | None = None,
    serve_args: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """``inferline serve REPO`` on 127.0.0.1:``port`` (and ``serve_args``), its output in
    ``log_path``, with ``env_extra`` added to its environment."""
    cmd = [sys.executable, "-c", "import sys; from inferline.cli import main; sys.exit(main())"]
    help_text = subprocess.run(
        [*cmd, "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    args = ["--log-level", "WARNING", "serve", str(repo), "--host", "127.0.0.1"]
    args += ["--port", str(port), "--watch", "--poll-interval", "1", "--drain-timeout", str(drain)]
    if "--allow-code" in help_text:
        args.append("--allow-code")
    args += serve_args or []
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "python"), env.get("PYTHONPATH", "")) if p
    )
    env.update(env_extra or {})
    with open(log_path, "wb") as log:
        return subprocess.Popen([*cmd, *args], stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_server(proc: subprocess.Popen[bytes], bound: float) -> tuple[int | None, float, bool]:
    """SIGTERM by PID, then SIGKILL past ``bound`` s: (exit code, seconds, stopped in time)."""
    t0 = time.monotonic()
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(bound)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return proc.returncode, time.monotonic() - t0, False
    return proc.returncode, time.monotonic() - t0, True


def sample(pid: int) -> tuple[float, int]:
    """RSS (MB) and open file descriptors of ``pid`` (Linux /proc)."""
    try:
        rss_kb = next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return float("nan"), -1


# ------------------------------------------------------------------------------ client


async def _http(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes, bytes]:
    """One request on its own connection: (status, body, bytes after the first answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        data = await reader.read()  # the server closes after its answer (Connection: close)
    finally:
        writer.close()
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return 0, data, b""
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (
            int(v)
            for k, _, v in (x.partition(":") for x in lines[1:])
            if k.lower() == "content-length"
        ),
        0,
    )
    rest = data[end + 4 :]
    return status, rest[:length], rest[length:]


@dataclass
class Tally:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    versions: Counter[int] = field(default_factory=Counter)
    sent: int = 0
    examples: list[str] = field(default_factory=list)

    def record(self, kind: str, outcome: str, note: str = "") -> None:
        self.outcomes[kind, outcome] += 1
        if outcome in FAILURES and len(self.examples) < 10:
            self.examples.append(f"{kind}: {outcome} {note}"[:300])

    def count(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)


class Soak:
    def __init__(self, args: argparse.Namespace, port: int) -> None:
        self.args = args
        self.port = port
        self.tally = Tally()
        self.rng = random.Random(args.seed)
        self.stop_at = 0.0
        self.next_id = 0

    def _request(self, kind: str) -> tuple[str, str, bytes, np.ndarray, bool]:
        """(model, request id, body, input row, has deadline) for one request of ``kind``."""
        rng = self.rng
        x = np.array([rng.uniform(-10, 10) for _ in range(FEATURES)], dtype=np.float32)
        model = {"flaky": "flaky", "flaky-poison": "flaky", "slow": "slow"}.get(kind, "echo")
        if kind in ("slow-hang", "disconnect"):
            model = "slow"
        if kind == "flaky-poison":
            x[0] = -5000.0
        elif kind == "slow-hang":
            x[0] = 5000.0
        params: dict[str, int] = {"priority": rng.randint(0, 3)}
        if model == "slow" or rng.random() < 0.5:
            params["timeout"] = rng.randint(50_000, 1_000_000)  # microseconds
        data: list[float | str] = [float(v) for v in x]
        if kind == "echo-nan":
            data[1] = "NaN"
        self.next_id += 1
        rid = f"r{self.next_id}"
        body = {
            "id": rid,
            "parameters": params,
            "inputs": [{"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": data}],
        }
        return model, rid, json.dumps(body).encode(), x, "timeout" in params

    async def one(self, kind: str) -> None:
        model, rid, body, x, has_deadline = self._request(kind)
        path = f"/v2/models/{model}/infer"
        self.tally.sent += 1
        if kind == "disconnect":
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
            await asyncio.sleep(self.rng.uniform(0, 0.02))
            writer.transport.abort()
            self.tally.record(kind, "disconnected")
            return
        call = _http(self.port, "POST", path, body)
        wait = self.rng.uniform(0, 0.005) if kind == "cancel" else CLIENT_TIMEOUT_S
        try:
            status, payload, extra = await asyncio.wait_for(call, wait)
        except asyncio.TimeoutError:  # not the builtin before 3.11
            self.tally.record(kind, "cancelled" if kind == "cancel" else "lost", "no answer")
            return
        except (ConnectionError, OSError) as e:
            self.tally.record(kind, "lost", repr(e))
            return
        if status == 0:
            self.tally.record(kind, "lost", f"closed without an answer: {payload[:80]!r}")
            return
        if extra:
            self.tally.record(kind, "duplicated", f"bytes after the answer: {extra[:80]!r}")
            return
        outcome = str(status)
        expected = EXPECTED[kind]
        if has_deadline and kind in DEADLINE_KINDS:
            expected = expected | {"504"}
        if outcome not in expected:
            self.tally.record(kind, "unexpected", f"{status} {payload[:200]!r}")
            return
        if status == 200:
            answer = json.loads(payload)
            y = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
            want = 2 * x + 1 if model == "echo" else x
            if answer.get("id") != rid or not np.allclose(y, want, rtol=1e-5, atol=1e-5):
                self.tally.record(kind, "wrong", f"{rid}: {payload[:200]!r}")
                return
            if model == "echo":
                self.tally.versions[int(answer.get("model_version", 0))] += 1
        self.tally.record(kind, outcome)

    async def client(self, until: float, kinds: list[str], weights: list[int]) -> None:
        while time.monotonic() < until and self.tally.sent < self.args.max_requests:
            await self.one(self.rng.choices(kinds, weights)[0])

    async def run(self, proc: subprocess.Popen[bytes], repo: Path) -> list[tuple[float, ...]]:
        args = self.args
        t0 = time.monotonic()
        self.stop_at = t0 + args.minutes * 60
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        samples: list[tuple[float, ...]] = []
        tasks = [
            asyncio.create_task(self.client(self.stop_at, kinds, weights))
            for _ in range(args.clients)
        ]
        next_swap = t0 + args.swap_every
        next_burst = t0 + args.burst_every
        next_report = t0 + args.report_every
        version = 1
        self.print_header()
        while time.monotonic() < self.stop_at and proc.poll() is None:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            rss, fds = sample(proc.pid)
            samples.append((now - t0, rss, fds))
            if now >= next_swap:
                version += 1
                add_version(repo, version)
                next_swap = now + args.swap_every
            if now >= next_burst:
                until = min(now + args.burst_seconds, self.stop_at)
                n = args.clients * (args.burst_factor - 1)
                tasks += [asyncio.create_task(self.client(until, ["echo"], [1])) for _ in range(n)]
                next_burst = now + args.burst_every
            if now >= next_report:
                self.print_row(now - t0, rss, fds)
                next_report = now + args.report_every
        await asyncio.gather(*tasks)
        rss, fds = sample(proc.pid)
        self.print_row(time.monotonic() - t0, rss, fds)
        self.swaps = version - 1
        return samples

    _COLS = ("200", "400", "500", "503", "504", "cancelled", "disconnected")

    def print_header(self) -> None:
        cols = "".join(f"{c:>13}" for c in self._COLS)
        print(f"{'t s':>6} {'sent':>8}{cols} {'failures':>9} {'RSS MB':>7} {'FDs':>5}")

    def print_row(self, t: float, rss: float, fds: int) -> None:
        tl = self.tally
        cols = "".join(f"{tl.count(c):>13}" for c in self._COLS)
        bad = sum(tl.count(f) for f in FAILURES)
        print(f"{t:>6.0f} {tl.sent:>8}{cols} {bad:>9} {rss:>7.1f} {fds:>5}", flush=True)


async def _wait_ready(
    port: int, proc: subprocess.Popen[bytes], bound: float, models: Iterable[str] = _MODELS
) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        try:
            ready = [(await _http(port, "GET", f"/v2/models/{m}/ready"))[0] == 200 for m in models]
            if all(ready):
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server was not ready within {bound:g}s")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=2.0, help="soak length")
    p.add_argument("--clients", type=int, default=16, help="steady closed-loop clients")
    p.add_argument("--burst-every", type=float, default=15.0, help="seconds between bursts")
    p.add_argument("--burst-seconds", type=float, default=2.0, help="length of a burst")
    p.add_argument("--burst-factor", type=int, default=10, help="clients during a burst, x")
    p.add_argument("--swap-every", type=float, default=4.0, help="seconds between new versions")
    p.add_argument("--hang-seconds", type=float, default=1.5, help="how long 'slow' hangs")
    p.add_argument("--drain-timeout", type=float, default=5.0, help="server's --drain-timeout")
    p.add_argument("--max-requests", type=int, default=2_000_000, help="stop after this many")
    p.add_argument("--report-every", type=float, default=None, help="seconds between rows")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.report_every is None:
        args.report_every = max(5.0, args.minutes * 60 / 8)
    workdir = Path(tempfile.mkdtemp(prefix="inferline_soak_"))
    repo = workdir / "repo"
    log_path = workdir / "server.log"
    write_repository(repo, args.hang_seconds)
    port = _free_port()
    proc = start_server(repo, port, log_path, args.drain_timeout)
    print(
        f"soak: inferline serve (PID {proc.pid}) on 127.0.0.1:{port}, {args.minutes:g} min, "
        f"{args.clients} clients, bursts x{args.burst_factor} for {args.burst_seconds:g}s every "
        f"{args.burst_every:g}s, a new echo version every {args.swap_every:g}s; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    failed: list[str] = []
    samples: list[tuple[float, ...]] = []
    soak = Soak(args, port)
    try:
        asyncio.run(_wait_ready(port, proc, 120.0))
        samples = asyncio.run(soak.run(proc, repo))
        if proc.poll() is not None:
            failed.append(f"the server died during the soak (exit code {proc.returncode})")
    except RuntimeError as e:
        failed.append(str(e))
    finally:
        bound = args.drain_timeout + args.hang_seconds + 15
        code, took, in_time = stop_server(proc, bound)
        if not in_time:
            failed.append(f"the server did not exit within {bound:g}s of SIGTERM (killed)")
    tl = soak.tally
    print("\nper kind (outcome: count); expected outcomes as in the docstring")
    for kind in WEIGHTS:
        row = {o: n for (k, o), n in sorted(tl.outcomes.items()) if k == kind}
        print(f"  {kind:<13} " + ", ".join(f"{o}: {n}" for o, n in row.items()))
    steady = [s for s in samples if s[0] >= 0.1 * args.minutes * 60] or samples
    if steady:
        rss = [s[1] for s in steady]
        fds = [s[2] for s in steady]
        print(
            f"server RSS MB after the first 10%: first {rss[0]:.1f}, last {rss[-1]:.1f}, "
            f"max {max(rss):.1f} ({(rss[-1] - rss[0]) / rss[0]:+.1%}); open FDs: first "
            f"{fds[0]}, last {fds[-1]}, max {max(fds)}"
        )
    print(
        f"echo versions that answered: {dict(sorted(tl.versions.items()))} "
        f"({getattr(soak, 'swaps', 0)} swaps written); server exit code {code} "
        f"{took:.1f}s after SIGTERM"
    )
    bad = {f: tl.count(f) for f in FAILURES}
    print(f"requests {tl.sent}; failures: " + ", ".join(f"{k} {v}" for k, v in bad.items()))
    for e in tl.examples:
        print(f"  e.g. {e}")
    if sum(bad.values()):
        failed.append(f"{sum(bad.values())} requests without exactly one expected answer")
    for f in failed:
        print(f"FAILED: {f}")
    if failed:
        print(f"server log and repository kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
