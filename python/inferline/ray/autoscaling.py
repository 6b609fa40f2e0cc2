"""Autoscaling on the engines' load: the figures each replica reports and the policy that
reads them.

Ray Serve's default policy counts requests in its own replicas' queues. An inferline replica
takes many requests at once and batches them, so Serve's count says little about how busy it
is; the engine's does. Each replica reports ``inferline_in_flight`` (rows accepted and not yet
answered) and ``inferline_queue_depth`` (rows waiting for a batch) through Serve's custom
autoscaling metrics (the deployment's ``record_autoscaling_stats``), and
:func:`engine_load_policy` asks for as many replicas as keep ``target_ongoing_requests`` rows
in flight on each. Serve applies ``min_replicas``/``max_replicas``, the up/downscale delays
and the smoothing factors around it.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingConfig, AutoscalingContext, AutoscalingPolicy

from ..engine import Engine

__all__ = ["IN_FLIGHT", "QUEUE_DEPTH", "autoscaling_config", "engine_load", "engine_load_policy"]

IN_FLIGHT = "inferline_in_flight"
QUEUE_DEPTH = "inferline_queue_depth"


def engine_load(engine: Engine) -> dict[str, float]:
    """The engine's rows in flight and rows queued, summed over every live model version
    (retired versions still finishing count too: they hold the replica's CPUs)."""
    in_flight = queued = 0
    for v in engine.live_versions():
        in_flight += v.in_flight
        queued += v.queue_depth
    return {IN_FLIGHT: float(in_flight), QUEUE_DEPTH: float(queued)}


def engine_load_policy(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    """Replicas wanted: the rows in flight over all replicas (each replica's figure averaged
    over Serve's look-back window) divided by ``target_ongoing_requests`` per replica.

    Before any replica has reported (just deployed, or every replica restarting) it keeps the
    current target. Serve's wrapper applies the bounds, delays and smoothing to the result.
    """
    per_replica = (ctx.aggregated_metrics or {}).get(IN_FLIGHT)
    if not per_replica or ctx.config is None:
        return float(ctx.target_num_replicas), {}
    target = float(ctx.config.get_target_ongoing_requests())
    wanted = sum(per_replica.values()) / target
    # Keep one replica while the metric reads zero: scaling to zero is min_replicas' choice.
    return float(max(wanted, 1.0 if ctx.capacity_adjusted_min_replicas > 0 else 0.0)), {}


def autoscaling_config(
    *,
    min_replicas: int = 1,
    max_replicas: int = 4,
    target_in_flight: float = 64.0,
    look_back_period_s: float = 30.0,
    upscale_delay_s: float = 10.0,
    downscale_delay_s: float = 60.0,
    **extra: Any,
) -> AutoscalingConfig:
    """A Serve ``AutoscalingConfig`` that scales on the engines' in-flight rows: about
    ``target_in_flight`` per replica (a few batches' worth: more queues, fewer idles).
    ``extra`` goes to ``AutoscalingConfig`` as is (e.g. ``initial_replicas``)."""
    if not target_in_flight > 0 or math.isinf(target_in_flight):
        raise ValueError(f"target_in_flight must be a positive number, got {target_in_flight!r}")
    return AutoscalingConfig(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=target_in_flight,
        look_back_period_s=look_back_period_s,
        upscale_delay_s=upscale_delay_s,
        downscale_delay_s=downscale_delay_s,
        # Serve's pydantic model has no typed __init__; the fields are checked at run time.
        policy=AutoscalingPolicy(policy_function=engine_load_policy),  # type: ignore[no-untyped-call]
        **extra,
    )
