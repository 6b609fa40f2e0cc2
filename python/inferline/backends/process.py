"""Process instances: the parent side of ``isolation="process"``.

:func:`process_backend` turns a model (an importable callable, or a repository version named
by :class:`RepositoryTarget`) into a ``_core.ProcessBackend``: ``instances`` child processes,
each running :mod:`inferline.backends.process_worker` with its own GIL, fed batches through
shared memory by the native scheduler's worker threads (no pickling, no GIL in the parent).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _core
from ..repository.config import ISOLATIONS
from ..types import TensorSpec

__all__ = [
    "ISOLATIONS",
    "RepositoryTarget",
    "callable_target",
    "child_spec",
    "process_backend",
    "resolve_target",
]

START_TIMEOUT_S = 60.0  # a child must have loaded its model by then
STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL after this


@dataclass(frozen=True)
class RepositoryTarget:
    """A repository model version for a child to load by path (model.toml + version folder)
    through the same loaders as a thread instance; ``allow_code`` is the operator's key."""

    path: str
    root: str
    version: int
    allow_code: bool


def resolve_target(target: str) -> Any:
    """The object named ``"module:qualname"`` (imported)."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _not_importable(fn: object, why: str) -> ValueError:
    return ValueError(
        f"isolation='process' needs a model its child process can import by "
        f"'module:qualname'; {fn!r} {why}. Define it at the top level of an importable module."
    )


def callable_target(fn: Callable[..., Any]) -> str:
    """``"module:qualname"`` of ``fn``; ValueError when a child could not import it (a lambda,
    a closure, a bound method or an instance, or anything defined in ``__main__``)."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise _not_importable(fn, "has no __module__ and __qualname__")
    if module == "__main__":
        raise _not_importable(fn, "is defined in __main__, which a child process cannot import")
    if qualname.endswith("<lambda>"):
        raise _not_importable(fn, "is a lambda, which has no importable name")
    if "<locals>" in qualname:
        raise _not_importable(fn, "is defined inside a function, which has no importable name")
    try:
        obj = resolve_target(f"{module}:{qualname}")
    except (ImportError, AttributeError) as exc:
        raise _not_importable(fn, f"cannot be found as {module}:{qualname} ({exc})") from None
    if obj is not fn:
        raise _not_importable(fn, f"is not the object named {module}:{qualname}")
    return f"{module}:{qualname}"


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "dtype": str(spec.dtype), "shape": list(spec.shape)}


def child_spec(
    name: str,
    model: Callable[..., Any] | RepositoryTarget,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The JSON object a child gets on its command line: what to load and the tensors."""
    spec: dict[str, Any] = {
        "model": name,
        "sys_path": [p for p in sys.path if p],
        "inputs": [_spec_json(s) for s in inputs],
        "outputs": [_spec_json(s) for s in outputs],
    }
    if isinstance(model, RepositoryTarget):
        spec["repository"] = {
            "path": model.path,
            "root": model.root,
            "version": model.version,
            "allow_code": model.allow_code,
        }
    else:
        spec["target"] = callable_target(model)
    return spec


def process_backend(
    name: str,
    model: object,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    max_batch_size: int,
    instances: int,
    execution_timeout_ms: float,
) -> _core.ProcessBackend:
    """Starts ``instances`` children running ``model`` and returns the native backend; blocks
    until each has loaded it. ValueError for a model a child cannot import or undeclared
    outputs; RuntimeError with the child's message when one fails to load."""
    if isinstance(model, _core.Backend):
        raise ValueError(
            f"model {name!r}: isolation='process' runs Python models; a native Backend "
            "already runs without the GIL"
        )
    if not isinstance(model, RepositoryTarget) and not callable(model):
        raise TypeError(f"model {name!r}: expected a callable, got {type(model).__name__}")
    if not outputs:
        raise ValueError(
            f"model {name!r}: isolation='process' needs declared outputs (their dtypes and "
            "shapes size the shared memory the outputs come back through)"
        )
    if any(s.dtype.hasobject for s in [*inputs, *outputs]):
        raise ValueError(f"model {name!r}: isolation='process' cannot carry BYTES tensors")
    argv = [
        sys.executable,
        "-m",
        "inferline.backends.process_worker",
        json.dumps(child_spec(name, model, inputs, outputs)),
    ]
    return _core.ProcessBackend(
        name,
        argv,
        [s.item_nbytes for s in inputs],
        [s.item_nbytes for s in outputs],
        max_batch_size,
        instances,
        execution_timeout_ms,
        START_TIMEOUT_S,
        STOP_GRACE_S,
    )
