"""The ``[native]`` table of model.toml: a native model's kernel ops, validated with pydantic.

Kept apart from :mod:`.schema` (the rest of model.toml) because it is also validated alone,
for native models built from Python (:func:`parse_native`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator

from ..kernels import ACTIVATIONS, IMAGE_LAYOUTS, LAYOUTS
from .fields import (
    Bool,
    NonEmptyStr,
    NonNegativeInt,
    Numbers,
    PositiveInt,
    PositiveNumber,
    RelativePath,
    Table,
    describe,
    expect,
    fail,
    one_of,
    quoted,
)

__all__ = ["OPS", "NativeOp", "NativeTable", "parse_native"]

# Keys each op accepts besides "op", and the ones it needs.
OPS: dict[str, tuple[str, ...]] = {
    "linear": ("weight", "bias", "activation", "layout"),
    "activation": ("activation",),
    "softmax": (),
    "layer_norm": ("weight", "bias", "eps"),
    "l2_normalize": ("eps",),
    "mean_pool": (),
    "topk": ("k",),
    "image_to_float": ("mean", "std", "layout"),
}
_OP_NEEDS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "activation": ("activation",),
    "topk": ("k",),
    "image_to_float": ("mean", "std"),
}
_OP_LAYOUTS: dict[str, Sequence[str]] = {
    "linear": tuple(LAYOUTS),
    "image_to_float": tuple(IMAGE_LAYOUTS),
}


class NativeOp(Table):
    """One op: which keys it takes depends on ``op`` (see OPS)."""

    op: Annotated[str, one_of(tuple(OPS))] = Field(description=f"one of {quoted(OPS)}")
    weight: NonEmptyStr | None = Field(
        default=None, description="a tensor name in the weights file (layer_norm: the scale, gamma)"
    )
    bias: NonEmptyStr | None = Field(
        default=None, description="a tensor name in the weights file (layer_norm: the shift, beta)"
    )
    activation: Annotated[str, one_of(tuple(ACTIVATIONS))] | None = Field(
        default=None, description="the function applied (linear: fused after the matrix product)"
    )
    layout: str | None = Field(
        default=None,
        description=f'linear: the weight\'s layout, one of {quoted(LAYOUTS)} (default "out_in", '
        f'PyTorch\'s [out, in]); image_to_float: one of {quoted(IMAGE_LAYOUTS)} (default "nchw")',
    )
    eps: PositiveNumber | None = Field(
        default=None,
        description="added for numerical stability (default: layer_norm 1e-5, l2_normalize 1e-12)",
    )
    k: PositiveInt | None = Field(
        default=None,
        description="topk: how many of the largest values (and their indices) to return",
    )
    mean: Numbers | None = Field(
        default=None, description="image_to_float: one mean per channel, on the [0, 1] scale"
    )
    std: Numbers | None = Field(
        default=None,
        description="image_to_float: one non-zero std per channel, on the [0, 1] scale",
    )

    @classmethod
    def allowed_keys(cls, data: dict[str, Any]) -> Sequence[str]:
        kind = data.get("op")
        if kind not in OPS:
            if "op" not in data:
                raise fail(f"required; expected one of {quoted(OPS)}", "op")
            raise fail(f"expected one of {quoted(OPS)}, got {kind!r}", "op")
        return ("op", *OPS[kind])

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        kind = data["op"]
        for key in _OP_NEEDS.get(kind, ()):
            if key not in data:
                raise fail(f"required by op = {kind!r}", key)
        if "layout" in data:
            layouts = _OP_LAYOUTS[kind]
            if data["layout"] not in layouts:
                raise fail(f"expected one of {quoted(layouts)}, got {data['layout']!r}", "layout")

    @model_validator(mode="after")
    def check_std(self) -> NativeOp:
        if self.std is not None and any(s == 0 for s in self.std):
            raise fail(f"expected non-zero values, got {self.std!r}", "std")
        return self


class NativeTable(Table):
    weights: RelativePath | None = Field(
        default=None,
        description="a .safetensors file in each version folder, memory-mapped once at load; "
        "needed when an op names a weight or bias",
    )
    device: NonEmptyStr = Field(
        default="cpu", description='where the ops run: "cpu", "cuda" or "cuda:N"'
    )
    allow_cpu_fallback: Bool = Field(
        default=False,
        description="with a cuda device but no CUDA build or no GPU: run on the CPU instead of "
        "failing to load",
    )
    blas_threads: NonNegativeInt = Field(
        default=0, description="OpenBLAS threads, process-wide; 0 leaves them as they are"
    )
    ops: Annotated[
        list[NativeOp], Field(min_length=1), expect("a non-empty array of op tables")
    ] = Field(description="a non-empty array of op tables")


def parse_native(table: object) -> NativeTable:
    """Validate a ``[native]`` table given from Python; ValueError names the field."""
    try:
        return NativeTable.model_validate(table)
    except ValidationError as e:
        field, message = describe(e, ("native",))
        raise ValueError(f"{field}: {message}") from None
