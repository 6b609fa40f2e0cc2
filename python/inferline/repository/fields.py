"""The building blocks of the model.toml schema: strict value types that carry their own
"expected ..." words, the base table (unknown keys and missing keys), and the translation of a
pydantic ValidationError into a dotted TOML field and a message.

Pydantic's own messages ("Input should be greater than 0") are replaced: a value type wraps
its validation in :func:`expect`, and a check that spans fields raises :func:`fail` with the
key(s) it blames below the validated value.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..types import DATATYPES, LIMITS
from .paths import VERSION_RE, relative_path_problem

# ---------------------------------------------------------------------------------------------
# Errors: every message this module writes is final; the location may reach below the field.

_OURS = "inferline_expected"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def fail(message: str, *at: str | int) -> PydanticCustomError:
    """An error with a finished message; ``at`` names the key(s) below the validated value."""
    return PydanticCustomError(_OURS, "{message}", {"message": message, "at": at})


def quoted(items: Iterable[object]) -> str:
    return ", ".join(repr(i) for i in items)


def expect(what: str | Callable[[Any], str]) -> WrapValidator:
    """Replaces pydantic's message for a value of the wrong type or range by ``expected
    <what>, got <value>`` (or ``expected at most <le>``); errors that a nested table already
    worded pass through unchanged."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as e:
            first = e.errors()[0]
            if first["type"] == _OURS:
                raise
            if first["type"] == "less_than_equal" and not first["loc"]:
                raise fail(f"expected at most {first['ctx']['le']}, got {value!r}") from None
            text = what(value) if callable(what) else what
            raise fail(f"expected {text}, got {value!r}") from None

    return WrapValidator(check)


def one_of(choices: Sequence[str]) -> PlainValidator:
    def check(value: Any) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        raise fail(f"expected one of {quoted(choices)}, got {value!r}")

    return PlainValidator(check)


def _relative_path(value: Any) -> str:
    problem = relative_path_problem(value)
    if problem is not None:
        raise fail(problem)
    return str(PurePosixPath(value))


def field_path(loc: Iterable[str | int]) -> str:
    """A pydantic location as a TOML path: ``inputs[0].shape``, ``artifacts.sha256."1/a.onnx"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for an error in a dict key
            key = part if _BARE_KEY.fullmatch(part) else f'"{part}"'
            out += f".{key}" if out else key
    return out


def describe(e: ValidationError, prefix: tuple[str, ...] = ()) -> tuple[str, str]:
    """(field, message) of the first error, in the order of the file's fields."""
    first = e.errors()[0]
    ctx = first.get("ctx") or {}
    loc = (*prefix, *first["loc"], *ctx.get("at", ()))
    message = ctx["message"] if first["type"] == _OURS else first["msg"]
    return field_path(loc), message


# ---------------------------------------------------------------------------------------------
# Value types: the words after "expected" travel with the type.

PositiveInt = Annotated[int, Field(strict=True, ge=1), expect("a positive integer")]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0), expect("an integer >= 0")]
PositiveNumber = Annotated[
    float, Field(strict=True, gt=0, allow_inf_nan=False), expect("a positive number")
]
Bool = Annotated[bool, Field(strict=True), expect("true or false")]
NonEmptyStr = Annotated[str, Field(strict=True, min_length=1), expect("a non-empty string")]
RelativePath = Annotated[str, PlainValidator(_relative_path)]
VersionNumber = Annotated[int, Field(strict=True, ge=1), expect("a version number")]
Numbers = Annotated[
    list[Annotated[float, Field(strict=True)]], Field(min_length=1), expect("a list of numbers")
]
PositiveInts = list[Annotated[int, Field(strict=True, ge=1)]]


BatchSize = Annotated[
    int, Field(strict=True, ge=1, le=LIMITS.max_batch_size), expect("a positive integer")
]
QueueSize = Annotated[
    int, Field(strict=True, ge=1, le=LIMITS.max_queue_size), expect("a positive integer")
]
PriorityLevels = Annotated[
    int, Field(strict=True, ge=1, le=LIMITS.max_priority_levels), expect("a positive integer")
]
Instances = Annotated[
    int, Field(strict=True, ge=1, le=LIMITS.max_instances), expect("a positive integer")
]
Milliseconds = Annotated[
    float,
    Field(strict=True, ge=0, allow_inf_nan=False),
    expect("a non-negative number of milliseconds"),
]
Microseconds = Annotated[
    float,
    Field(strict=True, ge=0, allow_inf_nan=False),
    expect("a non-negative number of microseconds"),
]


def _datatype(value: Any) -> str:
    if isinstance(value, str) and value.upper() in DATATYPES:
        return value.upper()
    raise fail(f"expected one of {', '.join(DATATYPES)}, got {value!r}")


def _shape_words(value: Any) -> str:
    if isinstance(value, list) and value and value[0] in (-1, 0, "batch"):
        return "a list of positive integers (leave out the batch dimension: shapes are per item)"
    return "a list of positive integers"


def _alias_name(value: Any) -> str:
    if isinstance(value, str) and _ALIAS_RE.fullmatch(value) and value != "latest":
        return value
    raise fail(
        "expected an alias name that starts with a letter or '_' and is not "
        f"'latest', got {value!r}"
    )


def _artifact_path(value: Any) -> str:
    rel = _relative_path(value)
    first, *rest = PurePosixPath(rel).parts
    if not VERSION_RE.fullmatch(first) or not rest:
        raise fail(f'expected a path "<version>/<file>", got {value!r}')
    return rel


_ALIAS_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
Datatype = Annotated[str, PlainValidator(_datatype)]
Shape = Annotated[PositiveInts, expect(_shape_words)]
AliasName = Annotated[str, PlainValidator(_alias_name)]
ArtifactPath = Annotated[str, PlainValidator(_artifact_path)]


def missing_version(v: int, found: Sequence[int]) -> str:
    return f"no version folder {v}/; versions found: {', '.join(map(str, found))}"


# ---------------------------------------------------------------------------------------------
# Tables


class Table(BaseModel):
    """A TOML table: unknown keys are errors (with a suggestion), required keys say what they
    expect (the field's ``description``), values are strict."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def check_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise fail(f"expected a table, got {data!r}")
        allowed = cls.allowed_keys(data)
        for key in data:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                did = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise fail(f"unknown key{did}; expected one of {quoted(sorted(allowed))}", key)
        for name, info in cls.model_fields.items():
            if info.is_required() and name not in data:
                raise fail(f"required; expected {info.description}", name)
        cls.check_raw(data)
        return data

    @classmethod
    def allowed_keys(cls, data: dict[str, Any]) -> Sequence[str]:
        return tuple(cls.model_fields)

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        """Checks on the raw table that must come before its values are validated."""
