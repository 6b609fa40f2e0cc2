"""Prometheus export of the engine's native metrics, labelled by model and version.

The figures are recorded natively with relaxed atomics (``cpp/include/inferline/metrics.hpp``);
this module only reads them at scrape time, never on the request path::

    from prometheus_client import REGISTRY
    REGISTRY.register(inferline.metrics.collector(engine))

or, for a ``/metrics`` endpoint of its own, ``inferline.metrics.render(engine)``.

Families (every one labelled ``model`` and ``version``):

* ``inferline_requests_total{outcome}`` (counter): requests by how they ended: ``success``,
  ``queue_full``, ``deadline_exceeded``, ``cancelled``, ``model_error``, ``engine_stopped``,
  ``invalid_input``. Every outcome is exported, zeros included, so rates never start mid-way.
* ``inferline_batches_total`` (counter): batches computed (warm-up excluded).
* ``inferline_queue_depth``, ``inferline_in_flight`` (gauges): items waiting; items accepted
  and not yet answered.
* ``inferline_queue_wait_seconds`` (enqueue to batch formed), ``inferline_compute_seconds``
  (one backend call, per batch), ``inferline_request_seconds`` (enqueue to answered)
  (histograms, buckets :data:`SECONDS_BUCKETS`).
* ``inferline_batch_size`` (histogram, buckets 1, 2, 4, ... and the version's
  ``max_batch_size``).
* ``inferline_model_ready`` (gauge): 1 while the version's state is ``ready``, else 0.
* ``inferline_cache_hits_total``, ``inferline_cache_misses_total`` (counters): only for
  versions with a result cache.
* ``inferline_tokens_total{kind}`` (counter) and ``inferline_padding_fraction`` (gauge): only
  for token-counting cores (a text encoder's ``token_stats()``): ``kind="real"`` tokens of the
  requests, ``kind="computed"`` tokens the kernels ran (padding included), and the padding
  fraction ``1 - real / computed`` since the version started (0 before any batch).

plus ``inferline_ready`` (gauge, no labels): the engine's readiness (``Engine.ready``), and,
from the HTTP server, ``inferline_http_requests_total{model,outcome}`` (counter): inference
requests by how they were answered (``success``, ``bad_request``, ``not_found``,
``too_large``, ``queue_full``, ``overloaded``, ``body_bytes``, ``not_ready``, ``draining``,
``engine_stopped``, ``timeout``, ``model_error``, ``internal_error``, ``disconnected``, ...),
including those refused before they reached the engine; ``model`` is empty for names the
engine does not serve. From the gRPC server (``inferline serve --grpc-port``),
``inferline_grpc_requests_total{model,outcome}`` (counter): the same for ``ModelInfer`` calls,
with the same outcome names (``disconnected``: the client cancelled the call; ``timeout``: the
request's ``timeout`` parameter or the call's deadline passed; a client gives up at its own
deadline, a little before the server's, so such a call may count as either).

Versions that are draining or retired after a swap are exported for as long as the engine
holds them, so their last answers are counted; once one is gone its series disappear (a
counter reset, which Prometheus' ``rate`` handles).

Histogram buckets come from the native log-linear histogram (16 sub-buckets per power of two,
at most 6.25% wide): a ``le`` bucket counts whole native buckets that lie at or below the
bound, so it may miss values within 6.25% under the bound, and never counts one above it.
Batch sizes below 32 are exact. ``+Inf`` and ``_count`` are the total of the same snapshot, so
the buckets of one scrape are always cumulative and consistent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .engine import Engine, VersionView

__all__ = [
    "SECONDS_BUCKETS",
    "EngineCollector",
    "GrpcCollector",
    "HttpCollector",
    "batch_size_buckets",
    "collector",
    "render",
]

#: Upper bounds (seconds) of the latency histograms: 50 us to 60 s in 1, 2.5, 5 steps per
#: decade (each bound 2 to 2.5 times the previous one). Fixed, so series from different
#: versions and processes aggregate; a request slower than 60 s lands in ``+Inf`` only.
SECONDS_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05,
    0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
    10.0, 25.0, 60.0,
)  # fmt: skip

#: Request outcomes as the native core names them (``outcome_name`` in metrics.hpp).
OUTCOMES: tuple[str, ...] = (
    "success",
    "queue_full",
    "deadline_exceeded",
    "cancelled",
    "model_error",
    "engine_stopped",
    "invalid_input",
)

_LABELS = ("model", "version")
_NS = 1e-9  # the native latency histograms record nanoseconds

# (native histogram, family name, help) of the latency histograms.
_LATENCY = (
    ("queue_wait", "inferline_queue_wait_seconds", "Time from enqueue until its batch is formed."),
    ("compute", "inferline_compute_seconds", "Time of one backend call, per batch."),
    ("request", "inferline_request_seconds", "Time from enqueue until the request is answered."),
)


def batch_size_buckets(max_batch_size: int) -> list[int]:
    """Bucket bounds of ``inferline_batch_size``: powers of two below ``max_batch_size``,
    then ``max_batch_size`` itself (so full batches have their own bucket)."""
    bounds = []
    b = 1
    while b < max_batch_size:
        bounds.append(b)
        b *= 2
    bounds.append(max_batch_size)
    return bounds


def _native_size_bound(size: int) -> int:
    # The native histogram keeps 16 sub-buckets per power of two (exact below 32). Asking for
    # the last value of the bucket that holds `size` counts batches of exactly `size`; asking
    # for `size` itself would drop them whenever that bucket is wider than one value.
    width = 1 << max(0, size.bit_length() - 5)
    return size | (width - 1)


class _Series:
    """The figures of one (model, version) label set, summed over the versions that carry it."""

    __slots__ = (
        "batch_bounds",
        "batches",
        "cache",
        "in_flight",
        "queue_depth",
        "ready",
        "requests",
        "tokens",
        "versions",
    )

    def __init__(self) -> None:
        self.versions: list[VersionView] = []
        self.batch_bounds: set[int] = set()
        self.requests: dict[str, float] = dict.fromkeys(OUTCOMES, 0.0)
        self.batches = 0.0
        self.queue_depth = 0.0
        self.in_flight = 0.0
        self.ready = 0.0
        self.cache: tuple[float, float] | None = None
        self.tokens: tuple[float, float] | None = None  # (real, computed)


class _Families:
    """One scrape's metric families, empty until filled."""

    def __init__(self) -> None:
        labels = list(_LABELS)
        self.requests = CounterMetricFamily(
            "inferline_requests", "Requests by how they ended.", labels=[*labels, "outcome"]
        )
        self.batches = CounterMetricFamily(
            "inferline_batches", "Batches computed (warm-up excluded).", labels=labels
        )
        self.queue_depth = GaugeMetricFamily(
            "inferline_queue_depth", "Items waiting in the queue.", labels=labels
        )
        self.in_flight = GaugeMetricFamily(
            "inferline_in_flight", "Items accepted and not yet answered.", labels=labels
        )
        self.model_ready = GaugeMetricFamily(
            "inferline_model_ready",
            "1 while the model version is ready to serve, else 0.",
            labels=labels,
        )
        self.cache_hits = CounterMetricFamily(
            "inferline_cache_hits", "Result cache hits.", labels=labels
        )
        self.cache_misses = CounterMetricFamily(
            "inferline_cache_misses", "Result cache misses.", labels=labels
        )
        self.tokens = CounterMetricFamily(
            "inferline_tokens",
            "Tokens of a text model: real (the requests') and computed (padding included).",
            labels=[*labels, "kind"],
        )
        self.padding = GaugeMetricFamily(
            "inferline_padding_fraction",
            "Share of computed tokens that were padding: 1 - real / computed.",
            labels=labels,
        )
        self.latency = {
            which: HistogramMetricFamily(name, doc, labels=labels, unit="seconds")
            for which, name, doc in _LATENCY
        }
        self.batch_size = HistogramMetricFamily(
            "inferline_batch_size", "Items per computed batch.", labels=labels
        )
        self.ready = GaugeMetricFamily(
            "inferline_ready",
            "1 while the engine is ready (started, not draining, every model has a ready "
            "default version), else 0.",
        )

    def all(self) -> list[Metric]:
        return [
            self.requests,
            self.batches,
            self.queue_depth,
            self.in_flight,
            self.model_ready,
            self.cache_hits,
            self.cache_misses,
            self.tokens,
            self.padding,
            *self.latency.values(),
            self.batch_size,
            self.ready,
        ]


class EngineCollector(Collector):
    """A ``prometheus_client`` collector reading an :class:`~inferline.Engine`'s native metrics.

    Each ``collect()`` reads the live figures (nothing is cached between scrapes). Thread-safe:
    it may run on the engine's loop or on a scrape thread while requests flow; the native
    counters are read without stopping writers, so figures of one scrape are each exact but
    may be a few requests apart from one another.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:
        """The families :meth:`collect` yields, without samples (for registry name checks)."""
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        """The current figures of every model version the engine holds."""
        f = _Families()
        f.ready.add_metric([], 1.0 if bool(self.engine.ready) else 0.0)
        for (name, version), s in sorted(self._series().items()):
            labels = [name, version]
            for outcome, n in s.requests.items():
                f.requests.add_metric([*labels, outcome], n)
            f.batches.add_metric(labels, s.batches)
            f.queue_depth.add_metric(labels, s.queue_depth)
            f.in_flight.add_metric(labels, s.in_flight)
            f.model_ready.add_metric(labels, s.ready)
            if s.cache is not None:
                f.cache_hits.add_metric(labels, s.cache[0])
                f.cache_misses.add_metric(labels, s.cache[1])
            if s.tokens is not None:
                real, computed = s.tokens
                f.tokens.add_metric([*labels, "real"], real)
                f.tokens.add_metric([*labels, "computed"], computed)
                f.padding.add_metric(labels, 1.0 - real / computed if computed else 0.0)
            for which, family in f.latency.items():
                _add_histogram(family, labels, s.versions, which, SECONDS_BUCKETS, _NS)
            sizes = sorted(s.batch_bounds)
            native = [float(_native_size_bound(b)) for b in sizes]
            _add_histogram(f.batch_size, labels, s.versions, "batch_size", sizes, 1.0, native)
        return f.all()

    def _series(self) -> dict[tuple[str, str], _Series]:
        series: dict[tuple[str, str], _Series] = {}
        for v in self.engine.live_versions():
            # A version re-loaded while its retired namesake still drains shares its labels:
            # the two are summed, since one label set may appear once per family.
            s = series.setdefault((str(v.name), str(v.version)), _Series())
            s.versions.append(v)
            s.batch_bounds.update(batch_size_buckets(v.max_batch_size))
            stats = v.stats()
            for outcome, n in stats["requests"].items():
                s.requests[outcome] = s.requests.get(outcome, 0.0) + float(n)
            s.batches += float(stats["batches"])
            s.queue_depth += float(stats["queue_depth"])
            s.in_flight += float(stats["in_flight"])
            s.ready = max(s.ready, 1.0 if v.state == "ready" else 0.0)
            cache = v.cache_stats
            if cache is not None:
                old = s.cache or (0.0, 0.0)
                s.cache = (old[0] + cache["hits"], old[1] + cache["misses"])
            tokens = v.token_stats()
            if tokens is not None:
                old = s.tokens or (0.0, 0.0)
                s.tokens = (
                    old[0] + tokens["real_tokens"],
                    old[1] + tokens["computed_tokens"],
                )
        return series


def _add_histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    versions: Sequence[VersionView],
    which: str,
    bounds: Sequence[float],
    unit: float,
    native: Sequence[float] | None = None,
) -> None:
    """Adds one labelled histogram: cumulative counts at ``bounds``, ``+Inf`` = total, sum."""
    query = list(native if native is not None else bounds)
    cumulative = [0] * len(bounds)
    total = 0
    total_sum = 0.0
    for v in versions:
        counts, count, sum_ = v.histogram_buckets(which, query, unit)
        cumulative = [a + b for a, b in zip(cumulative, counts, strict=True)]
        total += count
        total_sum += sum_
    # repr() of a float is the ``le`` format Prometheus clients use ("0.005", "1.0", "5e-05").
    buckets: list[tuple[str, float]] = [
        (repr(float(b)), float(c)) for b, c in zip(bounds, cumulative, strict=True)
    ]
    buckets.append(("+Inf", float(total)))
    family.add_metric(labels, buckets, total_sum)


def collector(engine: Engine) -> EngineCollector:
    """A collector exporting ``engine``'s metrics; register it with a ``CollectorRegistry``.

    It holds ``engine`` (a strong reference) for as long as it is registered.
    """
    return EngineCollector(engine)


class HttpCollector(Collector):
    """``inferline_http_requests_total{model,outcome}`` from a mapping of counts by
    ``(model, outcome)`` (the HTTP server's ``Outcomes.snapshot()``)."""

    family_name = "inferline_http_requests"
    family_help = "Inference requests over HTTP by how they were answered."

    def __init__(self, counts: Mapping[tuple[str, str], int]) -> None:
        self.counts = counts

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for (model, outcome), n in sorted(self.counts.items()):
            family.add_metric([model, outcome], float(n))
        return [family]

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.family_name, self.family_help, labels=["model", "outcome"])


class GrpcCollector(HttpCollector):
    """``inferline_grpc_requests_total{model,outcome}`` from a mapping of counts by
    ``(model, outcome)`` (the gRPC server's ``Outcomes.snapshot()``)."""

    family_name = "inferline_grpc_requests"
    family_help = "Inference calls over gRPC (ModelInfer) by how they were answered."


def render(
    engine: Engine,
    *,
    http_counts: Mapping[tuple[str, str], int] | None = None,
    grpc_counts: Mapping[tuple[str, str], int] | None = None,
) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``engine``'s metrics, and of the HTTP
    and gRPC servers' outcome counts when given.

    Uses a private registry, so the process' default collectors (GC, platform) are not
    included; serve it with ``prometheus_client.exposition.CONTENT_TYPE_LATEST``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector(engine))
    if http_counts is not None:
        registry.register(HttpCollector(http_counts))
    if grpc_counts is not None:
        registry.register(GrpcCollector(grpc_counts))
    return generate_latest(registry)
