"""HTTP server speaking the Open Inference Protocol (KServe v2 REST) for an inferline engine.

``create_app(engine)`` returns a Starlette app (mount it in your own Starlette or FastAPI
app, or run it with any ASGI server); ``serve(engine, host, port)`` runs it under uvicorn with
graceful SIGTERM handling, and ``serve_repository(path)`` does the same for every model of a
repository folder (``inferline serve REPO``).

Modules: ``app`` (create_app, the route table, lifespan), ``infer`` (the hot path), ``admin``
(health, metadata, statistics, repository control, metrics), ``errors`` (HTTP statuses and
error bodies), ``protocol`` (the request parser), ``responses`` (the response encoder),
``codec`` (tensors' wire forms, JSON), ``requests`` (request ids, the version parameter),
``state`` (flags shared with the runner) and ``runner`` (uvicorn with graceful shutdown).
"""

from __future__ import annotations

from .app import create_app
from .errors import ProtocolError
from .runner import serve, serve_async, serve_repository
from .state import ServerState

__all__ = [
    "ProtocolError",
    "ServerState",
    "create_app",
    "serve",
    "serve_async",
    "serve_repository",
]
