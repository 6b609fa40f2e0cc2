"""Admission at the door: bounds that refuse work before the server spends anything on it.

Three bounds, each checked before the work it protects:

* **requests in the server** (``max_in_flight``): beyond it a request is answered 503 with
  ``Retry-After`` before its body is read, so overload is shed at once instead of waiting in
  sockets. By default it follows the served models: the sum over model versions of their
  queue bound (:func:`derived_max_in_flight`), at least :data:`MIN_IN_FLIGHT`.
* **bytes of request bodies held at once** (``max_body_bytes_in_flight``): a request declares
  its body's size (``Content-Length``), which is reserved before reading; bodies sent without
  one reserve as they arrive. Beyond the bound: 503 with ``Retry-After``.
* **rows per request** (``max_rows_per_request``): checked against the request's declared
  shapes before any data is converted; 413 naming the limit.

Only the event loop's thread uses an :class:`Admission`.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import HTTPError, encode_error

__all__ = [
    "DEFAULT_MAX_BODY_BYTES_IN_FLIGHT",
    "DEFAULT_MAX_ROWS_PER_REQUEST",
    "MIN_IN_FLIGHT",
    "Admission",
    "derived_max_in_flight",
    "version_in_flight",
]

#: Rows one request may carry: far more than a batch, far less than a stall.
DEFAULT_MAX_ROWS_PER_REQUEST = 65_536
#: Bytes of request bodies the server holds at once by default.
DEFAULT_MAX_BODY_BYTES_IN_FLIGHT = 256 << 20
#: Floor of the derived in-flight bound (an engine with no model yet still answers).
MIN_IN_FLIGHT = 64
# How often (seconds) the derived in-flight bound is recomputed from the engine's models.
_REFRESH_S = 1.0


def version_in_flight(max_queue_size: int, max_batch_size: int) -> int:
    """One model version's share of the derived in-flight bound: its queue bound, but at
    least two batches (one computing while the next forms) and at most the queue plus one
    batch.

    The bound counts a request from admission to its answer, so the requests computing
    count too: an admitted request waits behind at most the queue's rows, and a client's
    latency stays within about the time to drain a full queue plus one batch's compute.
    The queue plus one batch (what the engine can hold) let in a batch more: 0.21 of the
    drain time more at a queue of 150 and batches of 32, for no more throughput, since the
    queue alone still keeps a full batch waiting while one computes. A queue of less than
    two batches would not, hence the floor."""
    return min(max_queue_size + max_batch_size, max(max_queue_size, 2 * max_batch_size))


def derived_max_in_flight(engine: Any) -> int:
    """What the engine's model versions let in at once (:func:`version_in_flight` of each),
    at least :data:`MIN_IN_FLIGHT`."""
    total = sum(
        version_in_flight(v.max_queue_size, v.max_batch_size) for v in engine.live_versions()
    )
    return max(MIN_IN_FLIGHT, int(total))


def _positive(name: str, value: int | None) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


class Admission:
    """The server's counters of requests and body bytes in flight, with their bounds.

    ``max_in_flight=None`` derives the bound from the engine's models (recomputed at most
    once a second, so models loaded later count).
    """

    def __init__(
        self,
        engine: Any,
        *,
        max_in_flight: int | None,
        max_body_bytes_in_flight: int,
        max_rows_per_request: int,
    ) -> None:
        _positive("max_in_flight", max_in_flight)
        _positive("max_body_bytes_in_flight", max_body_bytes_in_flight)
        _positive("max_rows_per_request", max_rows_per_request)
        self.engine = engine
        self.fixed_max_in_flight = max_in_flight
        self.max_body_bytes_in_flight = max_body_bytes_in_flight
        self.max_rows_per_request = max_rows_per_request
        self.in_flight = 0
        self.body_bytes = 0
        self._derived = MIN_IN_FLIGHT
        self._derived_at = -_REFRESH_S
        # The last in-flight refusal and its encoded body, for the (in_flight, limit) it says.
        self._refusal_key = (-1, -1)
        self._refusal: tuple[HTTPError, bytes] | None = None
        # Served model names, each with when the engine last said so (see served_label).
        self._served: dict[str, float] = {}

    @property
    def max_in_flight(self) -> int:
        if self.fixed_max_in_flight is not None:
            return self.fixed_max_in_flight
        now = time.monotonic()
        if now - self._derived_at >= _REFRESH_S:
            self._derived = derived_max_in_flight(self.engine)
            self._derived_at = now
        return self._derived

    def _overloaded(self, limit: int) -> HTTPError:
        return HTTPError(
            503,
            f"the server is handling {self.in_flight} requests, its limit "
            f"(max_in_flight = {limit}); retry later",
            retry_after=True,
            outcome="overloaded",
        )

    def enter(self) -> None:
        """Counts a request in, or raises 503 when the server holds its bound already."""
        limit = self.max_in_flight
        if self.in_flight >= limit:
            raise self._overloaded(limit)
        self.in_flight += 1

    def refusal(self) -> tuple[HTTPError, bytes] | None:
        """None while a request would be let in; at the bound, the 503 that :meth:`enter`
        would raise and its encoded body. Under overload the count and the bound stay the
        same from one refusal to the next, so both are built once and reused."""
        limit = self.max_in_flight
        if self.in_flight < limit:
            return None
        key = (self.in_flight, limit)
        if self._refusal is None or key != self._refusal_key:
            err = self._overloaded(limit)
            self._refusal, self._refusal_key = (err, encode_error(err.message)), key
        return self._refusal

    def served_label(self, name: str) -> str:
        """``name`` when the engine serves a model of that name, else "" (a metrics label that
        clients cannot grow). A name the engine confirmed is trusted for a second without
        asking again; unknown names are not remembered."""
        now = time.monotonic()
        if now - self._served.get(name, -_REFRESH_S) < _REFRESH_S:
            return name
        try:
            self.engine.model_info(name)
        except Exception:
            self._served.pop(name, None)
            return ""
        self._served[name] = now
        return name

    def leave(self) -> None:
        self.in_flight -= 1

    def reserve_body(self, nbytes: int) -> None:
        """Reserves ``nbytes`` of body, or raises 503 when bodies held would pass the bound.
        The caller releases what it reserved with :meth:`release_body`."""
        limit = self.max_body_bytes_in_flight
        if self.body_bytes + nbytes > limit:
            raise HTTPError(
                503,
                f"the server holds {self.body_bytes} bytes of request bodies and this one "
                f"needs {nbytes} more; the limit is {limit} (max_body_bytes_in_flight); "
                "retry later",
                retry_after=True,
                outcome="body_bytes",
            )
        self.body_bytes += nbytes

    def release_body(self, nbytes: int) -> None:
        self.body_bytes -= nbytes

    def check_rows(self, model: str, rows: int) -> None:
        """413 when a request's rows pass ``max_rows_per_request``."""
        if rows > self.max_rows_per_request:
            raise HTTPError(
                413,
                f"the request has {rows} rows for model {model!r}; the limit is "
                f"{self.max_rows_per_request} rows per request (max_rows_per_request): "
                "split it",
            )
