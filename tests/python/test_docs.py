"""The documentation runs: README.md and docs/*.md snippets, the model.toml reference, the
Grafana dashboard.

Every fenced ``python``, ``bash``/``sh``/``shell`` and ``toml`` block of README.md and docs/*.md
is checked here, as written:

- ``python`` blocks run as a script (``python snippet.py``), shell blocks under
  ``bash -euo pipefail``, both in an empty temporary folder, with ``inferline`` and ``python``
  on PATH meaning this interpreter and this source tree. ``$INFERLINE_SOURCE`` names the
  repository root for setup lines.
- A block that talks to ``localhost:8000`` or ``127.0.0.1:8000`` runs against
  ``inferline serve`` (the bundled repository), started here on a free 127.0.0.1 port that
  replaces 8000, and stopped by its PID; its gRPC port (``--grpc-port``) replaces 8001.
- A block of ``inferline serve ...`` lines starts each server (``--port`` replaced by a free
  port), waits until ``/v2/health/ready`` answers 200, sends SIGTERM to its PID and expects
  exit status 0, as the README promises.
- ``toml`` blocks must be valid model.toml (``backend = "onnx"`` is added to a fragment that has
  no backend).

An HTML comment right before a block declares what it needs (several may be stacked):

- ``<!-- test: setup=COMMAND -->``: run first, in the same language and folder;
- ``<!-- test: expect=TEXT -->``: the block's output must contain TEXT;
- ``<!-- test: skip-line=PREFIX: REASON -->``: lines starting with PREFIX are not run;
- ``<!-- test: skip=REASON -->``: the block is not run, only for what a test cannot do
  (installing the package, running this suite, long benchmarks).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field

from inferline.repository import native_schema, reference, schema
from inferline.repository.fields import Table
from inferline.repository.reference import COMMAND, render
from inferline.repository.schema import parse_model_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # the tomli backport, as inferline.repository.scan reads model.toml
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
REFERENCE = ROOT / "docs" / "model-toml.md"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"

SERVER_START_S = 60.0  # bound on a server's start-up (loads and warms every model)
SNIPPET_S = 60.0  # bound on one snippet

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:\s*(?P<key>[\w-]+)(?:=(?P<value>.*?))?\s*-->\s*$")
_LOCAL_8000 = re.compile(r"\b(localhost|127\.0\.0\.1):8000\b")
_LOCAL_8001 = re.compile(r"\b(localhost|127\.0\.0\.1):8001\b")
_SHELLS = ("bash", "sh", "shell")


# ---------------------------------------------------------------------------------------------
# Reading the snippets


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    setup: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)
    skip_lines: dict[str, str] = field(default_factory=dict)
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    @property
    def needs_server(self) -> bool:
        return bool(_LOCAL_8000.search(self.code) or _LOCAL_8001.search(self.code))

    @property
    def starts_servers(self) -> bool:
        return any(_is_serve(line) for line in self.code.splitlines())


def _is_serve(line: str) -> bool:
    return line.strip().startswith("inferline serve")


def blocks(path: Path) -> list[Block]:
    """Every fenced block with a language, with the directives right above it."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or not m["lang"]:
            if m:  # a block without a language: skip to its end
                i += 1
                while i < len(lines) and not _FENCE.match(lines[i]):
                    i += 1
            i += 1
            continue
        indent, start = m["indent"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        block = Block(path, start + 1, m["lang"], "\n".join(body) + "\n")
        j = start - 1
        while j >= 0 and (d := _DIRECTIVE.match(lines[j])):
            _apply(block, d["key"], d["value"] or "")
            j -= 1
        out.append(block)
        i += 1
    return out


def _apply(block: Block, key: str, value: str) -> None:
    where = f"{block.id}: <!-- test: {key}=... -->"
    if key == "setup":
        block.setup.insert(0, value)
    elif key == "expect":
        block.expect.insert(0, value)
    elif key == "skip":
        assert value.strip(), f"{where} needs a reason"
        block.skip = value
    elif key == "skip-line":
        prefix, _, reason = value.partition(":")
        assert prefix.strip() and reason.strip(), f"{where} expected PREFIX: REASON"
        block.skip_lines[prefix.strip()] = reason.strip()
    else:
        raise AssertionError(f"{where}: unknown directive {key!r}")


ALL_BLOCKS = [b for path in DOCS for b in blocks(path)]
RUNNABLE = [b for b in ALL_BLOCKS if b.lang == "python" or b.lang in _SHELLS]
TOML = [b for b in ALL_BLOCKS if b.lang == "toml"]


# ---------------------------------------------------------------------------------------------
# Running them


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``inferline``, ``python`` and ``python3`` as a user's PATH would have them."""
    d = tmp_path_factory.mktemp("bin")
    for name, target in (
        ("inferline", f'exec "{sys.executable}" -m inferline.cli "$@"'),
        ("python", f'exec "{sys.executable}" "$@"'),
        ("python3", f'exec "{sys.executable}" "$@"'),
    ):
        (d / name).write_text(f"#!/bin/sh\n{target}\n")
        (d / name).chmod(0o755)
    return d


def snippet_env(bin_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["INFERLINE_SOURCE"] = str(ROOT)
    # The inferline this test imported (the source tree, or an installed one under test).
    where = str(Path(schema.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [where, env.get("PYTHONPATH")]))
    return env


class Server:
    """``inferline serve`` (or any serve command line) in its own process on 127.0.0.1."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path) -> None:
        self.port = free_port()
        command = command.split(" #", 1)[0].strip()
        if re.search(r"--port[ =]\d+", command):
            command = re.sub(r"--port([ =])\d+", rf"--port\g<1>{self.port}", command)
        else:
            command += f" --port {self.port}"
        self.grpc_port = free_port()
        command = re.sub(r"--grpc-port([ =])\d+", rf"--grpc-port\g<1>{self.grpc_port}", command)
        self.command = command
        self.log = cwd / f"server-{self.port}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.command!r} exited {self.proc.returncode}:\n{self.output}"
                )
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.command!r} not ready after {SERVER_START_S}s:\n{self.output}")

    def stop(self) -> int:
        """SIGTERM to the server's PID; its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            raise AssertionError(f"{self.command!r} ignored SIGTERM:\n{self.output}") from None

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def served(bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The README's ``inferline serve`` (the bundled repository) for the client snippets."""
    server = Server(
        "inferline serve --allow-code --grpc-port 8001",
        snippet_env(bin_dir),
        tmp_path_factory.mktemp("served"),
    )
    server.wait_ready()
    yield server
    assert server.stop() == 0, server.output


def _code(block: Block) -> str:
    kept = []
    for line in block.code.splitlines():
        stripped = line.strip()
        if any(stripped.startswith(p) for p in block.skip_lines):
            continue
        kept.append(line)
    for prefix in block.skip_lines:
        assert any(ln.strip().startswith(prefix) for ln in block.code.splitlines()), (
            f"{block.id}: skip-line={prefix!r} matches no line"
        )
    return "\n".join([*block.setup, *kept]) + "\n"


def run_block(block: Block, cwd: Path, env: dict[str, str], server: Server | None) -> str:
    code = _code(block)
    if server is not None:
        code = _LOCAL_8000.sub(rf"\g<1>:{server.port}", code)
        code = _LOCAL_8001.sub(rf"\g<1>:{server.grpc_port}", code)
    if block.lang == "python":
        script = cwd / "snippet.py"
        script.write_text(code)
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", code]
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=SNIPPET_S
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{block.id}: still running after {SNIPPET_S}s:\n{code}") from e
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{code}\n---\n{out}"
    for text in block.expect:
        assert text in done.stdout, f"{block.id}: output lacks {text!r}:\n{done.stdout}"
    return done.stdout


def test_snippets_are_found() -> None:
    ids = {b.id for b in RUNNABLE}
    assert any(i.startswith("README.md") for i in ids)
    assert {b.lang for b in RUNNABLE} >= {"python", "bash"}
    assert any(b.needs_server for b in RUNNABLE) and any(b.starts_servers for b in RUNNABLE)


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.skip is None], ids=lambda b: b.id)
def test_snippet_runs(
    block: Block, bin_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = snippet_env(bin_dir)
    if block.starts_servers:
        lines = [ln for ln in block.code.splitlines() if ln.strip() and not ln.startswith("#")]
        assert all(_is_serve(ln) for ln in lines), (
            f"{block.id}: a block that starts servers holds only `inferline serve` lines"
        )
        for setup in block.setup:
            subprocess.run(
                ["bash", "-euo", "pipefail", "-c", setup], cwd=tmp_path, env=env, check=True
            )
        servers = [Server(ln, env, tmp_path) for ln in lines]  # started side by side
        try:
            for s in servers:
                s.wait_ready()
        finally:
            codes = [(s.command, s.stop(), s.output) for s in servers]
        for command, code, output in codes:
            assert code == 0, f"{block.id}: {command!r} exited {code} on SIGTERM:\n{output}"
        return
    server = request.getfixturevalue("served") if block.needs_server else None
    run_block(block, tmp_path, env, server)


def test_skipped_snippets_say_why() -> None:
    for b in RUNNABLE:
        if b.skip is not None:
            assert len(b.skip.split()) >= 2, f"{b.id}: skip needs a reason, got {b.skip!r}"


@pytest.mark.parametrize("block", TOML, ids=lambda b: b.id)
def test_toml_snippet_is_valid_model_toml(block: Block) -> None:
    data = tomllib.loads(block.code)
    if "backend" not in data:
        data = {"backend": "onnx", **data}
    parse_model_toml(data, block.file, versions=())


# ---------------------------------------------------------------------------------------------
# The model.toml reference


def test_model_toml_reference_is_fresh() -> None:
    expected = render()
    actual = REFERENCE.read_text() if REFERENCE.exists() else ""
    if actual != expected:
        diff = "".join(
            list(
                difflib.unified_diff(
                    actual.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    "docs/model-toml.md",
                    "generated",
                )
            )[:40]
        )
        pytest.fail(f"docs/model-toml.md is stale: run `{COMMAND}`\n{diff}", pytrace=False)


def test_reference_lists_every_key_with_type_default_and_meaning() -> None:
    tables = [t for _, t, _ in reference._sections()] + [schema.ModelToml, native_schema.NativeOp]
    text = REFERENCE.read_text()
    for table in tables:
        for k in reference.keys(table):
            where = f"{table.__name__}.{k.name}"
            assert k.type and k.default and k.meaning, where
            if table is schema.ModelToml and k.type in ("table", "array of tables"):
                assert f"## `[{k.name}]`" in text or f"## `[[{k.name}]]`" in text, where
            else:
                assert k.allowed, f"{where}: no allowed values"
                assert f"| `{k.name}` | {k.type} |" in text, where
    for heading in ("[batching]", "[warmup]", "[artifacts]", "[python]", "[native]"):
        assert f"## `{heading}`" in text
    # the engine's own defaults, not the schema's None
    assert "| `max_batch_size` | integer | `8` |" in text
    for policy in ("work_conserving", "fixed_window", "latency_target"):
        assert f'"{policy}"' in text


def test_reference_names_a_key_without_description() -> None:
    class Undocumented(Table):
        documented: int = Field(default=1, description="has a meaning")
        bare: int = 2

    with pytest.raises(ValueError, match=r"Undocumented\.bare has no Field\(description=\.\.\.\)"):
        reference.keys(Undocumented)


# ---------------------------------------------------------------------------------------------
# The Grafana dashboard

_PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "rate", "irate", "increase", "histogram_quantile", "label_values", "and",
    "or", "unless", "offset",
}  # fmt: skip


def _dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"${var['name']}", var["query"]["query"]))
    return out


def _names_in(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) of a PromQL expression."""
    labels = set(re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr))
    label_names = {x.strip() for group in labels for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        label_names.update(re.findall(r"(\w+)\s*[=!]~?", matchers))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\b(?:by|without)\s*\([^)]*\)", " ", expr)
    bare = re.sub(r"\$\w+", " ", bare)
    words = set(re.findall(r"[A-Za-z_:][\w:]*", bare))
    metrics = {w for w in words if w not in _PROMQL_WORDS and w not in label_names}
    if expr.startswith("label_values("):
        metrics = {expr.split("(", 1)[1].split(",", 1)[0].strip()}
        label_names.add(expr.rsplit(",", 1)[1].strip(") "))
    return metrics, label_names


def test_dashboard_queries_only_metrics_that_metrics_exports(served: Server) -> None:
    base = f"http://127.0.0.1:{served.port}"
    doc = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1] * 8}]}
    r = httpx.post(f"{base}/v2/models/scaler/infer", json=doc, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.get(f"{base}/metrics", timeout=30)
    assert r.status_code == 200
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    queried: set[str] = set()
    for title, expr in _dashboard_queries():
        metrics, labels = _names_in(expr)
        assert metrics, f"panel {title!r}: no metric in {expr!r}"
        for name in metrics:
            assert name in exported, (
                f"panel {title!r} queries {name!r}, which /metrics does not export; "
                f"exported: {sorted(exported)}"
            )
            # "le" belongs to a histogram's buckets, not to the _sum/_count beside them
            wanted = labels if name.endswith("_bucket") else labels - {"le"}
            missing = wanted - exported[name]
            assert not missing, f"panel {title!r}: {name} has no label(s) {sorted(missing)}"
        queried |= metrics
    # the families the dashboard is for
    for name in (
        "inferline_requests_total",
        "inferline_request_seconds_bucket",
        "inferline_queue_depth",
        "inferline_batch_size_bucket",
        "inferline_in_flight",
    ):
        assert name in queried, f"the dashboard has no panel on {name}"


def test_dashboard_query_parser_sees_a_misspelt_metric() -> None:
    metrics, labels = _names_in(
        "histogram_quantile(0.99, sum by (le, model) "
        '(rate(inferline_request_second_bucket{model=~"$model"}[5m])))'
    )
    assert metrics == {"inferline_request_second_bucket"}
    assert labels == {"le", "model"}
