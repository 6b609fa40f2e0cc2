"""Every route but infer: health, metadata, configuration, statistics, repository control
and metrics.

* ``GET  /v2/health/live``: 200, no body. ``/v2/health/ready``: 200, or 400 (the protocol's
  "false") with ``{"error": why}``; it counts only the models that loaded unless the server
  runs with ``strict_readiness`` (``inferline serve --strict-readiness``), which requires all
* ``GET  /v2``: server metadata and extensions
* ``GET  /v2/models/{m}[/versions/{v}]``: model metadata; ``.../ready``; ``.../config``
* ``GET  /v2/models[/{m}[/versions/{v}]]/stats``: Triton's statistics extension
* ``POST /v2/repository/index``, ``/v2/repository/models/{m}/load``, ``.../unload`` (load
  and unload answer 403 when the server was started with ``repository_api=False``; a load
  runs a repository ``model.py`` only with both keys, see ``Engine.from_repository``)
* ``GET  /metrics``: Prometheus text format: the engine's families and the HTTP (and, with a
  gRPC server, gRPC) outcomes
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from ..errors import EngineStopped, InferlineError, ModelNotFound
from ..metrics import render
from .errors import HTTPError, engine_error, error_response
from .outcomes import Outcomes
from .requests import RequestIds, version_arg
from .state import ServerState

__all__ = ["EXTENSIONS", "AdminRoutes", "triton_stats"]

EXTENSIONS = [
    "binary_tensor_data",
    "schedule_policy",
    "parameters",
    "statistics",
    "model_repository",
    "model_configuration",
]

# Triton's name of a datatype where it differs from the protocol's.
_TRITON_TYPE = {"BYTES": "STRING"}

# Largest body of a repository control request.
_MAX_CONTROL_BODY = 1 << 20


def _server_version() -> str:
    try:
        return version("inferline")
    except PackageNotFoundError:  # not installed (running from the source tree)
        return "0.0.0+source"


class AdminRoutes:
    """Starlette endpoints over the engine's public methods; ``last_inference`` is the infer
    route's record of when each model version last answered."""

    def __init__(
        self,
        engine: Any,
        *,
        state: ServerState,
        request_ids: RequestIds,
        retry_after: bytes,
        server_name: str,
        last_inference: Mapping[tuple[str, int], int],
        outcomes: Outcomes,
        repository_api: bool = True,
        strict_readiness: bool = False,
    ) -> None:
        self.engine = engine
        self.strict_readiness = strict_readiness
        self.state = state
        self.request_id = request_ids
        self.retry_after = retry_after
        self.server_name = server_name
        self.server_version = _server_version()
        self.last_inference = last_inference
        self.outcomes = outcomes
        self.grpc_outcomes: Outcomes | None = None  # the gRPC server's, once one serves the app
        self.repository_api = repository_api

    # -- responses ---------------------------------------------------------------------------
    def _rid(self, request: Request) -> str:
        return self.request_id(request.scope["headers"])

    def _json(self, request: Request, doc: Any) -> Response:
        body = json.dumps(doc, separators=(",", ":")).encode()
        return Response(
            body, 200, headers={"x-request-id": self._rid(request)}, media_type="application/json"
        )

    def _empty(self, request: Request, status: int) -> Response:
        return Response(b"", status, headers={"x-request-id": self._rid(request)})

    def _error(self, request: Request, err: HTTPError) -> Response:
        return error_response(
            err, self._rid(request), request.method, request.url.path, self.retry_after
        )

    # -- health and metadata -------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        return self._empty(request, 200)

    def readiness(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if not self.state.ready:
            return "the server is shutting down"
        if hasattr(self.engine, "readiness"):
            why: str | None = self.engine.readiness(require_all=self.strict_readiness)
            return why
        # an engine-like object with only the ``ready`` flag
        return None if self.engine.ready else "the engine is not ready"

    async def ready(self, request: Request) -> Response:
        why = self.readiness()
        if why is None:
            return self._empty(request, 200)
        return self._not_ready(request, why)

    def _not_ready(self, request: Request, why: str) -> Response:
        # The protocol's "false" is a 4xx (400, as Triton answers), here with the reason.
        return self._error(request, HTTPError(400, why, outcome="not_ready"))

    def server_metadata_doc(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": self.server_version, "extensions": EXTENSIONS}

    async def server_metadata(self, request: Request) -> Response:
        return self._json(request, self.server_metadata_doc())

    def info(self, name: str, version: str | None) -> Any:
        """The model version's info (``version`` as the path gives it); raises HTTPError."""
        try:
            return self.engine.model_info(name, version_arg(version))
        except InferlineError as e:
            raise engine_error(e) from None

    def _info(self, request: Request) -> Any:
        return self.info(request.path_params["model"], request.path_params.get("version"))

    async def model_metadata(self, request: Request) -> Response:
        try:
            info = self._info(request)
        except HTTPError as e:
            return self._error(request, e)
        return self._json(request, model_metadata_doc(info))

    def model_readiness(self, name: str, version: str | None) -> str | None:
        """Why the model version is not ready, or None when it is; HTTPError (404) when the
        engine does not know it."""
        try:
            info = self.info(name, version)
        except HTTPError as e:
            if e.status == 503:  # known but not loaded: the protocol's "false", with why
                return e.message
            raise
        if not self.state.ready:
            return "the server is shutting down"
        if info.state != "ready":
            why = f"model {info.name!r} version {info.version} is {info.state}"
            return why + (f": {info.reason}" if info.reason else "")
        if not version and not info.default:
            return f"model {info.name!r} has no ready default version"
        return None

    async def model_ready(self, request: Request) -> Response:
        p = request.path_params
        try:
            why = self.model_readiness(p["model"], p.get("version"))
        except HTTPError as e:
            return self._error(request, e)
        if why is not None:
            return self._not_ready(request, why)
        return self._empty(request, 200)

    async def model_config(self, request: Request) -> Response:
        """A Triton-style model configuration, enough for tools such as perf_analyzer."""
        try:
            info = self._info(request)
        except HTTPError as e:
            return self._error(request, e)
        return self._json(request, model_config_doc(info))

    # -- statistics ------------------------------------------------------------------------------
    def stats(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """Triton-shaped statistics of every model, one model's versions, or one version;
        raises HTTPError."""
        v = version_arg(version)
        engine = self.engine
        try:
            if name is None:
                infos = list(engine.models())
            elif v is None:
                infos = [i for i in engine.models() if i.name == name]
                if not infos:
                    engine.model_info(name)  # raises ModelNotFound with a good message
            else:
                infos = [engine.model_info(name, v)]
            return [
                triton_stats(
                    i.name,
                    i.version,
                    engine.stats(i.name, i.version),
                    self.last_inference.get((i.name, i.version), 0),
                )
                for i in infos
            ]
        except InferlineError as e:
            raise engine_error(e) from None

    async def model_stats(self, request: Request) -> Response:
        p = request.path_params
        try:
            stats = self.stats(p.get("model"), p.get("version"))
        except HTTPError as e:
            return self._error(request, e)
        return self._json(request, {"model_stats": stats})

    # -- repository ------------------------------------------------------------------------------
    def index(self, ready_only: bool) -> list[dict[str, str]]:
        """The repository index in the protocol's form."""
        out = []
        for entry in self.engine.repository_index():
            state = str(entry.get("state", "")).upper()
            if ready_only and state != "READY":
                continue
            item = {"name": entry["name"], "state": state, "reason": entry.get("reason") or ""}
            if entry.get("version") not in (None, ""):
                item["version"] = str(entry["version"])
            out.append(item)
        return out

    async def repository_index(self, request: Request) -> Response:
        try:
            doc = await _control_body(request)
            ready_only = doc.get("ready", False)
            if not isinstance(ready_only, bool):
                raise HTTPError(400, "'ready' must be a boolean")
        except HTTPError as e:
            return self._error(request, e)
        return self._json(request, self.index(ready_only))

    async def repository_load(self, request: Request) -> Response:
        return await self._repository_control(request, "load")

    async def repository_unload(self, request: Request) -> Response:
        return await self._repository_control(request, "unload")

    async def _repository_control(self, request: Request, action: str) -> Response:
        try:
            params = (await _control_body(request)).get("parameters", {})
            await self.control(request.path_params["model"], action, params)
        except HTTPError as e:
            return self._error(request, e)
        return self._empty(request, 200)

    async def control(self, name: str, action: str, params: Mapping[str, Any]) -> None:
        """Loads or unloads (``action``) a model as the request's ``parameters`` say;
        raises HTTPError."""
        if not self.repository_api:
            raise HTTPError(
                403,
                f"repository {action} is turned off on this server (--no-repository-api); "
                "the operator loads and unloads models",
            )
        version = params.get("version")
        if isinstance(version, str) and version.isdigit() and version.isascii():
            version = int(version)
        if version is not None and (type(version) is not int or version < 1):
            raise HTTPError(400, "'version' parameter must be a positive integer")
        if "config" in params or any(str(k).startswith("file:") for k in params):
            raise HTTPError(
                400, "loading a model from a config or files in the request is not supported"
            )
        fn = self.engine.load if action == "load" else self.engine.unload
        try:
            await fn(name, version)
        except ModelNotFound as e:
            raise HTTPError(404, str(e)) from None
        except EngineStopped as e:
            raise HTTPError(503, str(e), retry_after=True) from None
        except InferlineError as e:  # the load failed (the old version keeps serving)
            raise HTTPError(400, str(e) or type(e).__name__) from None
        except (ValueError, KeyError, OSError) as e:
            raise HTTPError(400, f"{action} of model {name!r} failed: {e}") from None

    # -- metrics ---------------------------------------------------------------------------------
    async def metrics(self, request: Request) -> Response:
        grpc = self.grpc_outcomes
        body = render(
            self.engine,
            http_counts=self.outcomes.snapshot(),
            grpc_counts=None if grpc is None else grpc.snapshot(),
        )
        return Response(body, 200, headers={"content-type": CONTENT_TYPE_LATEST})


def model_metadata_doc(info: Any) -> dict[str, Any]:
    """The protocol's model metadata of a model version."""
    return {
        "name": info.name,
        "versions": [str(v) for v in info.versions],
        "platform": info.platform,
        "inputs": [s.to_dict() for s in info.inputs],
        "outputs": [s.to_dict() for s in info.outputs],
    }


def model_config_doc(info: Any) -> dict[str, Any]:
    """A Triton-style model configuration of a model version."""

    def tensors(specs: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "data_type": "TYPE_" + _TRITON_TYPE.get(s.datatype, s.datatype),
                "dims": list(s.shape),
            }
            for s in specs
        ]

    return {
        "name": info.name,
        "platform": info.platform,
        "backend": info.platform,
        "max_batch_size": info.max_batch_size,
        "input": tensors(info.inputs),
        "output": tensors(info.outputs),
        "dynamic_batching": {},
        "version_policy": {"specific": {"versions": [str(v) for v in info.versions]}},
    }


async def _control_body(request: Request) -> dict[str, Any]:
    """Body of a repository control request: empty or a JSON object, at most 1 MiB."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_CONTROL_BODY:
            raise HTTPError(413, "request body is larger than 1 MiB")
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPError(400, "request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise HTTPError(400, "request body must be a JSON object")
    if not isinstance(doc.get("parameters", {}), dict):
        raise HTTPError(400, "'parameters' must be a JSON object")
    return doc


def _duration(count: Any, seconds: Any) -> dict[str, int]:
    return {"count": int(count or 0), "ns": round(float(seconds or 0.0) * 1e9)}


def triton_stats(
    name: str, version: Any, s: Mapping[str, Any], last_inference_ms: int
) -> dict[str, Any]:
    """Engine stats (``engine.stats``) in the shape of Triton's statistics extension.

    * ``inference_count``: successful items (each row of a request counts, as in Triton);
      ``execution_count``: batches the model ran.
    * ``success``/``fail``: counts from the request outcomes; their durations split the
      end-to-end histogram's total in proportion, as the engine keeps one histogram for all
      outcomes.
    * ``queue``: the queue-wait histogram; ``compute_infer``: the compute histogram (per
      batch). ``compute_input``/``compute_output`` are 0: the engine gathers and scatters rows
      inside its compute stage.
    * ``batch_stats`` is left out (Triton's clients read a missing repeated field as empty):
      the engine keeps no counts and durations per batch size, only a batch-size histogram,
      which is under ``inferline`` with the queue depth and in-flight count.
    * ``last_inference``: when this server last answered the model successfully (ms since
      the epoch), 0 if never.
    """
    requests = s.get("requests", {}) or {}
    success = int(requests.get("success", 0))
    fail = sum(int(v) for k, v in requests.items() if k != "success")
    req_h = s.get("request", {}) or {}
    total = success + fail
    req_sum = float(req_h.get("sum", 0.0))
    succ_s = req_sum * success / total if total else 0.0
    q = s.get("queue_wait", {}) or {}
    c = s.get("compute", {}) or {}
    return {
        "name": name,
        "version": str(version),
        "last_inference": int(last_inference_ms),
        "inference_count": success,
        "execution_count": int(s.get("batches", 0) or 0),
        "inference_stats": {
            "success": _duration(success, succ_s),
            "fail": _duration(fail, req_sum - succ_s if total else 0.0),
            "queue": _duration(q.get("count", 0), q.get("sum", 0.0)),
            "compute_input": _duration(c.get("count", 0), 0),
            "compute_infer": _duration(c.get("count", 0), c.get("sum", 0.0)),
            "compute_output": _duration(c.get("count", 0), 0),
            "cache_hit": _duration(0, 0),
        },
        "inferline": {
            "requests": {k: int(v) for k, v in requests.items()},
            "queue_depth": int(s.get("queue_depth", 0) or 0),
            "in_flight": int(s.get("in_flight", 0) or 0),
            **{h: dict(s.get(h) or {}) for h in ("queue_wait", "compute", "request", "batch_size")},
        },
    }
