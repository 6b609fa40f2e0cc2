"""The Open Inference Protocol (KServe v2) over gRPC, beside the HTTP app.

``start_grpc_server(app, host, port)`` serves an app made by :func:`..create_app` over gRPC
on the running loop (``inferline serve --grpc-port P`` and ``serve(..., grpc_port=P)`` do it
for you). Modules: ``service`` (the RPCs and the server), ``tensors`` (messages to and from
the HTTP path's forms), ``kserve_v2_pb2`` (generated from ``kserve_v2.proto``).
"""

from __future__ import annotations

from .service import SERVICE_NAME, InferenceService, start_grpc_server

__all__ = ["SERVICE_NAME", "InferenceService", "start_grpc_server"]
