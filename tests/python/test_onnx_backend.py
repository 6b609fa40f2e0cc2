"""The ONNX Runtime backend: signature from the graph, batch-dimension detection, answers
checked against numpy, config cross-checks, broken and escaping files."""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from inferline.backends import load_version  # noqa: E402
from inferline.backends.onnx import OnnxModel  # noqa: E402
from inferline.repository import RepositoryError, load_model_config, load_repository  # noqa: E402
from inferline.types import TensorSpec  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load_make_repository() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "inferline_examples_make_repository", EXAMPLES / "make_repository.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_repository = _load_make_repository()


def numpy_mlp(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    h = np.maximum(x @ w["W1"] + w["b1"], 0)
    logits = h @ w["W2"] + w["b2"]
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def graph_bytes(
    inputs: list[tuple[str, int, list[int | str | None]]],
    outputs: list[tuple[str, int, list[int | str | None] | None]],
    nodes: list[onnx.NodeProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> bytes:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        initializers or [],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return bytes(m.SerializeToString())


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_repository.build_repository(tmp_path / "repo")


@pytest.fixture()
def rows() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Signature and answers


def test_classifier_signature_from_graph(repo: Path) -> None:
    m = OnnxModel(repo / "classifier" / "1" / "model.onnx")
    assert m.inputs == (TensorSpec("x", "FP32", (16,)),)
    assert m.outputs == (TensorSpec("probs", "FP32", (4,)),)
    assert m.input_names == ("x",) and m.output_names == ("probs",)
    assert m.batch_dynamic and m.batching_note is None
    assert "x:FP32[?, 16]" in repr(m)


@pytest.mark.parametrize("version", [1, 2])
def test_outputs_match_numpy(repo: Path, rows: np.ndarray, version: int) -> None:
    m = OnnxModel(repo / "classifier" / str(version) / "model.onnx", intra_op_threads=1)
    got = m(rows)
    assert isinstance(got, np.ndarray) and got.shape == (5, 4) and got.dtype == np.float32
    want = numpy_mlp(rows, make_repository.example_weights(version))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(m.run({"x": rows})["probs"], got)
    np.testing.assert_allclose(m({"x": rows}), got)  # the engine's dict form


def test_versions_answer_differently(repo: Path, rows: np.ndarray) -> None:
    a = OnnxModel(repo / "classifier" / "1" / "model.onnx")(rows)
    b = OnnxModel(repo / "classifier" / "2" / "model.onnx")(rows)
    assert not np.allclose(a, b)


def test_load_version_from_repository(repo: Path, rows: np.ndarray) -> None:
    c = load_repository(repo).configs["classifier"]
    for v in c.versions_to_load:
        loaded = load_version(c, v)
        assert loaded.version == v and loaded.notes == ()
        assert loaded.inputs == (TensorSpec("x", "FP32", (16,), finite=True),)
        assert loaded.outputs == (TensorSpec("probs", "FP32", (4,), finite=True),)
        assert loaded.batching == c.batching and loaded.max_batch_size == 32
        assert loaded.warmup_sizes(8) == (1, 8, 32)
        assert loaded.platform == "onnxruntime_onnx"
        for b in loaded.warmup_sizes(8):
            (w,) = loaded.warmup_inputs(b)
            assert w.shape == (b, 16) and loaded.fn(w).shape == (b, 4)
        want = numpy_mlp(rows, make_repository.example_weights(v))
        np.testing.assert_allclose(loaded.fn(rows), want, rtol=1e-5, atol=1e-6)


def test_several_outputs_and_call_errors() -> None:
    data = graph_bytes(
        [("a", TensorProto.FLOAT, ["n", 3]), ("b", TensorProto.INT64, ["n", 3])],
        [("s", TensorProto.FLOAT, ["n", 3]), ("k", TensorProto.INT64, ["n", 3])],
        [helper.make_node("Relu", ["a"], ["s"]), helper.make_node("Identity", ["b"], ["k"])],
    )
    m = OnnxModel(data)
    assert m.inputs == (TensorSpec("a", "FP32", (3,)), TensorSpec("b", "INT64", (3,)))
    a = np.array([[-1, 0, 2]], np.float32)
    b = np.array([[1, 2, 3]], np.int64)
    s, k = m(a, b)
    np.testing.assert_array_equal(s, [[0, 0, 2]])
    np.testing.assert_array_equal(k, b)
    assert set(m.run({"a": a, "b": b})) == {"s", "k"}
    s2, k2 = m({"b": b, "a": a})  # the engine passes a dict when there are several inputs
    np.testing.assert_array_equal(s2, s)
    np.testing.assert_array_equal(k2, k)
    with pytest.raises(TypeError, match=r"expected 2 arrays \(a, b\) or one dict of them, got 1"):
        m(a)
    with pytest.raises(ValueError, match=r"expected inputs \['a', 'b'\], got \['a'\]"):
        m.run({"a": a})


def test_thread_options_checked() -> None:
    data = graph_bytes(
        [("x", TensorProto.FLOAT, ["n", 1])],
        [("y", TensorProto.FLOAT, ["n", 1])],
        [helper.make_node("Relu", ["x"], ["y"])],
    )
    with pytest.raises(
        ValueError, match="intra_op_threads must be a positive integer or None, got 0"
    ):
        OnnxModel(data, intra_op_threads=0)
    with pytest.raises(ValueError, match="inter_op_threads must be a positive integer"):
        OnnxModel(data, inter_op_threads=True)  # type: ignore[arg-type]
    OnnxModel(data, intra_op_threads=2, inter_op_threads=1)


def test_run_releases_the_gil(repo: Path) -> None:
    """Another Python thread keeps running while a large batch computes."""
    m = OnnxModel(repo / "classifier" / "1" / "model.onnx", intra_op_threads=1)
    big = np.random.default_rng(0).standard_normal((200_000, 16)).astype(np.float32)
    t0 = time.perf_counter()
    m(big)
    alone = time.perf_counter() - t0
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0)

    th = threading.Thread(target=spin)
    th.start()
    try:
        for _ in range(3):
            m(big)
    finally:
        stop.set()
        th.join()
    # With the GIL held for the whole run the spinner would barely advance.
    assert alone > 0 and ticks > 50


# --------------------------------------------------------------------------------------------
# Batch dimension detection


def test_fixed_batch_dimension_is_detected(repo: Path, rows: np.ndarray) -> None:
    m = OnnxModel(repo / "classifier_fixed" / "1" / "model.onnx")
    assert not m.batch_dynamic
    assert m.batching_note == (
        "input 'x' has a fixed batch dimension of 1 (shape [1, 16]); batching is off "
        "(max_batch_size = 1)"
    )
    assert m.inputs == (TensorSpec("x", "FP32", (16,)),)
    assert m.outputs == (TensorSpec("probs", "FP32", (4,)),)
    want = numpy_mlp(rows, make_repository.example_weights(1))
    np.testing.assert_allclose(m(rows[:1]), want[:1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m(rows), want, rtol=1e-5, atol=1e-6)  # row by row


def test_fixed_batch_forces_max_batch_size_one(repo: Path) -> None:
    c = load_repository(repo).configs["classifier_fixed"]
    loaded = load_version(c, 1)
    assert loaded.batching.max_batch_size == 1
    assert loaded.notes == (OnnxModel(repo / "classifier_fixed/1/model.onnx").batching_note,)
    assert loaded.warmup_sizes(32) == (1,)

    toml = repo / "classifier_fixed" / "model.toml"
    toml.write_text(toml.read_text() + "\n[batching]\nmax_batch_size = 8\n")
    loaded = load_version(load_model_config(repo / "classifier_fixed"), 1)
    assert loaded.batching.max_batch_size == 1
    assert loaded.notes[1] == f"batching.max_batch_size = 8 in {toml} is overridden to 1"


def test_graph_without_batch_dimension() -> None:
    data = graph_bytes(
        [("x", TensorProto.FLOAT, [3])],
        [("y", TensorProto.FLOAT, [3])],
        [helper.make_node("Relu", ["x"], ["y"])],
    )
    m = OnnxModel(data)
    assert not m.batch_dynamic
    assert m.batching_note is not None and "has no symbolic batch dimension" in m.batching_note
    assert m.inputs == (TensorSpec("x", "FP32", (3,)),)
    x = np.array([[-1, 1, 2], [3, -4, 5]], np.float32)
    np.testing.assert_array_equal(m(x), np.maximum(x, 0))
    with pytest.raises(ValueError, match="expected a batch of at least one row, got 0"):
        m(x[:0])


def test_inputs_disagreeing_on_batch_dimension() -> None:
    data = graph_bytes(
        [("a", TensorProto.FLOAT, ["n", 3]), ("b", TensorProto.FLOAT, [1, 3])],
        [("y", TensorProto.FLOAT, ["n", 3])],
        [helper.make_node("Add", ["a", "b"], ["y"])],
    )
    with pytest.raises(RepositoryError) as info:
        OnnxModel(data, source="m/1/model.onnx")
    assert info.value.file == "m/1/model.onnx"
    assert info.value.message.startswith(
        "the inputs disagree on the batch dimension (a [?, 3], b [1, 3])"
    )


# --------------------------------------------------------------------------------------------
# Config against graph


def _dyn_graph() -> bytes:
    return graph_bytes(
        [("x", TensorProto.FLOAT, ["n", "seq", 4])],
        [("y", TensorProto.FLOAT, ["n", "seq", 4])],
        [helper.make_node("Relu", ["x"], ["y"])],
    )


def test_dynamic_item_dimension_needs_a_declaration() -> None:
    m = OnnxModel(_dyn_graph(), source="g.onnx")
    with pytest.raises(RepositoryError) as info:
        _ = m.inputs
    assert str(info.value) == (
        "g.onnx: input 'x' has per-item shape [?, 4] with a dynamic dimension; declare its "
        "shape in model.toml [[inputs]]"
    )
    ins, outs = m.check_against_config(
        [TensorSpec("x", "FP32", (10, 4), finite=True)], [TensorSpec("y", "FP32", (10, 4))]
    )
    assert ins == (TensorSpec("x", "FP32", (10, 4), finite=True),)
    assert outs == (TensorSpec("y", "FP32", (10, 4)),)


@pytest.mark.parametrize(
    ("inputs", "field", "message"),
    [
        (
            [TensorSpec("z", "FP32", (2, 4))],
            "inputs",
            "declared ['z'] but the ONNX graph's inputs are ['x'] (expected the same names in the "
            "same order)",
        ),
        (
            [TensorSpec("x", "FP64", (2, 4))],
            "inputs[0].datatype",
            "declared FP64 but the ONNX graph's input 'x' is FP32",
        ),
        (
            [TensorSpec("x", "FP32", (2, 5))],
            "inputs[0].shape",
            "declared [2, 5] but the ONNX graph's input 'x' has per-item shape [?, 4]",
        ),
        (
            [TensorSpec("x", "FP32", (8,))],
            "inputs[0].shape",
            "declared [8] but the ONNX graph's input 'x' has per-item shape [?, 4]",
        ),
    ],
)
def test_config_disagreeing_with_graph(inputs: list[TensorSpec], field: str, message: str) -> None:
    m = OnnxModel(_dyn_graph())
    with pytest.raises(RepositoryError) as info:
        m.check_against_config(inputs, [], source="repo/m/model.toml")
    assert type(info.value) is RepositoryError
    assert str(info.value) == f"repo/m/model.toml: {field}: {message}"


def test_load_version_reports_toml_mismatch(repo: Path) -> None:
    toml = repo / "classifier" / "model.toml"
    toml.write_text(toml.read_text().replace("shape = [4]", "shape = [5]"))
    c = load_model_config(repo / "classifier")
    with pytest.raises(RepositoryError) as info:
        load_version(c, 1)
    assert str(info.value) == (
        f"{toml}: outputs[0].shape: declared [5] but the ONNX graph's output 'probs' has "
        "per-item shape [4]"
    )


def test_probabilities_check_names_a_graph_output(repo: Path) -> None:
    toml = repo / "classifier_fixed" / "model.toml"
    toml.write_text(toml.read_text() + '\n[output_checks]\nprobabilities = ["p"]\n')
    c = load_model_config(repo / "classifier_fixed")  # outputs come from the graph later
    with pytest.raises(RepositoryError) as info:
        load_version(c, 1)
    assert info.value.field == "output_checks.probabilities"
    assert info.value.message == "no output named 'p'; outputs: 'probs'"


def test_unsupported_tensor_type() -> None:
    data = graph_bytes(
        [("x", TensorProto.BFLOAT16, ["n", 2])],
        [("y", TensorProto.FLOAT, ["n", 2])],
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
    )
    with pytest.raises(
        RepositoryError,
        match=r"input 'x' has type tensor\(bfloat16\), which "
        "inferline cannot serve; supported: tensor\\(bool\\)",
    ):
        OnnxModel(data)


# --------------------------------------------------------------------------------------------
# Broken and escaping files


def test_broken_onnx_file(repo: Path) -> None:
    path = repo / "classifier" / "1" / "model.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(RepositoryError) as info:
        OnnxModel(path)
    assert info.value.file == str(path)
    assert info.value.message.startswith("not a loadable ONNX model: ")
    assert "protobuf" in info.value.message.lower()


def test_broken_onnx_fails_one_model_at_load(repo: Path) -> None:
    """The scan checks files and checksums; a broken graph is found when the version loads
    (the engine marks that model failed and loads the others)."""
    d = repo / "broken"
    d.mkdir()
    (d / "1").mkdir()
    (d / "1" / "model.onnx").write_bytes(b"\x08\x01garbage")
    (d / "model.toml").write_text('backend = "onnx"\n')
    scan = load_repository(repo)
    failures = {}
    for name, c in scan.configs.items():
        for v in c.versions_to_load:
            try:
                load_version(c, v, allow_code=True)  # the repository has a model.py
            except RepositoryError as e:
                failures[name] = e
    assert sorted(failures) == ["broken"]
    assert failures["broken"].file == str(d / "1" / "model.onnx")
    assert failures["broken"].message.startswith("not a loadable ONNX model")


def test_missing_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"nope\.onnx: cannot be read: No such file"):
        OnnxModel(tmp_path / "nope.onnx")


def _external_data_graph(location: str) -> bytes:
    t = TensorProto()
    t.name, t.data_type = "W", TensorProto.FLOAT
    t.dims.extend([2, 2])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
    return graph_bytes(
        [("x", TensorProto.FLOAT, ["n", 2])],
        [("y", TensorProto.FLOAT, ["n", 2])],
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [t],
    )


def test_external_data_inside_version_folder_loads(tmp_path: Path) -> None:
    d = tmp_path / "repo" / "ext"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.onnx").write_bytes(_external_data_graph("w.bin"))
    np.eye(2, dtype=np.float32).tofile(d / "1" / "w.bin")
    (d / "model.toml").write_text('backend = "onnx"\n')
    loaded = load_version(load_model_config(d), 1)
    x = np.array([[1, 2]], np.float32)
    np.testing.assert_array_equal(loaded.fn(x), x)


@pytest.mark.parametrize("location", ["../../secret.bin", "ABSOLUTE"])
def test_external_data_outside_is_refused(tmp_path: Path, location: str) -> None:
    secret = tmp_path / "secret.bin"
    np.eye(2, dtype=np.float32).tofile(secret)
    if location == "ABSOLUTE":
        location = str(secret)
    d = tmp_path / "repo" / "ext"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.onnx").write_bytes(_external_data_graph(location))
    (d / "model.toml").write_text('backend = "onnx"\n')
    with pytest.raises(RepositoryError) as info:
        load_version(load_model_config(d), 1)
    assert info.value.message.startswith("not a loadable ONNX model")
    assert "external data" in info.value.message.lower()


def test_external_data_through_symlink_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    np.eye(2, dtype=np.float32).tofile(secret)
    d = tmp_path / "repo" / "ext"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.onnx").write_bytes(_external_data_graph("w.bin"))
    (d / "1" / "w.bin").symlink_to(secret)
    (d / "model.toml").write_text('backend = "onnx"\n')
    scan = load_repository(tmp_path / "repo")
    assert "outside the repository" in scan.errors["ext"].message
    c = load_model_config(d, verify=False)
    with pytest.raises(RepositoryError, match=r"is a symlink to .* outside the repository"):
        load_version(c, 1)  # verify=True by default


def test_bytes_without_folder_refuse_external_data() -> None:
    with pytest.raises(RepositoryError, match="not a loadable ONNX model"):
        OnnxModel(_external_data_graph("w.bin"))
