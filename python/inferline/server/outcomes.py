"""How HTTP requests ended: counted for the metrics, summarised for the logs.

Under overload every refusal is cheap, and one log line each would turn it into a log flood.
So each answer is counted under ``(model, outcome)`` (exported as
``inferline_http_requests_total{model,outcome}``, and by the gRPC server's own instance as
``inferline_grpc_requests_total``; ``model`` is empty for names the engine does not serve, so
a client cannot grow the label set), and the log gets at most one summary line per interval::

    http: 1,234 requests refused in the last 10s: 1,200 x 503 queue_full, 34 x 400 bad_request;
    3 client disconnects

(WARNING when it holds a 5xx, else INFO). A model's own failures (500 ``model_error``) and
server bugs are still logged one by one, but at most :data:`ERRORS_LOGGED_PER_INTERVAL` per
interval; the rest are in the summary. Each refusal's details are logged at DEBUG.

Only the event loop's thread writes; a scrape reads a copy of the counts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from .errors import HTTPError

__all__ = ["ERRORS_LOGGED_PER_INTERVAL", "Outcomes"]

log = logging.getLogger("inferline.server")

#: Individual log lines for 5xx model errors per interval; beyond, they are only counted.
ERRORS_LOGGED_PER_INTERVAL = 5


class Outcomes:
    """Counts of answers by ``(model, outcome)`` and the summary of the current interval."""

    def __init__(self, interval_s: float = 10.0, transport: str = "http") -> None:
        if not interval_s > 0:
            raise ValueError(f"log_interval_s must be positive, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.transport = transport  # the summary line's prefix
        self.counts: Counter[tuple[str, str]] = Counter()
        self._window: Counter[tuple[int, str]] = Counter()
        self._disconnects = 0
        self._errors_logged = 0
        self._window_start = time.monotonic()

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the counts (for a scrape, on any thread)."""
        return dict(self.counts)

    def success(self, model: str) -> None:
        self.counts[(model, "success")] += 1

    def refused(self, model: str, err: HTTPError, rid: str) -> None:
        """Counts an error answer; logs it alone only if it is a 5xx of the model or the
        server, and only the first few per interval."""
        self.counts[(model, err.outcome)] += 1
        self._window[(err.status, err.outcome)] += 1
        if err.status in (500, 502) and self._errors_logged < ERRORS_LOGGED_PER_INTERVAL:
            self._errors_logged += 1
            log.warning(
                "request %s: model %r -> %d: %s",
                rid,
                model,
                err.status,
                err.message[:500],
                extra={"request_id": rid, "status": err.status},
            )
        self._maybe_flush()

    def disconnected(self, model: str, rid: str) -> None:
        """Counts a client that hung up before its answer (its queued work was cancelled)."""
        self.counts[(model, "disconnected")] += 1
        self._disconnects += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request %s: client disconnected", rid, extra={"request_id": rid})
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        # Without the periodic task (an app mounted where its lifespan does not run), the
        # next event after an interval writes the summary.
        if time.monotonic() - self._window_start >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        """Logs the summary of the interval, if anything happened, and starts a new one."""
        now = time.monotonic()
        seconds = now - self._window_start
        self._window_start = now
        self._errors_logged = 0
        window, self._window = self._window, Counter()
        disconnects, self._disconnects = self._disconnects, 0
        if not window and not disconnects:
            return
        parts = []
        refused = sum(window.values())
        if refused:
            detail = ", ".join(
                f"{n:,} x {status} {outcome}"
                for (status, outcome), n in sorted(window.items(), key=lambda kv: -kv[1])
            )
            parts.append(
                f"{_plural(refused, 'request')} refused in the last {seconds:.0f}s: {detail}"
            )
        if disconnects:
            parts.append(
                _plural(disconnects, "client disconnect")
                + ("" if refused else f" in the last {seconds:.0f}s")
            )
        level = logging.WARNING if any(s >= 500 for s, _ in window) else logging.INFO
        log.log(level, "%s: %s", self.transport, "; ".join(parts))

    async def run(self) -> None:
        """Writes a summary every interval, until cancelled (then writes the last one)."""
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.flush()
        finally:
            self.flush()


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
