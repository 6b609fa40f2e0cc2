"""HTTP server speaking the Open Inference Protocol (KServe v2 REST) for an inferline engine.

``create_app(engine)`` returns a Starlette app (mount it in your own Starlette or FastAPI
app, or run it with any ASGI server); ``serve(engine, host, port)`` runs it under uvicorn with
graceful SIGTERM handling, and ``serve_repository(path)`` does the same for every model of a
repository folder (``inferline serve REPO``). ``inferline.server.protocol`` is the pure
request/response codec.
"""

from __future__ import annotations

from .app import ServerState, create_app
from .protocol import ProtocolError
from .runner import serve, serve_async, serve_repository

__all__ = [
    "ProtocolError",
    "ServerState",
    "create_app",
    "serve",
    "serve_async",
    "serve_repository",
]
