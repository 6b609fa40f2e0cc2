"""HTTP server speaking the Open Inference Protocol (KServe v2 REST) for an inferline engine."""
