"""The ``[onnx]`` and ``[python]`` tables of model.toml: where a version's graph or code is and
how it runs (the ``[native]`` and ``[text_encoder]`` tables have their own modules)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from .config import OnnxConfig, PythonConfig
from .fields import Bool, PositiveInt, RelativePath, Table, expect, fail

__all__ = ["OnnxTable", "PythonTable"]


class OnnxTable(Table):
    file: RelativePath = Field(
        default=OnnxConfig.file, description="the graph's file name in each version folder"
    )
    intra_op_threads: PositiveInt | None = Field(
        default=None,
        description="ONNX Runtime threads within one operator; left out: onnxruntime's default "
        "(one per physical core)",
    )
    inter_op_threads: PositiveInt | None = Field(
        default=None,
        description="ONNX Runtime threads across operators; left out: onnxruntime's default",
    )

    def config(self) -> OnnxConfig:
        return OnnxConfig(**self.model_dump())


class PythonTable(Table):
    allow_code: Bool = Field(
        default=False,
        description='must be true for backend = "python": model.py is code and runs inside '
        "the server process",
    )
    file: RelativePath = Field(
        default=PythonConfig.file, description="the Python file in each version folder (a .py file)"
    )
    entry: Annotated[
        str, Field(pattern="^[A-Za-z_][A-Za-z0-9_]*$"), expect("a Python function name")
    ] = Field(
        default=PythonConfig.entry,
        description="the batch function in that file: it receives a [B, *shape] array (a dict "
        "name -> array for several inputs) and returns the outputs in the same form",
    )

    @model_validator(mode="after")
    def check_file(self) -> PythonTable:
        if not self.file.endswith(".py"):
            raise fail(f"expected a .py file, got {self.file!r}", "file")
        return self

    def config(self) -> PythonConfig:
        return PythonConfig(**self.model_dump())
