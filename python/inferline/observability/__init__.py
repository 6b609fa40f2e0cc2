"""Request traces through OpenTelemetry, off unless switched on.

The switch, checked once when an ``Engine`` is created (never per request):

- ``Engine(tracing=True)`` turns tracing on for that engine, ``tracing=False`` off;
- ``Engine(tracing=None)`` (the default) follows the process: on after :func:`enable` (what
  ``inferline serve --otel`` calls) or when the environment says ``INFERLINE_OTEL=1``.

A configured global ``TracerProvider`` alone does not turn tracing on: inferline stays
deterministic and never imports ``opentelemetry`` unless asked to. With tracing off the
package imports nothing of OpenTelemetry and the request path pays one attribute check
(``engine.infer`` and the HTTP infer route, each). With it on, spans go to the global
``TracerProvider`` (``opentelemetry.trace.set_tracer_provider``), which the application
configures as usual; ``inferline serve --otel`` configures the SDK itself when nothing else did
(:func:`configure_sdk`, exporter from ``OTEL_TRACES_EXPORTER``).

What a request's trace holds (:mod:`.otel`): one span per request, of kind SERVER for
``POST /v2/models/{model}/infer`` (its parent is the caller's W3C ``traceparent``, extracted
through the global propagator) or INTERNAL for an in-process ``engine.infer`` made while a span
is current, with child spans ``queue`` (enqueued until taken into a batch), ``compute`` (the
batch's model call; attributes ``inferline.batch_size`` and ``inferline.instance``) and, over
HTTP, ``serialise`` (encoding the response). The first two are made afterwards from the stamps
the native core took, converted from its monotonic clock to the epoch.

The engine's other paths take their request span from ``Tracing.request`` (``infer_batch``, a
model with stages, a cached answer: one span ``inferline.{op} {model}``, or the server's span,
with ``inferline.rows`` and ``inferline.cache_hit``; ``Tracing.on_miss`` wraps what a cache
sends to the model). A cache miss gets ``queue`` and ``compute`` children through ``infer``'s
path; rows sent to the core together (``infer_batch``, a pipeline) carry no stamps, so their
span has no children.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the real import waits until tracing is switched on
    from .otel import Tracing

__all__ = ["ENV_VAR", "configure_sdk", "enable", "load", "requested", "traced_rpc"]

#: Environment variable that turns tracing on for engines created with ``tracing=None``.
ENV_VAR = "INFERLINE_OTEL"

_enabled = False

_R = TypeVar("_R")


def enable() -> None:
    """Turns tracing on for engines created from now on with ``tracing=None``."""
    global _enabled
    _enabled = True


def requested(flag: bool | None) -> bool:
    """Whether an engine created with ``tracing=flag`` traces its requests."""
    if flag is not None:
        if not isinstance(flag, bool):
            raise TypeError(f"tracing must be True, False or None, got {flag!r}")
        return flag
    return _enabled or os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def load(flag: bool | None) -> Tracing | None:
    """The tracer for an engine created with ``tracing=flag``, or None when tracing is off.
    Raises ``ImportError`` saying what to install when OpenTelemetry is missing."""
    if not requested(flag):
        return None
    try:
        # Imported here, not at the top: OpenTelemetry is optional and costs nothing when off.
        from .otel import Tracing
    except ImportError as e:
        raise ImportError(
            f"tracing is on (Engine(tracing=True), {ENV_VAR}=1 or --otel) but OpenTelemetry "
            f"is not installed ({e}); install it with: pip install 'inferline[otel]'"
        ) from e
    return Tracing()


def configure_sdk() -> str:
    """Installs an OpenTelemetry SDK ``TracerProvider`` as the global one, unless the process
    already has one, and returns a line saying what it did. The exporter follows the
    standard ``OTEL_TRACES_EXPORTER``: ``otlp`` (needs ``opentelemetry-exporter-otlp``,
    configured by the ``OTEL_EXPORTER_OTLP_*`` variables), ``console`` (spans printed as JSON
    to stdout) or ``none``; unset, ``otlp`` when that package is installed, else ``console``.
    The service name is ``OTEL_SERVICE_NAME``, else ``inferline``.
    Raises ``ValueError`` for another exporter, ``ImportError`` for a missing package."""
    # Imported here: only `inferline serve --otel` needs the SDK.
    from .sdk_setup import configure

    return configure()


def traced_rpc(
    engine: Any, method: str, handler: Callable[[Any, Any], Awaitable[_R]]
) -> Callable[[Any, Any], Awaitable[_R]]:
    """The gRPC server's hook: the unary ``handler(request, context)`` itself when ``engine``
    does not trace (no cost per call), else the same handler run inside the RPC's SERVER span,
    whose parent is the ``traceparent`` of the call's metadata; the engine hangs the request's
    ``queue`` and ``compute`` spans on it. ``method``: the full RPC name,
    ``inference.GRPCInferenceService/ModelInfer``. Called once, when the service is built."""
    tracing = getattr(engine, "_tracing", None)
    return handler if tracing is None else tracing.rpc_handler(method, handler)
