"""The on-disk model repository: model.toml schema, version folders, checksums, path safety,
warm-up inputs and the model.py loader. Needs neither the native module nor a server."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from inferline.backends import load_version
from inferline.backends.python_file import load_python_model
from inferline.backends.warmup import make_warmup_inputs
from inferline.errors import InferlineError
from inferline.models import installed_minilm
from inferline.repository import (
    BatchingConfig,
    RepositoryError,
    WarmupConfig,
    check_model_name,
    load_model_config,
    load_repository,
    model_directory,
    read_artifact,
    resolve_inside,
    sha256_file,
    verify_version,
)
from inferline.types import TensorSpec

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

ONNX_IO = """
[[inputs]]
name = "x"
datatype = "FP32"
shape = [16]

[[outputs]]
name = "probs"
datatype = "FP32"
shape = [4]
"""


def write_model(
    root: Path,
    name: str,
    toml: str,
    files: dict[str, bytes | str] | None = None,
) -> Path:
    """A model folder with model.toml and files (default: 1/model.onnx with dummy bytes)."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.toml").write_text(textwrap.dedent(toml))
    for rel, data in (files if files is not None else {"1/model.onnx": b"onnx"}).items():
        p = directory / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
    return directory


def config_error(tmp_path: Path, toml: str, files: dict[str, bytes | str] | None = None):
    """Load a model written from ``toml`` and return the RepositoryError it raises."""
    directory = write_model(tmp_path / "models", "m", toml, files)
    with pytest.raises(RepositoryError) as info:
        load_model_config(directory)
    assert type(info.value) is RepositoryError
    return info.value


# --------------------------------------------------------------------------------------------
# The example repository


@pytest.fixture()
def example_repo(tmp_path: Path) -> Path:
    return make_repository.build_repository(tmp_path / "repo")


def test_example_repository_scans_clean(example_repo: Path) -> None:
    scan = load_repository(example_repo)
    assert scan.errors == {}
    assert sorted(scan.configs) == [
        "classifier",
        "classifier_fixed",
        "classifier_native",
        *(["minilm"] if installed_minilm() is not None else []),  # skipped without it
        "scaler",
    ]
    c = scan.configs["classifier"]
    assert c.backend == "onnx"
    assert c.inputs == (TensorSpec("x", "FP32", (16,), finite=True),)
    # [output_checks] finite = true marks every output finite.
    assert c.outputs == (TensorSpec("probs", "FP32", (4,), finite=True),)
    assert c.batching == BatchingConfig(
        max_batch_size=32,
        max_queue_delay_ms=2.0,
        max_queue_size=1024,
        priority_levels=2,
        max_queue_bytes=4194304,
        max_item_bytes=4096,
    )
    assert c.batching.as_kwargs()["max_batch_size"] == 32
    assert c.version_numbers == (1, 2)
    assert c.default_version == 2
    assert dict(c.version_policy.aliases) == {"stable": 1, "canary": 2}
    assert c.versions_to_load == (1, 2)
    assert c.warmup == WarmupConfig(batch_sizes=(1, 8, 32), inputs="random")
    assert c.onnx is not None and c.onnx.intra_op_threads == 1
    assert c.cache.enabled and c.cache.max_entries == 1024 and c.cache.max_bytes == 1 << 20
    assert c.output_checks.probabilities == ("probs",)
    assert c.output_checks.probabilities_tolerance == 1e-4
    v1 = c.version(1)
    assert v1.artifact == example_repo / "classifier" / "1" / "model.onnx"
    assert v1.sha256["model.onnx"] == sha256_file(v1.artifact)

    s = scan.configs["scaler"]
    assert s.backend == "python" and s.python is not None and s.python.allow_code
    assert s.warmup.inputs == "sample" and s.warmup.sample == "warmup.npz"
    f = scan.configs["classifier_fixed"]
    assert f.inputs == () and f.outputs == ()  # read from the graph at load time


def test_committed_example_repository_matches_the_script(tmp_path: Path) -> None:
    committed = EXAMPLES / "repository"
    fresh = make_repository.build_repository(tmp_path / "repo")
    names = sorted(p.relative_to(fresh).as_posix() for p in fresh.rglob("*") if p.is_file())
    assert names == sorted(
        p.relative_to(committed).as_posix() for p in committed.rglob("*") if p.is_file()
    )
    for rel in names:
        if rel.endswith(".onnx"):
            continue  # the protobuf bytes may differ between onnx releases
        assert (fresh / rel).read_bytes() == (committed / rel).read_bytes(), rel
    assert load_repository(committed).errors == {}


def test_build_repository_is_deterministic(tmp_path: Path) -> None:
    a = make_repository.build_repository(tmp_path / "a")
    b = make_repository.build_repository(tmp_path / "b")
    for p in a.rglob("*"):
        if p.is_file():
            assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()


# --------------------------------------------------------------------------------------------
# model.toml validation: every error names the file, the field and what was expected


def test_error_message_names_file_field_and_expectation(tmp_path: Path) -> None:
    e = config_error(tmp_path, 'backend = "onnx"\n[batching]\nmax_batch_size = -3\n')
    assert e.file == str(tmp_path / "models" / "m" / "model.toml")
    assert e.field == "batching.max_batch_size"
    assert str(e) == f"{e.file}: batching.max_batch_size: expected a positive integer, got -3"
    assert isinstance(e, InferlineError) and isinstance(e, ValueError)
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) and again.field == e.field


CASES = [
    # (model.toml body after backend = "onnx", field, message fragment)
    (
        '[batching]\npolicy = "greedy"',
        "batching.policy",
        "policy must be 'work_conserving', 'fixed_window' or 'latency_target', got 'greedy'",
    ),
    (
        '[batching]\npolicy = "latency_target"',
        "batching.policy",
        "policy latency_target needs max_latency > 0",
    ),
    (
        "[batching]\nmax_latency_ms = 0",
        "batching.max_latency_ms",
        "expected a positive number, got 0",
    ),
    (
        "[batching]\nexecution_timeout_ms = -1.0",
        "batching.execution_timeout_ms",
        "expected a number of milliseconds >= 0 (0: no bound), got -1.0",
    ),
    (
        "[batching]\nexecution_timeout_ms = 1e12",
        "batching.execution_timeout_ms",
        "expected at most 86400000",
    ),
    (
        "[batching]\nmax_batch_size = true",
        "batching.max_batch_size",
        "expected a positive integer, got True",
    ),
    (
        "[batching]\nmax_batch_size = 70000",
        "batching.max_batch_size",
        "expected at most 65536, got 70000",
    ),
    (
        "[batching]\npriority_levels = 17",
        "batching.priority_levels",
        "expected at most 16, got 17",
    ),
    (
        "[batching]\nidle_spin_us = -5",
        "batching.idle_spin_us",
        "expected a non-negative number of microseconds, got -5",
    ),
    (
        "[batching]\nmax_queue_size = 0",
        "batching.max_queue_size",
        "expected a positive integer, got 0",
    ),
    (
        "[batching]\npriority_levels = 1.5",
        "batching.priority_levels",
        "expected a positive integer, got 1.5",
    ),
    (
        "[batching]\nmax_queue_delay_ms = -1",
        "batching.max_queue_delay_ms",
        "expected a non-negative number of milliseconds, got -1",
    ),
    (
        "[batching]\nmax_queue_delay_ms = nan",
        "batching.max_queue_delay_ms",
        "expected a non-negative number of milliseconds, got nan",
    ),
    (
        '[batching]\nmax_queue_delay_ms = "2ms"',
        "batching.max_queue_delay_ms",
        "expected a non-negative number of milliseconds, got '2ms'",
    ),
    (
        "[batching]\nmax_bach_size = 8",
        "batching.max_bach_size",
        "unknown key (did you mean 'max_batch_size'?); expected one of",
    ),
    (
        "[batching]\nmax_queue_bytes = 100\nmax_item_bytes = 200",
        "batching.max_item_bytes",
        "expected at most max_queue_bytes (100), got 200",
    ),
    (
        ONNX_IO + "[batching]\nmax_item_bytes = 32",
        "batching.max_item_bytes",
        "one item of the declared inputs takes 64 bytes, more than max_item_bytes = 32",
    ),
    ("instance = 2", "instance", "unknown key (did you mean 'instances'?)"),
    ("instances = 0", "instances", "expected a positive integer, got 0"),
    ("instances = 257", "instances", "expected at most 256, got 257"),
    # strict types: no silent coercion of strings, floats or booleans
    (
        '[batching]\nmax_batch_size = "8"',
        "batching.max_batch_size",
        "expected a positive integer, got '8'",
    ),
    ("[cache]\nenabled = 1", "cache.enabled", "expected true or false, got 1"),
    (
        "[onnx]\nintra_op_threads = 2.0",
        "onnx.intra_op_threads",
        "expected a positive integer, got 2.0",
    ),
    ("batching = 3", "batching", "expected a table, got 3"),
    ('inputs = "x"', "inputs", "expected an array of tables ([[inputs]]), got 'x'"),
    (
        '[[inputs]]\ndatatype = "FP32"\nshape = [1]',
        "inputs[0].name",
        "required; expected the tensor's name",
    ),
    ('[[inputs]]\nname = "x"\nshape = [1]', "inputs[0].datatype", "required; expected one of"),
    (
        '[[inputs]]\nname = "x"\ndatatype = "float32"\nshape = [1]',
        "inputs[0].datatype",
        "expected one of BOOL, UINT8",
    ),
    (
        '[[inputs]]\nname = "x"\ndatatype = "FP32"',
        "inputs[0].shape",
        "required; expected a list of positive integers",
    ),
    (
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [-1, 16]',
        "inputs[0].shape",
        "expected a list of positive integers (leave out the batch dimension: shapes are per "
        "item), got [-1, 16]",
    ),
    (
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [16]\n'
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [16]',
        "inputs[1].name",
        "duplicate name 'x'",
    ),
    (
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [16]\nprobabilities = true',
        "inputs[0].probabilities",
        "unknown key",
    ),
    (
        '[[inputs]]\nname = "x"\ndatatype = "FP32"\nshape = [16]\nfinite = "yes"',
        "inputs[0].finite",
        "expected true or false, got 'yes'",
    ),
    (
        '[[outputs]]\nname = "k"\ndatatype = "INT64"\nshape = [1]\nprobabilities = true',
        "outputs[0].probabilities",
        "needs a floating-point datatype, but datatype is 'INT64'",
    ),
    (
        "[warmup]\nbatch_sizes = [0, 2]",
        "warmup.batch_sizes",
        "expected a list of positive integers, got [0, 2]",
    ),
    (
        "[batching]\nmax_batch_size = 8\n[warmup]\nbatch_sizes = [1, 64]",
        "warmup.batch_sizes",
        "expected sizes up to batching.max_batch_size (8), got [1, 64]",
    ),
    (
        '[warmup]\ninputs = "ones"',
        "warmup.inputs",
        "expected one of 'zeros', 'random', 'sample', got 'ones'",
    ),
    (
        '[warmup]\ninputs = "sample"',
        "warmup.sample",
        'required with inputs = "sample"; expected a .npz file name',
    ),
    (
        '[warmup]\ninputs = "sample"\nsample = "../x.npz"',
        "warmup.sample",
        "'..' is not allowed in paths, got '../x.npz'",
    ),
    (
        '[warmup]\ninputs = "sample"\nsample = "x.txt"',
        "warmup.sample",
        "expected a .npz file, got 'x.txt'",
    ),
    (
        '[warmup]\nsample = "x.npz"',
        "warmup.sample",
        "only used with inputs = \"sample\", but inputs = 'zeros'",
    ),
    ("[warmup]\nseed = -1", "warmup.seed", "expected an integer >= 0, got -1"),
    ("[versions]\ndefault = 7", "versions.default", "no version folder 7/; versions found: 1"),
    (
        '[versions]\ndefault = "newest"',
        "versions.default",
        "expected \"latest\" or a version number, got 'newest'",
    ),
    (
        "[versions]\naliases = { stable = 9 }",
        "versions.aliases.stable",
        "no version folder 9/; versions found: 1",
    ),
    (
        '[versions]\naliases = { "1" = 1 }',
        "versions.aliases.1",
        "expected an alias name that starts with a letter or '_'",
    ),
    (
        "[versions]\naliases = { latest = 1 }",
        "versions.aliases.latest",
        "and is not 'latest', got 'latest'",
    ),
    (
        '[versions]\naliases = { stable = "1" }',
        "versions.aliases.stable",
        "expected a version number, got '1'",
    ),
    (
        '[versions]\nload = "some"',
        "versions.load",
        "expected \"all\" or a list of version numbers, got 'some'",
    ),
    ("[versions]\nload = [1, 4]", "versions.load", "no version folder 4/"),
    ("[versions]\npin = 1", "versions.pin", "unknown key"),
    (
        '[artifacts]\nsha256 = { "1/model.onnx" = "abc" }',
        'artifacts.sha256."1/model.onnx"',
        "expected 64 hexadecimal digits, got 'abc'",
    ),
    (
        '[artifacts]\nsha256 = { "../other/1/model.onnx" = "' + "0" * 64 + '" }',
        'artifacts.sha256."../other/1/model.onnx"',
        "'..' is not allowed in paths",
    ),
    (
        '[artifacts]\nsha256 = { "1/../../x" = "' + "0" * 64 + '" }',
        'artifacts.sha256."1/../../x"',
        "'..' is not allowed in paths",
    ),
    (
        '[artifacts]\nsha256 = { "/etc/passwd" = "' + "0" * 64 + '" }',
        'artifacts.sha256."/etc/passwd"',
        "expected a relative path with '/' separators",
    ),
    (
        '[artifacts]\nsha256 = { "model.onnx" = "' + "0" * 64 + '" }',
        'artifacts.sha256."model.onnx"',
        'expected a path "<version>/<file>"',
    ),
    (
        '[artifacts]\nsha256 = { "3/model.onnx" = "' + "0" * 64 + '" }',
        'artifacts.sha256."3/model.onnx"',
        "no version folder 3/; versions found: 1",
    ),
    ('[artifacts]\nmd5 = { "1/model.onnx" = "x" }', "artifacts.md5", "unknown key"),
    ('[onnx]\nfile = "../../outside.onnx"', "onnx.file", "'..' is not allowed in paths"),
    ("[onnx]\nintra_op_threads = 0", "onnx.intra_op_threads", "expected a positive integer, got 0"),
    (
        "[python]\nallow_code = true",
        "python",
        "[python] is only for backend = 'python', but backend = 'onnx'",
    ),
    ("[native]\nops = []", "native", "[native] is only for backend = 'native'"),
    ("[cache]\nmax_entries = 0", "cache.max_entries", "expected a positive integer, got 0"),
    ("[cache]\nenable = true", "cache.enable", "unknown key (did you mean 'enabled'?)"),
    (
        "[output_checks]\nprobabilities_tolerance = 0",
        "output_checks.probabilities_tolerance",
        "expected a positive number, got 0",
    ),
    (
        ONNX_IO + '[output_checks]\nprobabilities = ["nope"]',
        "output_checks.probabilities",
        "no output named 'nope'; outputs: 'probs'",
    ),
    (
        "[output_checks]\nfinit = true",
        "output_checks.finit",
        "unknown key (did you mean 'finite'?)",
    ),
]


@pytest.mark.parametrize(("body", "field", "fragment"), CASES, ids=[c[1] for c in CASES])
def test_invalid_config_names_the_field(
    tmp_path: Path, body: str, field: str, fragment: str
) -> None:
    e = config_error(tmp_path, 'backend = "onnx"\n' + body + "\n")
    assert e.field == field, str(e)
    assert fragment in e.message, str(e)
    assert str(e).startswith(f"{tmp_path / 'models' / 'm' / 'model.toml'}: {field}: ")


def test_missing_backend(tmp_path: Path) -> None:
    e = config_error(tmp_path, "instances = 1\n")
    assert e.field == "backend"
    assert e.message == "required; expected one of 'onnx', 'python', 'native', 'text_encoder'"


def test_unknown_backend(tmp_path: Path) -> None:
    e = config_error(tmp_path, 'backend = "tensorflow"\n')
    assert e.field == "backend"
    assert e.message == (
        "expected one of 'onnx', 'python', 'native', 'text_encoder', got 'tensorflow'"
    )


def test_invalid_toml(tmp_path: Path) -> None:
    e = config_error(tmp_path, 'backend = "onnx\n')
    assert e.field is None
    assert e.message.startswith("not valid TOML: ")
    assert "line 1" in e.message


def test_python_backend_needs_allow_code(tmp_path: Path) -> None:
    toml = 'backend = "python"\n' + ONNX_IO
    files = {"1/model.py": "def predict(x):\n    return x\n"}
    e = config_error(tmp_path, toml, files)
    assert e.field == "python.allow_code"
    assert "expected allow_code = true in [python] to opt in" in e.message
    e = config_error(tmp_path, toml + "[python]\nallow_code = false\n", files)
    assert e.field == "python.allow_code"


def test_python_backend_needs_declared_io(tmp_path: Path) -> None:
    e = config_error(
        tmp_path, 'backend = "python"\n[python]\nallow_code = true\n', {"1/model.py": ""}
    )
    assert e.field == "inputs"
    assert e.message.startswith("required for backend = 'python'; expected [[inputs]]")


def test_python_entry_and_file_checked(tmp_path: Path) -> None:
    base = 'backend = "python"\n' + ONNX_IO + "[python]\nallow_code = true\n"
    e = config_error(tmp_path, base + 'entry = "not-a-name"\n', {"1/model.py": ""})
    assert (e.field, e.message) == (
        "python.entry",
        "expected a Python function name, got 'not-a-name'",
    )
    e = config_error(tmp_path, base + 'file = "model.txt"\n', {"1/model.py": ""})
    assert (e.field, e.message) == ("python.file", "expected a .py file, got 'model.txt'")


def test_native_table_is_validated_and_carried(tmp_path: Path) -> None:
    toml = (
        'backend = "native"\n' + ONNX_IO + '[native]\nweights = "w.safetensors"\n'
        'ops = [{ op = "linear", weight = "W1", activation = "relu" }, { op = "softmax" }]\n'
    )
    directory = write_model(tmp_path, "n", toml, {"1/w.safetensors": b"w"})
    c = load_model_config(directory)
    assert c.native == {
        "weights": "w.safetensors",
        "ops": [{"op": "linear", "weight": "W1", "activation": "relu"}, {"op": "softmax"}],
    }
    assert c.version(1).artifact == directory / "1" / "w.safetensors"
    (directory / "1" / "w.safetensors").unlink()
    with pytest.raises(RepositoryError, match=r"w\.safetensors: missing"):
        load_model_config(directory)


NATIVE_CASES = [
    # ([native] body, field, message)
    ('weights = "../w.safetensors"\nops = [{ op = "softmax" }]', "native.weights", None),
    ("", "native.ops", "required; expected a non-empty array of op tables"),
    ('ops = "matmul"', "native.ops", "expected a non-empty array of op tables, got 'matmul'"),
    ("ops = []", "native.ops", "expected a non-empty array of op tables, got []"),
    (
        'ops = [{ op = "matmul" }]',
        "native.ops[0].op",
        "expected one of 'linear', 'activation', 'softmax', 'layer_norm', 'l2_normalize', "
        "'mean_pool', 'topk', 'image_to_float', got 'matmul'",
    ),
    ('ops = [{ op = "linear" }]', "native.ops[0].weight", "required by op = 'linear'"),
    (
        'ops = [{ op = "softmax", weight = "W" }]',
        "native.ops[0].weight",
        "unknown key; expected one of 'op'",
    ),
    (
        'ops = [{ op = "topk", k = 0 }]',
        "native.ops[0].k",
        "expected a positive integer, got 0",
    ),
    (
        'ops = [{ op = "linear", weight = "W", layout = "nchw" }]',
        "native.ops[0].layout",
        "expected one of 'out_in', 'in_out', got 'nchw'",
    ),
    (
        'ops = [{ op = "image_to_float", mean = [0.5], std = [0.0] }]',
        "native.ops[0].std",
        "expected non-zero values, got [0.0]",
    ),
    (
        'fusion = { level = 2 }\nops = [{ op = "softmax" }]',
        "native.fusion",
        "unknown key; expected one of",
    ),
    ('blas_threads = -1\nops = [{ op = "softmax" }]', "native.blas_threads", None),
]


@pytest.mark.parametrize(
    ("body", "field", "message"), NATIVE_CASES, ids=[c[1] for c in NATIVE_CASES]
)
def test_native_table_checked_at_scan(
    tmp_path: Path, body: str, field: str, message: str | None
) -> None:
    e = config_error(tmp_path, 'backend = "native"\n' + ONNX_IO + "[native]\n" + body + "\n")
    assert e.field == field, str(e)
    if message is not None:
        assert e.message.startswith(message), str(e)


def test_native_backend_needs_its_table(tmp_path: Path) -> None:
    e = config_error(tmp_path, 'backend = "native"\n' + ONNX_IO)
    assert (e.field, e.message) == (
        "native.ops",
        "required; expected a non-empty array of op tables",
    )


def test_defaults(tmp_path: Path) -> None:
    c = load_model_config(write_model(tmp_path, "m", 'backend = "onnx"\n'))
    assert c.instances == 1
    assert c.batching == BatchingConfig() and c.batching.as_kwargs() == {}
    assert c.warmup == WarmupConfig()
    assert not c.cache.enabled
    assert not c.output_checks.enabled
    assert c.onnx is not None and c.onnx.file == "model.onnx"
    assert c.inputs == () and c.outputs == ()


def test_cache_table_enables_cache(tmp_path: Path) -> None:
    c = load_model_config(write_model(tmp_path, "m", 'backend = "onnx"\n[cache]\n'))
    assert c.cache.enabled and c.cache.max_entries == 1024 and c.cache.max_bytes == 64 << 20
    c = load_model_config(
        write_model(tmp_path, "m", 'backend = "onnx"\n[cache]\nenabled = false\n')
    )
    assert not c.cache.enabled


# --------------------------------------------------------------------------------------------
# Versions


def test_version_policy(tmp_path: Path) -> None:
    files = {f"{v}/model.onnx": b"x" for v in (1, 2, 3, 10)}
    d = write_model(tmp_path, "m", 'backend = "onnx"\n', files)
    (d / "notes").mkdir()  # non-numeric folders are not versions
    c = load_model_config(d)
    assert c.version_numbers == (1, 2, 3, 10)
    assert c.default_version == 10
    assert c.versions_to_load == (10,)
    assert c.resolve_version(None) == 10 and c.resolve_version("latest") == 10

    d = write_model(
        tmp_path,
        "m",
        'backend = "onnx"\n[versions]\ndefault = 2\naliases = { stable = 1, canary = 3 }\n',
        files,
    )
    c = load_model_config(d)
    assert c.default_version == 2
    assert c.versions_to_load == (1, 2, 3)
    assert c.resolve_version("canary") == 3 and c.resolve_version(1) == 1
    assert c.resolve_version("10") == 10
    with pytest.raises(
        RepositoryError,
        match=r"versions.aliases: no alias 'beta'; aliases: "
        r"stable, canary",
    ):
        c.resolve_version("beta")
    with pytest.raises(RepositoryError, match=r"no version folder 4/; versions found: 1, 2, 3, 10"):
        c.resolve_version(4)

    d = write_model(tmp_path, "m", 'backend = "onnx"\n[versions]\nload = "all"\n', files)
    assert load_model_config(d).versions_to_load == (1, 2, 3, 10)
    d = write_model(tmp_path, "m", 'backend = "onnx"\n[versions]\nload = [3, 1]\n', files)
    assert load_model_config(d).versions_to_load == (1, 3, 10)


def test_no_version_folders(tmp_path: Path) -> None:
    e = config_error(tmp_path, 'backend = "onnx"\n', {})
    assert e.file == str(tmp_path / "models" / "m")
    assert e.message.startswith("no version folders; expected numbered folders 1/, 2/")


def test_version_folder_with_leading_zero(tmp_path: Path) -> None:
    e = config_error(tmp_path, 'backend = "onnx"\n', {"01/model.onnx": b"x"})
    assert e.file == str(tmp_path / "models" / "m" / "01")
    assert "positive integers without leading zeros (1/, 2/, ...), got '01'" in e.message


def test_missing_model_toml(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(RepositoryError) as info:
        load_model_config(tmp_path / "m")
    assert (
        str(info.value) == f"{tmp_path / 'm' / 'model.toml'}: missing; every model folder "
        "needs a model.toml"
    )


# --------------------------------------------------------------------------------------------
# Artifacts: presence and sha256


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sha256_file_streams(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk_size=7) == _sha(data)


def test_sha256_mismatch_fails_only_that_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(
        repo,
        "good",
        f'backend = "onnx"\n[artifacts]\nsha256 = {{ "1/model.onnx" = "{_sha(b"onnx")}" }}\n',
    )
    write_model(
        repo,
        "bad",
        f'backend = "onnx"\n[artifacts]\nsha256 = {{ "1/model.onnx" = "{_sha(b"other")}" }}\n',
    )
    scan = load_repository(repo)
    assert sorted(scan.configs) == ["good"]
    e = scan.errors["bad"]
    assert type(e) is RepositoryError
    assert e.file == str(repo / "bad" / "1" / "model.onnx")
    assert e.message.startswith(f"sha256 mismatch: expected {_sha(b'other')}")
    assert f"got {_sha(b'onnx')}; refusing to load version 1" in e.message
    assert not scan.models["bad"].ok and scan.models["bad"].config is None
    # A parse-only scan (as a watch poll would do) leaves checksums to verify_version.
    c = load_repository(repo, verify=False).configs["bad"]
    with pytest.raises(RepositoryError, match="sha256 mismatch"):
        verify_version(c, 1)


def test_missing_artifact_fails_the_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", 'backend = "onnx"\n')
    write_model(repo, "nofile", 'backend = "onnx"\n', {"1/other.bin": b"x"})
    scan = load_repository(repo)
    assert sorted(scan.configs) == ["good"]
    e = scan.errors["nofile"]
    assert (
        str(e) == f"{repo / 'nofile' / '1' / 'model.onnx'}: missing (the onnx backend's model file)"
    )


def test_missing_listed_file_and_sample(tmp_path: Path) -> None:
    e = config_error(
        tmp_path, f'backend = "onnx"\n[artifacts]\nsha256 = {{ "1/extra.bin" = "{_sha(b"")}" }}\n'
    )
    assert e.message == "missing (listed in [artifacts] sha256)"
    e = config_error(tmp_path, 'backend = "onnx"\n[warmup]\ninputs = "sample"\nsample = "w.npz"\n')
    assert e.file.endswith(os.path.join("1", "w.npz"))
    assert e.message == "missing (the warm-up sample)"


def test_artifact_that_is_a_folder(tmp_path: Path) -> None:
    e = config_error(tmp_path, 'backend = "onnx"\n', {"1/model.onnx/x": b""})
    assert e.message == "expected a file (the onnx backend's model file)"


def test_only_versions_to_load_are_verified(tmp_path: Path) -> None:
    d = write_model(tmp_path, "m", 'backend = "onnx"\n', {"1/x": b"", "2/model.onnx": b"x"})
    c = load_model_config(d)  # version 1 lacks its file but only 2 (latest) is loaded
    assert c.versions_to_load == (2,)
    with pytest.raises(RepositoryError, match="missing"):
        verify_version(c, 1)


def test_read_artifact_checks_the_bytes_it_returns(tmp_path: Path) -> None:
    d = write_model(
        tmp_path,
        "m",
        f'backend = "onnx"\n[artifacts]\nsha256 = {{ "1/model.onnx" = "{_sha(b"onnx")}" }}\n',
    )
    c = load_model_config(d)
    assert read_artifact(c, 1) == b"onnx"
    (d / "1" / "model.onnx").write_bytes(b"swapped after the scan")
    with pytest.raises(RepositoryError, match="sha256 mismatch: expected"):
        read_artifact(c, 1)
    with pytest.raises(RepositoryError, match=r"'\.\.' is not allowed"):
        read_artifact(c, 1, "../model.toml")


# --------------------------------------------------------------------------------------------
# Names and paths: nothing outside the root is read


@pytest.mark.parametrize("name", ["..", ".", "../etc", "a/b", ".hidden", "a b", "", "é", "x\x00"])
def test_invalid_model_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(RepositoryError) as info:
        check_model_name(name, where=tmp_path)
    assert info.value.field == "name"
    assert info.value.message.startswith(
        "expected a model name of letters, digits, '_', '.' and '-' not starting with '.', got "
    )
    with pytest.raises(RepositoryError):
        model_directory(tmp_path, name)


def test_valid_model_names(tmp_path: Path) -> None:
    for name in ("resnet", "resnet-50", "bert_base.v2", "A9"):
        assert check_model_name(name) == name
        assert model_directory(tmp_path, name) == tmp_path / name


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A valid model outside the repository: reading it would make the scan succeed."""
    d = write_model(tmp_path / "outside", "evil", 'backend = "onnx"\n')
    (tmp_path / "outside" / "secret.onnx").write_bytes(b"secret")
    return d


def test_symlinked_model_folder_outside_root_is_refused(tmp_path: Path, outside: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", 'backend = "onnx"\n')
    (repo / "evil").symlink_to(outside, target_is_directory=True)
    scan = load_repository(repo)
    assert sorted(scan.configs) == ["good"]
    e = scan.errors["evil"]
    assert e.file == str(repo / "evil")
    assert e.message == (
        f"is a symlink that resolves to {outside.resolve()}, outside the repository "
        f"{repo.resolve()}; refused"
    )
    with pytest.raises(RepositoryError, match="outside the repository"):
        model_directory(repo, "evil")


def test_symlinked_model_toml_outside_root_is_refused(tmp_path: Path, outside: Path) -> None:
    repo = tmp_path / "repo"
    d = write_model(repo, "m", 'backend = "onnx"\n')
    (d / "model.toml").unlink()
    (d / "model.toml").symlink_to(outside / "model.toml")
    e = load_repository(repo).errors["m"]
    assert e.file == str(d / "model.toml") and "outside the repository" in e.message


def test_symlinked_version_folder_outside_root_is_refused(tmp_path: Path, outside: Path) -> None:
    repo = tmp_path / "repo"
    d = write_model(repo, "m", 'backend = "onnx"\n', {})
    (d / "1").symlink_to(outside / "1", target_is_directory=True)
    e = load_repository(repo).errors["m"]
    assert e.file == str(d / "1") and "is a symlink that resolves to" in e.message


def test_symlinked_artifact_outside_root_is_refused(tmp_path: Path, outside: Path) -> None:
    repo = tmp_path / "repo"
    d = write_model(repo, "m", 'backend = "onnx"\n', {"1/keep": b""})
    (d / "1" / "model.onnx").symlink_to(outside.parent / "secret.onnx")
    e = load_repository(repo).errors["m"]
    assert e.file == str(d / "1" / "model.onnx")
    assert "is a symlink to" in e.message and "outside the repository" in e.message
    # Even a file no config names is refused: onnxruntime may read external data from there.
    (d / "1" / "model.onnx").unlink()
    (d / "1" / "model.onnx").write_bytes(b"onnx")
    (d / "1" / "weights.bin").symlink_to(outside.parent / "secret.onnx")
    e = load_repository(repo).errors["m"]
    assert e.file == str(d / "1" / "weights.bin")


def test_symlinks_inside_root_are_allowed(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    d = write_model(repo, "m", 'backend = "onnx"\n[versions]\nload = "all"\n')
    (d / "2").symlink_to(d / "1", target_is_directory=True)
    (repo / "alias").symlink_to(d, target_is_directory=True)
    scan = load_repository(repo)
    assert scan.errors == {}
    assert scan.configs["m"].version_numbers == (1, 2)
    assert scan.configs["alias"].name == "alias"


def test_symlink_loop_fails_that_model(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", 'backend = "onnx"\n')
    d = write_model(repo, "loop", 'backend = "onnx"\n', {"1/keep": b""})
    (d / "1" / "model.onnx").symlink_to(d / "1" / "model.onnx")
    scan = load_repository(repo)
    assert sorted(scan.configs) == ["good"]
    assert scan.errors["loop"].file == str(d / "1" / "model.onnx")
    assert scan.errors["loop"].message.startswith("cannot be resolved: ")


def test_resolve_inside(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    assert (
        resolve_inside(tmp_path / "root", tmp_path / "root" / "a")
        == (tmp_path / "root" / "a").resolve()
    )
    with pytest.raises(RepositoryError) as info:
        resolve_inside(tmp_path / "root", tmp_path / "root" / ".." / "x", field="f")
    assert info.value.field == "f"
    assert info.value.message.startswith(f"resolves to {(tmp_path / 'x').resolve()}, outside")


def test_scan_skips_hidden_entries_and_files_and_reports_bad_names(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "good", 'backend = "onnx"\n')
    write_model(repo, ".git", "not toml at all [")
    (repo / "README.md").write_text("models")
    (repo / "bad name").mkdir()
    scan = load_repository(repo)
    assert sorted(scan.models) == ["bad name", "good"]
    assert scan.errors["bad name"].field == "name"


def test_scan_of_missing_root(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError) as info:
        load_repository(tmp_path / "nope")
    assert str(info.value) == f"{tmp_path / 'nope'}: model repository does not exist"
    (tmp_path / "file").write_text("")
    with pytest.raises(RepositoryError, match="model repository is not a folder"):
        load_repository(tmp_path / "file")


# --------------------------------------------------------------------------------------------
# Warm-up inputs


def test_warmup_sizes() -> None:
    assert WarmupConfig().sizes_for(32) == (1, 2, 4, 8, 16, 32)
    assert WarmupConfig().sizes_for(24) == (1, 2, 4, 8, 16, 24)
    assert WarmupConfig().sizes_for(1) == (1,)
    assert WarmupConfig(batch_sizes=(1, 8, 32)).sizes_for(1) == (1,)
    assert WarmupConfig(batch_sizes=(4, 2)).sizes_for(8) == (2, 4)
    with pytest.raises(ValueError, match="max_batch_size must be positive, got 0"):
        WarmupConfig().sizes_for(0)


SPECS = (
    TensorSpec("a", "FP32", (3,)),
    TensorSpec("b", "INT64", ()),
    TensorSpec("c", "BOOL", (2, 2)),
    TensorSpec("d", "BF16", (2,)),
)


def test_warmup_zeros_and_random() -> None:
    zs = make_warmup_inputs(WarmupConfig(), SPECS, 4)
    assert [z.shape for z in zs] == [(4, 3), (4,), (4, 2, 2), (4, 2)]
    assert [z.dtype for z in zs] == [s.dtype for s in SPECS]
    assert all(not z.any() for z in zs)
    r1 = make_warmup_inputs(WarmupConfig(inputs="random", seed=3), SPECS, 4)
    r2 = make_warmup_inputs(WarmupConfig(inputs="random", seed=3), SPECS, 4)
    assert [r.dtype for r in r1] == [s.dtype for s in SPECS]
    assert all(np.array_equal(a, b) for a, b in zip(r1, r2, strict=True))
    assert r1[0].std() > 0.1
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        make_warmup_inputs(WarmupConfig(), SPECS, 0)


def test_warmup_sample(example_repo: Path) -> None:
    c = load_repository(example_repo).configs["scaler"]
    xs = make_warmup_inputs(c.warmup, c.inputs, 6, config=c, version=1)
    assert len(xs) == 1 and xs[0].shape == (6, 8) and xs[0].dtype == np.float32
    with np.load(example_repo / "scaler" / "1" / "warmup.npz") as npz:
        rows = npz["x"]
    np.testing.assert_array_equal(xs[0], rows[[0, 1, 2, 3, 0, 1]])
    with pytest.raises(ValueError, match="needs the model config and version"):
        make_warmup_inputs(c.warmup, c.inputs, 2)


def _sample_config(tmp_path: Path, **arrays: np.ndarray):
    d = write_model(
        tmp_path,
        "m",
        'backend = "python"\n'
        + ONNX_IO.replace("[16]", "[2]")
        + '[python]\nallow_code = true\n[warmup]\ninputs = "sample"\n'
        'sample = "w.npz"\n',
        {"1/model.py": ""},
    )
    np.savez(d / "1" / "w.npz", **arrays)
    return load_model_config(d)


def test_warmup_sample_errors(tmp_path: Path) -> None:
    w = tmp_path / "m" / "1" / "w.npz"
    c = _sample_config(tmp_path, y=np.zeros(2, np.float32))
    with pytest.raises(RepositoryError) as info:
        make_warmup_inputs(c.warmup, c.inputs, 2, config=c, version=1)
    assert (
        str(info.value) == f"{w}: x: missing; the sample needs one array per input ('x'), found 'y'"
    )
    c = _sample_config(tmp_path, x=np.zeros((3, 5), np.float32))
    with pytest.raises(RepositoryError, match=r"x: expected shape \[2\] or \[N, 2\], got \[3, 5\]"):
        make_warmup_inputs(c.warmup, c.inputs, 2, config=c, version=1)
    c = _sample_config(tmp_path, x=np.array(["a", "b"]))
    with pytest.raises(RepositoryError, match=r"x: expected dtype float32 \(FP32\), got <U1"):
        make_warmup_inputs(c.warmup, c.inputs, 2, config=c, version=1)
    c = _sample_config(tmp_path, x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(RepositoryError, match=r"not a readable \.npz file"):  # no pickle, ever
        make_warmup_inputs(c.warmup, c.inputs, 2, config=c, version=1)
    c = _sample_config(tmp_path, x=np.ones(2, np.float32))  # one item is tiled
    (x,) = make_warmup_inputs(c.warmup, c.inputs, 3, config=c, version=1)
    np.testing.assert_array_equal(x, np.ones((3, 2), np.float32))


# --------------------------------------------------------------------------------------------
# model.py (python backend)


def test_python_model_refused_without_allow_code(example_repo: Path) -> None:
    path = example_repo / "scaler" / "1" / "model.py"
    before = set(sys.modules)
    with pytest.raises(RepositoryError) as info:
        load_python_model(path, allow_code=False)
    assert info.value.field == "python.allow_code"
    assert info.value.message.startswith("refusing to run model.py: running model.py executes")
    assert set(sys.modules) == before


def test_python_model_needs_the_operators_key_too(example_repo: Path) -> None:
    # The repository says allow_code = true; without the operator's key nothing runs.
    c = load_repository(example_repo).configs["scaler"]
    assert c.python is not None and c.python.allow_code
    before = set(sys.modules)
    with pytest.raises(RepositoryError) as info:
        load_version(c, 1)
    assert info.value.field == "python.allow_code"
    assert "[python] allow_code = true in model.toml" in info.value.message
    assert "`inferline serve --allow-code`" in info.value.message
    assert "Engine.from_repository(..., allow_code=True)" in info.value.message
    assert info.value.message.endswith("the operator's opt-in was not given")
    assert set(sys.modules) == before


def test_python_model_module_leaves_sys_modules_with_the_model(tmp_path: Path) -> None:
    p = tmp_path / "m" / "1" / "model.py"
    p.parent.mkdir(parents=True)
    p.write_text("def predict(x):\n    return x\n")
    f = load_python_model(p, allow_code=True, root=tmp_path)
    name = f.module_name
    assert sys.modules[name].predict is f.fn
    f.unload()
    assert name not in sys.modules
    g = load_python_model(p, allow_code=True, root=tmp_path)
    name = g.module_name
    assert name in sys.modules
    del g  # the last reference: the module goes with it
    assert name not in sys.modules


def test_python_model_from_repository(example_repo: Path) -> None:
    c = load_repository(example_repo).configs["scaler"]
    loaded = load_version(c, 1, allow_code=True)
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_array_equal(loaded.fn(x), 2 * x + 1)
    assert loaded.inputs == c.inputs and loaded.outputs == c.outputs
    assert loaded.batching.max_batch_size == 16 and loaded.notes == ()
    assert loaded.warmup_sizes(8) == (1, 16)
    assert loaded.platform == "python"
    (w,) = loaded.warmup_inputs(16)
    assert w.shape == (16, 8) and w.dtype == np.float32
    assert not list((example_repo / "scaler").rglob("__pycache__"))  # nothing written


def test_python_model_modules_are_fresh(tmp_path: Path) -> None:
    p = tmp_path / "m" / "1" / "model.py"
    p.parent.mkdir(parents=True)
    p.write_text("calls = []\ndef predict(x):\n    calls.append(1)\n    return len(calls)\n")
    f1 = load_python_model(p, allow_code=True, root=tmp_path)
    f2 = load_python_model(p, allow_code=True, root=tmp_path)
    assert f1.__module__ != f2.__module__
    assert f1.__module__.startswith("inferline_model_m_1_")
    assert (f1(None), f1(None), f2(None)) == (1, 2, 1)
    assert sys.modules[f1.__module__].__file__ == str(p.resolve())


def test_python_model_errors(tmp_path: Path) -> None:
    p = tmp_path / "m" / "1" / "model.py"
    p.parent.mkdir(parents=True)
    p.write_text("def predict(x)\n    return x\n")
    with pytest.raises(RepositoryError) as info:
        load_python_model(p, allow_code=True)
    assert info.value.message.startswith("failed to import: SyntaxError")
    p.write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(RepositoryError, match="failed to import: RuntimeError: no GPU here"):
        load_python_model(p, allow_code=True)
    p.write_text("predict = 3\n")
    with pytest.raises(RepositoryError) as info:
        load_python_model(p, allow_code=True)
    assert info.value.field == "python.entry"
    assert info.value.message.startswith("model.py has a non-callable 'predict'")
    with pytest.raises(RepositoryError, match=r"model\.py defines no 'run'"):
        load_python_model(p, allow_code=True, entry="run")
    with pytest.raises(RepositoryError, match=r"missing \(the python backend's model.py\)"):
        load_python_model(tmp_path / "nope.py", allow_code=True)


def test_python_model_outside_root_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("def predict(x):\n    return x\n")
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "model.py").symlink_to(outside)
    with pytest.raises(RepositoryError, match="outside the repository"):
        load_python_model(tmp_path / "repo" / "model.py", allow_code=True, root=tmp_path / "repo")


def test_python_model_sha256_checked_on_load(example_repo: Path) -> None:
    c = load_repository(example_repo).configs["scaler"]
    (example_repo / "scaler" / "1" / "model.py").write_text("def predict(x):\n    return x\n")
    with pytest.raises(RepositoryError, match="sha256 mismatch"):
        # the bytes read are checked even without verify
        load_version(c, 1, verify=False, allow_code=True)
