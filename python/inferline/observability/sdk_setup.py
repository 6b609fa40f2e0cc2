"""``inferline serve --otel``: an OpenTelemetry SDK tracer provider when the process has none."""

from __future__ import annotations

import importlib.util
import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

__all__ = ["configure"]


def configure() -> str:
    """See :func:`inferline.observability.configure_sdk`."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return "tracing: using the TracerProvider the process already configured"
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    note = ""
    if not choice:
        choice = "otlp" if _has_otlp() else "console"
        note = "" if choice == "otlp" else "; opentelemetry-exporter-otlp is not installed"
    exporter = _exporter(choice)
    if "OTEL_SERVICE_NAME" not in os.environ:
        resource = Resource.create({"service.name": "inferline"})
    else:
        resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return f"tracing: OpenTelemetry SDK, exporter {choice} (OTEL_TRACES_EXPORTER{note})"


def _has_otlp() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp") is not None
    except ModuleNotFoundError:  # no opentelemetry.exporter package at all
        return False


def _exporter(choice: str) -> SpanExporter | None:
    if choice == "none":
        return None
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp":
        try:
            # Optional: the OTLP exporter is a separate package, needed only when chosen.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ImportError(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install "
                "opentelemetry-exporter-otlp-proto-http, or set OTEL_TRACES_EXPORTER=console"
            ) from None
        exporter: SpanExporter = OTLPSpanExporter()
        return exporter
    raise ValueError(
        f"OTEL_TRACES_EXPORTER={choice!r} is not supported by inferline serve --otel; "
        "use otlp, console or none (or configure a TracerProvider in your own process)"
    )
