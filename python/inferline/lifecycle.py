"""Graceful shutdown on SIGTERM/SIGINT: readiness false, a grace period, a bounded drain.

Orchestrators stop a pod by sending SIGTERM, removing it from the load balancer at about the
same time, and killing it after a deadline. The order that loses no request is:

1. **Not ready.** Readiness turns false at once (``Engine.mark_draining()``, and the
   ``on_not_ready`` callback for a server's own health endpoint), while requests are still
   accepted: the load balancer may route a few more before it notices.
2. **Grace.** Wait ``grace_seconds`` so it does notice.
3. **Drain.** ``await engine.stop(drain_timeout=...)``: new work is refused, accepted work
   finishes for up to ``drain_timeout`` seconds, whatever is left is answered
   ``EngineStopped``, and the workers are joined.

:func:`serve_until_signalled` does all of it for a program whose only job is to serve::

    async with engine:                      # or: await engine.start()
        await inferline.lifecycle.serve_until_signalled(engine, grace_seconds=5)

:class:`GracefulShutdown` is the same sequence without the signal handling, for an HTTP
server that already owns its signals: call :meth:`GracefulShutdown.trigger` from them and
``await`` :meth:`GracefulShutdown.wait`. A second trigger (a second Ctrl-C) cuts the grace
period short and drains with no deadline wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .engine import Engine

__all__ = ["DEFAULT_SIGNALS", "GracefulShutdown", "serve_until_signalled"]

log = logging.getLogger("inferline.lifecycle")

#: The signals :func:`serve_until_signalled` handles unless told otherwise.
DEFAULT_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def _check_seconds(name: str, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


class GracefulShutdown:
    """Runs the shutdown sequence of one engine once: not ready -> grace -> drain -> stopped.

    ``phase`` is ``serving`` until :meth:`trigger`, then ``grace``, ``draining`` and
    ``stopped``. ``ready`` is False from the trigger on (and whenever the engine is not
    ready), so a health endpoint can answer from it alone. ``on_not_ready()`` is called once,
    on the loop, as soon as readiness turns false, and ``on_draining()`` once when the drain
    starts (after the grace period), so a server can refuse new requests before reading them;
    an exception from either is logged and the shutdown goes on.

    Use from the event loop the engine runs on; ``trigger`` is not thread-safe (from another
    thread, ``loop.call_soon_threadsafe(shutdown.trigger)``).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        grace_seconds: float = 0.0,
        drain_timeout: float = 30.0,
        on_not_ready: Callable[[], object] | None = None,
        on_draining: Callable[[], object] | None = None,
    ) -> None:
        self.engine = engine
        self.grace_seconds = _check_seconds("grace_seconds", grace_seconds)
        self.drain_timeout = _check_seconds("drain_timeout", drain_timeout)
        for what, cb in (("on_not_ready", on_not_ready), ("on_draining", on_draining)):
            if cb is not None and not callable(cb):
                raise TypeError(f"{what} must be callable, got {type(cb).__name__}")
        self.on_not_ready = on_not_ready
        self.on_draining = on_draining
        self.reason: str | None = None
        self._phase = "serving"
        self._forced = False
        self._triggered: asyncio.Event | None = None
        self._cut_grace: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def phase(self) -> str:
        """serving, grace, draining or stopped."""
        return self._phase

    @property
    def triggered(self) -> bool:
        """True once :meth:`trigger` has been called."""
        return self._phase != "serving"

    @property
    def ready(self) -> bool:
        """False from the trigger on; before it, the engine's own readiness."""
        return not self.triggered and bool(self.engine.ready)

    def trigger(self, reason: str = "shutdown requested") -> None:
        """Starts the shutdown (readiness turns false now); idempotent.

        A second call while the grace period runs ends it and stops at once: batches being
        computed finish, queued requests are answered ``EngineStopped``. During the drain a
        second call is only logged. Call on the engine's event loop.
        """
        loop = asyncio.get_running_loop()
        if self._task is not None:
            if self._phase == "grace":
                log.warning("%s during the grace period: stopping now", reason)
                self._forced = True
                assert self._cut_grace is not None
                self._cut_grace.set()
            elif self._phase == "draining":
                log.warning("%s: already draining (up to %.1fs)", reason, self.drain_timeout)
            return
        self.reason = reason
        self._phase = "grace"
        log.info(
            "%s: readiness is now false; draining in %.1fs (deadline %.1fs)",
            reason,
            self.grace_seconds,
            self.drain_timeout,
        )
        self._mark_not_ready()
        self._cut_grace = asyncio.Event()
        self._task = loop.create_task(self._run(), name="inferline-graceful-shutdown")
        if self._triggered is not None:
            self._triggered.set()

    async def wait(self) -> None:
        """Waits for a trigger, then until the engine is stopped; re-raises a failed stop.

        Cancelling the wait does not cancel the shutdown.
        """
        if self._task is None:
            if self._triggered is None:
                self._triggered = asyncio.Event()
            await self._triggered.wait()
        assert self._task is not None
        await asyncio.shield(self._task)

    def _mark_not_ready(self) -> None:
        # getattr: engine stand-ins (a server's test double) need not have it.
        mark = getattr(self.engine, "mark_draining", None)
        if mark is not None:
            mark(self.reason)
        self._call(self.on_not_ready, "on_not_ready")

    @staticmethod
    def _call(callback: Callable[[], object] | None, what: str) -> None:
        if callback is not None:
            try:
                callback()
            except Exception:
                log.exception("%s callback failed; shutting down anyway", what)

    async def _run(self) -> None:
        assert self._cut_grace is not None
        if self.grace_seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._cut_grace.wait(), self.grace_seconds)
        self._phase = "draining"
        self._call(self.on_draining, "on_draining")
        timeout = 0.0 if self._forced else self.drain_timeout
        try:
            await self.engine.stop(drain_timeout=timeout)
        finally:
            self._phase = "stopped"
        log.info("engine stopped (%s)", self.reason)

    @contextlib.contextmanager
    def signal_handlers(
        self, signals: Iterable[int] = DEFAULT_SIGNALS
    ) -> Iterator[GracefulShutdown]:
        """While inside, each of ``signals`` calls :meth:`trigger` (on the running loop).

        Installed with ``loop.add_signal_handler`` (the main thread only: Python delivers
        signals there); on exit the handlers these signals had before are put back.
        """
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "signal handlers can only be installed from the main thread; from another "
                "thread, call GracefulShutdown.trigger() yourself"
            )
        loop = asyncio.get_running_loop()
        sigs = [signal.Signals(s) for s in signals]
        if not sigs:
            raise ValueError("signals must name at least one signal")
        previous: dict[signal.Signals, Any] = {}
        try:
            for sig in sigs:
                previous[sig] = signal.getsignal(sig)
                loop.add_signal_handler(sig, self.trigger, f"{sig.name} received")
            yield self
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                # remove_signal_handler leaves SIG_DFL (or default_int_handler for SIGINT);
                # put back whatever was there, e.g. asyncio.run's own SIGINT handler.
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


async def serve_until_signalled(
    engine: Engine,
    *,
    grace_seconds: float = 0.0,
    drain_timeout: float = 30.0,
    signals: Iterable[int] = DEFAULT_SIGNALS,
    on_not_ready: Callable[[], object] | None = None,
) -> str | None:
    """Serves until one of ``signals`` arrives, then shuts the engine down gracefully.

    On the signal: readiness turns false (``engine.mark_draining()`` when the engine has it,
    and ``on_not_ready()``), requests are still accepted for ``grace_seconds``, then
    ``await engine.stop(drain_timeout=drain_timeout)``. Returns the reason (e.g.
    ``"SIGTERM received"``) once the engine is stopped; the signal handlers are removed and
    the previous ones restored. A second signal during the grace period stops at once.
    Call from the main thread, on the loop the engine was started on.
    """
    shutdown = GracefulShutdown(
        engine,
        grace_seconds=grace_seconds,
        drain_timeout=drain_timeout,
        on_not_ready=on_not_ready,
    )
    with shutdown.signal_handlers(signals):
        await shutdown.wait()
    return shutdown.reason
