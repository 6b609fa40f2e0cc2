"""Run the app under uvicorn with graceful SIGTERM/SIGINT handling.

On the first SIGTERM or SIGINT: readiness turns false and new inference requests get 503
(``draining``); after ``grace_period`` seconds (time for a load balancer to notice), the server
waits up to ``drain_timeout`` for accepted inference requests to be answered, then closes its
listening socket, lets open connections finish, stops the engine (which answers anything still
queued) and returns, so the process exits 0. A second signal stops at once.

uvicorn's own handler re-raises the signal after shutting down, which ends the process with
status -15 instead of 0; this module replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from .app import ServerState, create_app

__all__ = ["serve", "serve_async", "serve_repository"]

log = logging.getLogger("inferline.server")


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        engine: Any,
        state: ServerState,
        grace_period: float,
        drain_timeout: float,
        on_started: Callable[[int], None] | None,
    ) -> None:
        super().__init__(config)
        self.engine = engine
        self.state = state
        self.grace_period = grace_period
        self.drain_timeout = drain_timeout
        self.on_started = on_started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self.signals: list[int] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; the caller stops us with begin_drain
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, sig: int, frame: Any) -> None:
        # Runs in the main thread between bytecodes: only hand the work to the loop.
        self.signals.append(sig)
        if self._loop is None:
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self.begin_drain, sig)

    def begin_drain(self, sig: int | None = None) -> None:
        """Starts the graceful shutdown (call on the server's loop); a second call forces it."""
        if self._drain_task is not None:
            log.warning("second shutdown request: stopping now")
            self.should_exit = True
            self.force_exit = True
            return
        name = signal.Signals(sig).name if sig is not None else "shutdown request"
        log.info("%s received: readiness is now false; draining accepted requests", name)
        self.state.draining = True
        mark = getattr(self.engine, "mark_draining", None)
        if mark is not None:
            mark(f"{name}: shutting down")
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        if self.grace_period > 0:
            await asyncio.sleep(self.grace_period)
        if not await self.state.wait_idle(self.drain_timeout):
            log.warning(
                "%d request(s) still in flight after %.1fs; stopping anyway",
                self.state.in_flight,
                self.drain_timeout,
            )
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.on_started is not None and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            self.on_started(int(port))


def _build(
    engine: Any,
    host: str,
    port: int,
    *,
    drain_timeout: float,
    grace_period: float,
    log_level: str,
    access_log: bool,
    on_started: Callable[[int], None] | None,
    app_kwargs: dict[str, Any],
) -> _Server:
    state = ServerState()
    app = create_app(engine, drain_timeout=drain_timeout, state=state, **app_kwargs)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(drain_timeout)),
        server_header=False,
        # The app never looks at the client address; X-Forwarded-* rewriting would only
        # cost event-loop time on every request.
        proxy_headers=False,
    )
    return _Server(config, engine, state, grace_period, drain_timeout, on_started)


def serve(
    engine: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    drain_timeout: float = 30.0,
    grace_period: float = 0.0,
    log_level: str = "info",
    access_log: bool = False,
    on_started: Callable[[int], None] | None = None,
    **app_kwargs: Any,
) -> None:
    """Serves ``engine`` over HTTP until SIGTERM/SIGINT, then drains and returns.

    The engine must not have been started yet: it is started on the server's event loop.
    ``port=0`` picks a free port; ``on_started(port)`` is called once the socket listens.
    Other keyword arguments go to :func:`create_app` (``max_body_bytes``, ...).
    """
    server = _build(
        engine,
        host,
        port,
        drain_timeout=drain_timeout,
        grace_period=grace_period,
        log_level=log_level,
        access_log=access_log,
        on_started=on_started,
        app_kwargs=app_kwargs,
    )
    server.run()
    if not server.started:
        raise RuntimeError(f"the server could not start on {host}:{port}")


async def serve_async(
    engine: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    drain_timeout: float = 30.0,
    grace_period: float = 0.0,
    log_level: str = "info",
    access_log: bool = False,
    on_started: Callable[[int], None] | None = None,
    **app_kwargs: Any,
) -> None:
    """:func:`serve` for a running event loop (the engine starts on it)."""
    server = _build(
        engine,
        host,
        port,
        drain_timeout=drain_timeout,
        grace_period=grace_period,
        log_level=log_level,
        access_log=access_log,
        on_started=on_started,
        app_kwargs=app_kwargs,
    )
    await server.serve()


def serve_repository(
    repository: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    watch: bool = False,
    poll_interval: float = 5.0,
    drain_timeout: float = 30.0,
    grace_period: float = 0.0,
    log_level: str = "info",
    on_started: Callable[[int], None] | None = None,
    **app_kwargs: Any,
) -> int:
    """``inferline serve REPO``: serves every model of a repository folder until SIGTERM or
    SIGINT, then drains. Returns the process exit status (0 after a graceful stop)."""
    from ..engine import Engine

    engine = Engine.from_repository(repository, watch=watch, poll_interval=poll_interval)
    serve(
        engine,
        host,
        port,
        drain_timeout=drain_timeout,
        grace_period=grace_period,
        log_level=log_level,
        on_started=on_started,
        **app_kwargs,
    )
    return 0
