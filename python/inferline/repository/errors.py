"""RepositoryError: what every repository failure raises, naming file, field and expectation."""

from __future__ import annotations

import os
from typing import Any

from ..errors import InferlineError

__all__ = ["RepositoryError"]


class RepositoryError(InferlineError, ValueError):
    """A model repository entry is invalid: names the file, the field and what was expected.

    ``file`` is the path as built from the root the caller gave; ``field`` is a dotted TOML
    path (``batching.max_batch_size``, ``inputs[0].shape``) or ``None`` when the whole file is
    at fault (missing, unreadable, wrong checksum).
    """

    def __init__(self, file: str | os.PathLike[str], field: str | None, message: str) -> None:
        self.file = os.fspath(file)
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.field:
            return f"{self.file}: {self.field}: {self.message}"
        return f"{self.file}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable despite the 3-arg __init__
        return (type(self), (self.file, self.field, self.message))
