"""inferline engines as Ray Serve replicas (the ``ray`` extra: ``pip install 'inferline[ray]'``).

Every replica of the deployment hosts one :class:`inferline.Engine` built from a model
repository folder, and serves it two ways:

- HTTP through Ray's proxy: the replica's ASGI app is inferline's own Open Inference Protocol
  app (:func:`inferline.server.create_app`), so ``/v2/...`` routes, statuses and bodies are
  those of ``inferline serve``;
- Python through a ``DeploymentHandle``: ``await handle.infer.remote(model, item)`` (one item)
  and ``handle.infer_batch.remote(model, rows)``.

Batching stays inside each replica's engine (Serve's ``max_ongoing_requests`` is set high
enough not to starve it). Autoscaling follows the engines' load: each replica reports its
engine's queue depth and in-flight rows (``record_autoscaling_stats``) and
:func:`engine_load_policy` sizes the deployment to keep ``target_ongoing_requests`` rows in
flight per replica. Readiness follows the engine's: a replica becomes running once its engine
has loaded and warmed every model, and its ``check_health`` fails while the engine is not
ready. A replica that dies with requests in flight leaves Ray's proxy without an answer to
send; :func:`proxy_middlewares` (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=
inferline.ray:proxy_middlewares``) turns that into 503 with ``Retry-After``, and so it does for
a request the proxy's router loses (no answer has started within
``INFERLINE_RAY_ANSWER_TIMEOUT_S``, 120 s by default), so a client sees every loss as a
retryable error.

``serve run inferline.ray:build repository=PATH`` runs it from the command line; from Python,
``serve.run(inferline.ray.app(PATH, num_replicas=2))``. Modules: ``replica`` (the deployment
class), ``autoscaling`` (the load figures and the policy), ``proxy`` (the proxy middleware),
``builder`` (``deployment``, ``app``, ``build``). Importing :mod:`inferline` never imports Ray;
importing this package does.
"""

from __future__ import annotations

import inspect

import ray
from ray import serve

# Late-bound ingress (the app built on the replica, after the engine) and custom autoscaling
# metrics are recent Serve features; say so plainly on a Ray that predates them.
if inspect.signature(serve.ingress).parameters["app"].default is not None or not hasattr(
    serve.config, "AutoscalingContext"
):
    raise ImportError(
        f"inferline.ray needs a newer Ray Serve than {ray.__version__} (late-bound "
        "serve.ingress and custom autoscaling metrics; tested with Ray 2.60)"
    )

from .autoscaling import IN_FLIGHT, QUEUE_DEPTH, autoscaling_config, engine_load, engine_load_policy
from .builder import app, build, deployment
from .proxy import ANSWER_TIMEOUT_ENV, ReplicaLossAsUnavailable, proxy_middlewares
from .replica import InferlineReplica

__all__ = [
    "ANSWER_TIMEOUT_ENV",
    "IN_FLIGHT",
    "QUEUE_DEPTH",
    "InferlineReplica",
    "ReplicaLossAsUnavailable",
    "app",
    "autoscaling_config",
    "build",
    "deployment",
    "engine_load",
    "engine_load_policy",
    "proxy_middlewares",
]
