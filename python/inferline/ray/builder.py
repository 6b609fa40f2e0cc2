"""Builders: the Serve deployment with inferline's defaults, a bound application, and the
``serve run`` entry point.

```
serve run inferline.ray:build repository=examples/repository num_replicas=2 allow_code=true
```

or from Python: ``serve.run(inferline.ray.app("examples/repository", num_replicas=2))``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.serve import Application, Deployment
from ray.serve.config import AutoscalingConfig

from .autoscaling import autoscaling_config
from .replica import InferlineReplica

__all__ = ["DEFAULT_MAX_ONGOING_REQUESTS", "app", "build", "deployment"]

# Requests Serve lets into one replica at once. Serve's default (5) would starve the batcher;
# beyond the engine's queues inferline answers 503 with Retry-After itself.
DEFAULT_MAX_ONGOING_REQUESTS = 1024
# Seconds Serve waits, past the drain, before it kills a stopping replica.
SHUTDOWN_MARGIN_S = 5.0


def deployment(
    *,
    name: str = "inferline",
    num_replicas: int | str | None = 1,
    autoscaling: AutoscalingConfig | Mapping[str, Any] | None = None,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
    drain_timeout: float = 30.0,
    ray_actor_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Deployment:
    """The Serve deployment of :class:`InferlineReplica`, not yet bound to a repository
    (``.bind(repository, engine_options=..., server_options=..., drain_timeout=...)``).

    ``autoscaling`` (see :func:`inferline.ray.autoscaling_config`) replaces ``num_replicas``.
    Stopping replicas get ``drain_timeout`` plus a margin before Serve kills them; pass the
    same ``drain_timeout`` to ``bind``. ``options`` go to ``serve.deployment`` as they are.
    """
    if not isinstance(max_ongoing_requests, int) or max_ongoing_requests < 1:
        raise ValueError(
            f"max_ongoing_requests must be a positive int, got {max_ongoing_requests!r}"
        )
    if not drain_timeout >= 0:
        raise ValueError(f"drain_timeout must be >= 0 seconds, got {drain_timeout!r}")
    kwargs: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": max_ongoing_requests,
        "graceful_shutdown_timeout_s": float(drain_timeout) + SHUTDOWN_MARGIN_S,
        **options,
    }
    if autoscaling is not None:
        kwargs["autoscaling_config"] = autoscaling
    elif num_replicas is not None:
        kwargs["num_replicas"] = num_replicas
    if ray_actor_options is not None:
        kwargs["ray_actor_options"] = dict(ray_actor_options)
    return serve.deployment(**kwargs)(InferlineReplica)


def app(
    repository: str | os.PathLike[str],
    *,
    allow_code: bool = False,
    strict: bool = False,
    blas_threads: int | None = None,
    watch: bool = False,
    poll_interval: float = 5.0,
    drain_timeout: float = 30.0,
    server_options: Mapping[str, Any] | None = None,
    **deployment_options: Any,
) -> Application:
    """A Serve application: every replica serves the models of ``repository`` (a path each
    replica's node can read). Engine options as for ``Engine.from_repository``;
    ``server_options`` as for ``inferline.server.create_app``; the rest as for
    :func:`deployment` (``num_replicas``, ``autoscaling``, ``ray_actor_options``, ...)."""
    path = os.fspath(repository)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model repository {path!r} is not a folder")
    engine_options = {
        "allow_code": allow_code,
        "strict": strict,
        "blas_threads": blas_threads,
        "watch": watch,
        "poll_interval": poll_interval,
    }
    d = deployment(drain_timeout=drain_timeout, **deployment_options)
    return d.bind(
        os.path.abspath(path),
        engine_options=engine_options,
        server_options=dict(server_options or {}),
        drain_timeout=drain_timeout,
    )


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def build(args: dict[str, str]) -> Application:
    """``serve run inferline.ray:build repository=PATH [num_replicas=N] [allow_code=true]
    [strict=true] [drain_timeout=S] [max_ongoing_requests=N]
    [autoscale_max_replicas=N autoscale_target_in_flight=R]`` (Serve's application builder:
    one dict of strings). Unknown keys are refused, naming the known ones."""
    known = {
        "repository",
        "num_replicas",
        "allow_code",
        "strict",
        "drain_timeout",
        "max_ongoing_requests",
        "autoscale_max_replicas",
        "autoscale_target_in_flight",
    }
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown}; known: {sorted(known)}")
    if "repository" not in args:
        raise ValueError("missing argument: repository=PATH (a model repository folder)")
    kwargs: dict[str, Any] = {}
    for key in ("allow_code", "strict"):
        if key in args:
            kwargs[key] = _flag(key, args[key])
    for key in ("num_replicas", "max_ongoing_requests"):
        if key in args:
            kwargs[key] = _number(key, args[key], int)
    if "drain_timeout" in args:
        kwargs["drain_timeout"] = _number("drain_timeout", args["drain_timeout"], float)
    if "autoscale_max_replicas" in args or "autoscale_target_in_flight" in args:
        kwargs["autoscaling"] = autoscaling_config(
            max_replicas=_number(
                "autoscale_max_replicas", args.get("autoscale_max_replicas", "4"), int
            ),
            target_in_flight=_number(
                "autoscale_target_in_flight", args.get("autoscale_target_in_flight", "64"), float
            ),
        )
    return app(args["repository"], **kwargs)


def _flag(key: str, value: Any) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{key} must be true or false, got {value!r}")


def _number(key: str, value: Any, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None
