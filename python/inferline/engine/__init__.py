"""The asyncio engine, one room per purpose; a request goes ``Engine.infer`` (engine.py) ->
the version's native scheduler (versions.py) -> the core's completion queue, drained on the
loop into its future (runtime.py).

- ``engine.py``: the ``Engine``: start/stop, register and retire versions, infer/infer_batch.
- ``catalog.py``: the engine's ``ModelCatalog`` base: aliases, default versions, introspection.
- ``versions.py``: ``Batching``, ``ModelInfo``, a served version and its scheduler, a model's
  versions, aliases and default, and the ``Router`` that picks the version of a request.
- ``runtime.py``: the native core on the event loop; warm-up, retiring and draining versions.
- ``rows.py``: ``infer_batch``'s path (N rows, one native call, one future) and the result cache.
- ``inputs.py``: input checks and coercion against a list of ``TensorSpec``.
- ``stages.py``: pipeline stages (``Stage``): batch-wise Python steps before and after a core.
- ``repo_sync.py``: ``Engine.from_repository``'s model source: load, watch, the index.
"""

from __future__ import annotations

from .engine import Engine, ModelSource
from .stages import Answer, Prepared, Stage, StageError
from .versions import Batching, ModelInfo, VersionView

__all__ = [
    "Answer",
    "Batching",
    "Engine",
    "ModelInfo",
    "ModelSource",
    "Prepared",
    "Stage",
    "StageError",
    "VersionView",
]
