"""Run the app under uvicorn with graceful SIGTERM/SIGINT handling.

The shutdown follows :class:`inferline.lifecycle.GracefulShutdown`. On the first SIGTERM or
SIGINT, readiness turns false (``/v2/health/ready`` answers 400, the engine is marked
draining) while inference requests are still accepted for ``grace_period`` seconds, the time
a load balancer needs to notice; then the engine stops: new work is answered 503 with
``Retry-After`` and accepted work finishes for up to ``drain_timeout`` seconds. Once the
engine has stopped, uvicorn closes its socket, lets open responses go out, and ``serve``
returns, so the process exits 0. A second signal during the grace period stops at once.

uvicorn's own handler re-raises the signal after shutting down, which ends the process with
status -15 instead of 0; this module replaces it.

HTTP/1.1 is parsed by uvicorn's httptools protocol, subclassed so that an infer request that
arrives while the server holds ``max_in_flight`` requests is answered 503 as soon as its
headers are parsed, without an ASGI task (:mod:`.fast_refusal`). ``fast_refusal=False`` (or
the environment variable ``INFERLINE_FAST_REFUSAL=0``, for comparisons) leaves the refusal to
the app.

While it serves, the server also tunes Python's cyclic garbage collector (``tune_gc=False``,
or ``INFERLINE_TUNE_GC=0``, leaves it alone): once started it collects, freezes what start-up
left alive (modules, models) out of the collector's reach (``gc.freeze``), and collects the
young generation after :data:`GC_THRESHOLDS` ``[0]`` net allocations instead of 700. Every
collection holds the GIL, so it stalls the event loop *and* every model thread at once:
under 10x overload on 2 vCPUs with the defaults, 25 full collections of up to 127 ms and
280 middle ones of up to 31 ms in 40 s took 17% of the loop thread and made a 20 ms batch's
compute p99 99 ms. The cost: garbage in reference cycles waits longer to be found, and
cycles among the objects frozen at start-up are never collected (a model loaded at start and
unloaded later may leave its module's cycles). Shutdown puts the thresholds back and
unfreezes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from ..engine import Engine
from ..lifecycle import GracefulShutdown
from .app import create_app
from .fast_refusal import refusing_protocol
from .grpc import start_grpc_server
from .state import ServerState

__all__ = ["GC_THRESHOLDS", "serve", "serve_async", "serve_repository"]

log = logging.getLogger("inferline.server")

#: ``gc.set_threshold`` while serving (CPython's defaults are 700, 10, 10).
GC_THRESHOLDS = (10_000, 20, 10)


def _env_flag(name: str, value: bool | None) -> bool:
    """``value``, or when None the environment's ``name`` ("0" is off; on by default)."""
    return os.environ.get(name, "1") != "0" if value is None else bool(value)


class _Server(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        engine: Any,
        state: ServerState,
        grace_period: float,
        drain_timeout: float,
        on_started: Callable[[int], None] | None,
        grpc_port: int | None = None,
        on_grpc_started: Callable[[int], None] | None = None,
        tune_gc: bool = True,
    ) -> None:
        super().__init__(config)
        self.tune_gc = tune_gc
        self._saved_gc: tuple[int, int, int] | None = None  # the thresholds before tuning
        self.engine = engine
        self.state = state
        self.on_started = on_started
        self.grpc_port = grpc_port  # the bound port once started
        self.on_grpc_started = on_grpc_started
        self.grpc_server: Any = None
        self.drain_timeout = drain_timeout
        self.shutdown_sequence = GracefulShutdown(
            engine,
            grace_seconds=grace_period,
            drain_timeout=drain_timeout,
            on_not_ready=self._not_ready,
            on_draining=self._draining,
        )
        self._exit_task: asyncio.Task[None] | None = None

    def _not_ready(self) -> None:
        self.state.not_ready = True

    def _draining(self) -> None:
        # New inference requests are refused (503 + Retry-After) before their body is read.
        self.state.draining = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only; callers use begin_shutdown
            return
        sigs = (signal.SIGTERM, signal.SIGINT)
        with self.shutdown_sequence.signal_handlers(sigs):
            loop = asyncio.get_running_loop()
            for sig in sigs:  # replaces the sequence's handler; put back by its exit
                loop.add_signal_handler(sig, self._on_signal, sig)
            yield

    def _on_signal(self, sig: signal.Signals) -> None:
        # The first signal starts the graceful shutdown (the drain is bounded: a model stuck
        # past drain_timeout + the core's shutdown grace is abandoned). A second one during the
        # grace period cuts it short; during the drain it ends the process at once, non-zero,
        # without waiting for anything (e.g. a model that never returns).
        seq = self.shutdown_sequence
        if seq.triggered and seq.phase != "grace":
            log.warning("%s received again while draining: exiting now", sig.name)
            logging.shutdown()
            os._exit(128 + int(sig))
        seq.trigger(f"{sig.name} received")

    def begin_shutdown(self, reason: str = "shutdown requested") -> None:
        """What SIGTERM does, for callers on the server's loop (e.g. from another thread via
        ``loop.call_soon_threadsafe``)."""
        self.shutdown_sequence.trigger(reason)

    async def _exit_once_stopped(self) -> None:
        try:
            await self.shutdown_sequence.wait()
        except Exception:
            log.exception("the engine did not stop cleanly")
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.tune_gc and self.started and self._saved_gc is None:
            self._saved_gc = gc.get_threshold()
            gc.collect()
            gc.freeze()
            gc.set_threshold(*GC_THRESHOLDS)
        self._exit_task = asyncio.ensure_future(self._exit_once_stopped())
        if self.on_started is not None and self.servers:
            port = self.servers[0].sockets[0].getsockname()[1]
            self.on_started(int(port))
        if self.grpc_port is not None and not self.should_exit:
            await self._start_grpc(sockets)

    async def _start_grpc(self, sockets: list[socket.socket] | None) -> None:
        """The gRPC server on the same host, loop, engine and admission as HTTP; a port it
        cannot bind stops everything (``serve`` then raises)."""
        host = self.config.host
        try:
            self.grpc_server, self.grpc_port = await start_grpc_server(
                self.config.app, host, int(self.grpc_port or 0)
            )
        except OSError as e:
            log.error("%s", e)
            await self.shutdown(sockets)
            self.started = False
            self.should_exit = True
            return
        log.info("gRPC (KServe v2) listening on %s:%d", host, self.grpc_port)
        if self.on_grpc_started is not None:
            self.on_grpc_started(self.grpc_port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._exit_task is not None and not self._exit_task.done():
            self._exit_task.cancel()
        if self.grpc_server is not None:
            # RPCs in flight get up to the drain timeout (after SIGTERM the engine has
            # stopped already, so they are answered); new ones are refused from now on.
            server, self.grpc_server = self.grpc_server, None
            await server.stop(self.drain_timeout)
        await super().shutdown(sockets)
        if self._saved_gc is not None:
            gc.set_threshold(*self._saved_gc)
            gc.unfreeze()
            self._saved_gc = None


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
    grpc_port = app_kwargs.pop("grpc_port", None)
    on_grpc_started = app_kwargs.pop("on_grpc_started", None)
    fast_refusal = _env_flag("INFERLINE_FAST_REFUSAL", app_kwargs.pop("fast_refusal", None))
    tune_gc = _env_flag("INFERLINE_TUNE_GC", app_kwargs.pop("tune_gc", None))
    app = create_app(engine, drain_timeout=drain_timeout, state=state, **app_kwargs)
    # uvicorn's httptools protocol, refusing overload at the headers (None: uvicorn's own).
    http: Any = (refusing_protocol(app) if fast_refusal else None) or "auto"
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        lifespan="on",
        # uvloop is a dependency (not on Windows): the loop thread is the server's bottleneck.
        loop="asyncio" if sys.platform == "win32" else "uvloop",
        timeout_graceful_shutdown=max(1, int(drain_timeout)),
        server_header=False,
        # The app never looks at the client address; X-Forwarded-* rewriting would only
        # cost event-loop time on every request.
        proxy_headers=False,
        http=http,
    )
    return _Server(
        config,
        engine,
        state,
        grace_period,
        drain_timeout,
        on_started,
        grpc_port=grpc_port,
        on_grpc_started=on_grpc_started,
        tune_gc=tune_gc,
    )


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
    ``grpc_port=P`` also serves the protocol over gRPC on ``host:P`` (0: any free port;
    ``on_grpc_started(port)`` is called once it listens), on the same loop, engine and
    admission, stopped with the HTTP server (see :mod:`.grpc`). ``fast_refusal=False``
    leaves the overload 503 to the app instead of the HTTP protocol, and ``tune_gc=False``
    leaves Python's garbage collector as it is (see the module's doc). Other keyword
    arguments go to :func:`create_app` (``max_body_bytes``, ...).
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
    allow_code: bool = False,
    drain_timeout: float = 30.0,
    grace_period: float = 0.0,
    log_level: str = "info",
    on_started: Callable[[int], None] | None = None,
    **app_kwargs: Any,
) -> int:
    """``inferline serve REPO``: serves every model of a repository folder until SIGTERM or
    SIGINT, then drains. Returns the process exit status (0 after a graceful stop).
    ``allow_code`` is the operator's key for running a repository's ``model.py`` (the
    repository's ``[python] allow_code`` is the other)."""
    engine = Engine.from_repository(
        repository, watch=watch, poll_interval=poll_interval, allow_code=allow_code
    )
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
