"""ONNX models in process instances: the server process reads the graph's signature from its
bytes and builds no InferenceSession (its children do); the signature it reads is the one
onnxruntime reports."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

import inferline  # noqa: E402
from inferline.backends.onnx import OnnxModel  # noqa: E402
from inferline.backends.onnx_external import ProtobufError  # noqa: E402
from inferline.backends.onnx_signature import graph_signature  # noqa: E402
from inferline.repository import RepositoryError  # noqa: E402
from inferline.types import TensorSpec  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "repository"
CLASSIFIER = EXAMPLES / "classifier"


def live_sessions() -> int:
    gc.collect()
    return sum(isinstance(o, ort.InferenceSession) for o in gc.get_objects())


def model_bytes(graph: onnx.GraphProto) -> bytes:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return bytes(m.SerializeToString())


def value(name: str, elem: int, shape: list[int | str | None] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def graphs() -> dict[str, bytes]:
    """Graphs whose signatures differ in the ways the reader must follow."""
    ident = [helper.make_node("Identity", ["x"], ["y"])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    sparse = helper.make_sparse_tensor(
        helper.make_tensor("s", TensorProto.FLOAT, [1], [3.0]),
        helper.make_tensor("s_idx", TensorProto.INT64, [1], [0]),
        [2],
    )
    two = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("ArgMax", ["a"], ["idx"], axis=1, keepdims=0),
    ]
    seq = [helper.make_node("SequenceConstruct", ["x"], ["y"])]
    seq_out = helper.make_tensor_sequence_value_info("y", TensorProto.UINT8, [2])
    return {
        "dynamic": model_bytes(
            helper.make_graph(
                ident,
                "g",
                [value("x", TensorProto.FLOAT, ["N", 4])],
                [value("y", TensorProto.FLOAT, ["N", 4])],
            )
        ),
        "unknown dims and no shape": model_bytes(
            helper.make_graph(
                ident,
                "g",
                [value("x", TensorProto.FLOAT16, None)],
                [value("y", TensorProto.FLOAT16, [None, 3, "k"])],
            )
        ),
        "initializers among the inputs": model_bytes(
            helper.make_graph(
                ident,
                "g",
                [value("x", TensorProto.INT64, [1, 2]), value("w", TensorProto.FLOAT, [2])],
                [value("y", TensorProto.INT64, [1, 2])],
                [w],
                sparse_initializer=[sparse],
            )
        ),
        "two in, two out": model_bytes(
            helper.make_graph(
                two,
                "g",
                [value(n, TensorProto.DOUBLE, ["B", 3]) for n in ("a", "b")],
                [
                    value("sum", TensorProto.DOUBLE, ["B", 3]),
                    value("idx", TensorProto.INT64, ["B"]),
                ],
            )
        ),
        "a sequence output": model_bytes(
            helper.make_graph(seq, "g", [value("x", TensorProto.UINT8, [2])], [seq_out])
        ),
    }


@pytest.mark.parametrize("kind", list(graphs()))
def test_the_signature_read_from_the_bytes_is_onnxruntimes(kind: str) -> None:
    data = graphs()[kind]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ins, outs = graph_signature(data)
    for ours, theirs in ((ins, session.get_inputs()), (outs, session.get_outputs())):
        assert [(p.name, p.type, list(p.shape)) for p in ours] == [
            (a.name, a.type, list(a.shape)) for a in theirs
        ]


def test_bytes_that_are_not_a_model_are_refused_with_the_file_named() -> None:
    with pytest.raises(ProtobufError) as bad:
        graph_signature(b"")
    assert str(bad.value) == "no graph"
    with pytest.raises(RepositoryError) as err:
        OnnxModel(b"\x3a\x05abc", source="m/1/model.onnx", session=False)
    assert str(err.value) == (
        "m/1/model.onnx: not a loadable ONNX model: protobuf truncated length-delimited field"
    )


def test_an_output_shape_left_to_inference_must_be_declared_without_a_session() -> None:
    data = model_bytes(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [value("x", TensorProto.FLOAT, ["N", 4])],
            [value("y", TensorProto.FLOAT, None)],
        )
    )
    assert graph_signature(data)[1][0].shape is None
    bare = OnnxModel(data, source="g.onnx", session=False)
    with pytest.raises(RepositoryError) as err:
        _ = bare.outputs
    assert str(err.value) == (
        "g.onnx: output 'y' has no shape in the graph (onnxruntime infers it in the model's "
        "child processes); declare its shape in model.toml [[outputs]]"
    )
    x, y = [TensorSpec("x", "FP32", (4,))], [TensorSpec("y", "FP32", (4,))]
    assert bare.check_against_config(x, y) == (tuple(x), tuple(y))
    assert OnnxModel(data).outputs == tuple(y)  # what the children's sessions infer


def test_a_signature_only_model_matches_the_full_one_and_cannot_run() -> None:
    path = CLASSIFIER / "1" / "model.onnx"
    full, bare = OnnxModel(path), OnnxModel(path, session=False)
    assert full.has_session and not bare.has_session
    assert (bare.inputs, bare.outputs, bare.batch_dynamic) == (
        full.inputs,
        full.outputs,
        full.batch_dynamic,
    )
    with pytest.raises(RuntimeError) as err:
        bare(np.zeros((1, 16), np.float32))
    assert str(err.value) == (
        f"{path}: this OnnxModel was loaded with session=False (the signature only; its child "
        "processes run the graph) and cannot run"
    )


@pytest.mark.asyncio
async def test_the_server_process_builds_no_session_for_a_process_onnx_model(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(CLASSIFIER, repo / "classifier")
    toml = repo / "classifier" / "model.toml"
    text = toml.read_text()
    assert 'isolation = "loop"\n' in text
    toml.write_text(text.replace('isolation = "loop"\n', 'isolation = "process"\n'))
    rows = np.random.default_rng(3).standard_normal((4, 16)).astype(np.float32)
    reference = OnnxModel(CLASSIFIER / "2" / "model.onnx")  # a session, in this process
    expected = reference(rows)
    sessions = live_sessions()
    async with inferline.Engine.from_repository(repo) as engine:
        views = [v for v in engine.live_versions() if v.name == "classifier"]
        assert sorted(v.version for v in views) == [1, 2]
        assert all(len(v.instance_pids()) == 1 and v.instance_pids()[0] > 0 for v in views)
        for i, row in enumerate(rows):
            got = await engine.infer("classifier", row)
            np.testing.assert_allclose(got, expected[i], rtol=1e-5, atol=1e-6)
        # Both versions loaded and served, from children: no session was built here.
        assert live_sessions() == sessions
        # What the engine holds for the two versions: their signatures only.
        held = [
            o
            for o in gc.get_objects()
            if isinstance(o, OnnxModel) and o.source.startswith(str(repo))
        ]
        assert sorted(Path(m.source).parent.name for m in held) == ["1", "2"]
        assert [m.has_session for m in held] == [False, False]
