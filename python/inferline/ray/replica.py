"""The Serve deployment class: one inferline engine per replica, served over Ray's HTTP proxy
(inferline's own v2 REST app) and through ``DeploymentHandle`` methods.

Serve builds the replica in three steps on the replica's user-code event loop, which is where
the engine then runs: ``__init__`` makes the engine (nothing loads yet),
``__serve_build_asgi_app__`` returns :func:`inferline.server.create_app` over it, and Serve
runs that app's lifespan, which starts the engine (loads and warms every model) and, when the
replica stops, drains it for up to ``drain_timeout`` seconds. Serve counts the replica running
only once the lifespan has started, so a replica takes traffic only with its models warm.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from ray import serve
from starlette.applications import Starlette

from ..engine import Engine
from ..errors import ModelNotReady
from ..server import create_app
from .autoscaling import engine_load

__all__ = ["InferlineReplica"]


# Serve's ingress wrapper, late-bound: the app comes from __serve_build_asgi_app__ on the
# replica, after the engine exists.
@serve.ingress()
class InferlineReplica:
    """One replica: an engine from ``repository`` and its v2 REST app.

    ``engine_options`` go to :meth:`inferline.Engine.from_repository` (``allow_code``,
    ``strict``, ``blas_threads``, ``watch``, ``poll_interval``); ``server_options`` to
    :func:`inferline.server.create_app` (``max_in_flight``, ``max_body_bytes``, ...), with
    ``drain_timeout`` the seconds accepted requests get when the replica stops.
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        *,
        engine_options: Mapping[str, Any] | None = None,
        server_options: Mapping[str, Any] | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        engine_options = dict(engine_options or {})
        self._strict = bool(engine_options.get("strict", False))
        self._engine = Engine.from_repository(repository, **engine_options)
        self._server_options = dict(server_options or {})
        self._drain_timeout = float(drain_timeout)

    def __serve_build_asgi_app__(self) -> Starlette:
        return create_app(
            self._engine,
            drain_timeout=self._drain_timeout,
            strict_readiness=self._strict,
            **self._server_options,
        )

    # -- through a DeploymentHandle -----------------------------------------------------------
    async def infer(
        self,
        model: str,
        inputs: Any,
        *,
        priority: int = 0,
        timeout: float | None = None,
        version: int | str | None = None,
    ) -> Any:
        """One item through ``model`` (``Engine.infer``): an array without the batch
        dimension, or a dict name -> array; answers an array (a dict for several outputs).
        The engine's errors reach the caller as themselves (``QueueFullError`` is the
        retryable one)."""
        return await self._engine.infer(
            model, inputs, priority=priority, timeout=timeout, version=version
        )

    async def infer_batch(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray] | np.ndarray,
        *,
        priority: int = 0,
        timeout: float | None = None,
        version: int | str | None = None,
    ) -> Any:
        """N rows with a leading dimension N through ``model`` (``Engine.infer_batch``); each
        row is an item for this replica's batcher."""
        return await self._engine.infer_batch(
            model, inputs, priority=priority, timeout=timeout, version=version
        )

    async def models(self) -> list[dict[str, Any]]:
        """This replica's repository index (every model version, its state and reason)."""
        return self._engine.repository_index()

    def replica_actor_name(self) -> str:
        """The Ray actor name of the replica that answers (namespace ``serve``), e.g. for
        ``ray.get_actor`` in operations and tests."""
        return serve.get_replica_context().replica_id.to_full_id_str()

    # -- Serve's hooks ------------------------------------------------------------------------
    async def check_health(self) -> None:
        """Raises ``ModelNotReady`` while the engine is not ready (the reason, as
        ``/v2/health/ready`` gives it); Serve then stops routing to this replica and
        replaces it."""
        why = self._engine.readiness(require_all=self._strict)
        if why is not None:
            raise ModelNotReady(f"inferline engine not ready: {why}")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine's rows in flight and queued, for :func:`engine_load_policy`."""
        return engine_load(self._engine)
