"""inferline: serve AI models from Python with a native batching core.

``Engine`` batches concurrent ``await engine.infer(...)`` calls in C++ worker threads, off the
GIL and off the event loop; ``batch`` turns a batch function into an awaitable per-item one.
"""

from __future__ import annotations

from . import _core as _core
from .batch import batch
from .engine import Answer, Batching, Engine, ModelInfo, Prepared, Stage, StageError
from .errors import (
    DeadlineExceeded,
    EngineStopped,
    InferlineError,
    InvalidInput,
    ModelError,
    ModelNotFound,
    ModelNotReady,
    QueueFullError,
)
from .types import TensorSpec

__version__ = _core.__version__

__all__ = [
    "Answer",
    "Batching",
    "DeadlineExceeded",
    "Engine",
    "EngineStopped",
    "InferlineError",
    "InvalidInput",
    "ModelError",
    "ModelInfo",
    "ModelNotFound",
    "ModelNotReady",
    "Prepared",
    "QueueFullError",
    "Stage",
    "StageError",
    "TensorSpec",
    "__version__",
    "batch",
    "build_info",
]


def build_info() -> dict[str, object]:
    """What the native core was built with, and whether a CUDA device is visible now."""
    info = dict(_core.build_info())
    count = _core.cuda_device_count()
    info["cuda_device_count"] = count
    info["cuda_devices"] = [_core.cuda_device_name(i) for i in range(count)]
    return info
