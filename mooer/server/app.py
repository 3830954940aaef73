"""The ASGI app (starlette) and the uvicorn server around it: routes, ports, graceful shutdown.

One uvicorn server listens on the main port and, when ``funasr_port`` is set, on FunASR's port
too, where every websocket path speaks the FunASR protocol (FunASR clients connect to ``/``).
On shutdown the sessions are drained first: each pending utterance gets its final before its
connection closes (uvicorn alone would cut websockets off at once).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from mooer.errors import ConfigError
from mooer.server.connection import Link, WireProtocol, serve_connection
from mooer.server.funasr_ws import FunasrProtocol
from mooer.server.http_api import HttpApi
from mooer.server.hub import Hub
from mooer.server.logs import install_log_filter
from mooer.server.meetings_api import MeetingsApi
from mooer.server.realtime import RealtimeProtocol
from mooer.server.translation import TranslationProtocol

log = logging.getLogger("mooer.server")

STATIC_DIR = Path(__file__).parent / "static"
# Frames bigger than our own limit still reach the app, which answers with an error event;
# only frames past this hard cap make the websocket library drop the connection.
HARD_FRAME_CAP = 4


def _websocket(hub: Hub, make: Callable[[Link], WireProtocol]):
    async def endpoint(websocket: WebSocket) -> None:
        await serve_connection(websocket, hub, make)

    return endpoint


def create_app(hub: Hub) -> ASGIApp:
    """All routes on the main port; with ``funasr_port``, websockets there go to FunASR."""
    api = HttpApi(hub)

    async def index(request) -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    async def meetings_page(request) -> FileResponse:  # its data comes from the API, behind the key
        return FileResponse(STATIC_DIR / "meetings.html")

    funasr = _websocket(hub, FunasrProtocol)
    app = Starlette(
        routes=[
            WebSocketRoute("/v1/realtime", _websocket(hub, RealtimeProtocol)),
            WebSocketRoute("/v1/realtime/translations", _websocket(hub, TranslationProtocol)),
            WebSocketRoute("/funasr", funasr),
            Route("/v1/audio/transcriptions", api.transcriptions(), methods=["POST"]),
            Route("/v1/audio/translations", api.translations(), methods=["POST"]),
            Route("/v1/audio/speech", api.speech, methods=["POST"]),
            Route("/v1/models", api.models),
            Route("/health", api.health),
            Route("/metrics", api.metrics),
            *MeetingsApi(hub).routes(),
            Route("/", index),
            Route("/meetings", meetings_page),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        ]
    )
    if hub.config.funasr_port is None:
        return app

    async def by_port(scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") or (None, None)
        if scope["type"] == "websocket" and server[1] == hub.config.funasr_port:
            await funasr(WebSocket(scope, receive, send))
        else:
            await app(scope, receive, send)

    return by_port


class _Server(uvicorn.Server):
    """uvicorn, with the sessions drained before it closes connections."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.hub.drain()
        await super().shutdown(sockets)
        # uvicorn ends the process by re-raising the signal that stopped it: close here.
        await asyncio.to_thread(self.hub.close)


def _bind(host: str, port: int, flag: str) -> socket.socket:
    """A listening socket's address, or a ``ConfigError`` naming it and the ``flag`` that sets it
    (a port in use is a setting to change, not a crash)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            f"(another server there? choose another with {flag})"
        ) from None
    sock.set_inheritable(True)
    return sock


@dataclass
class RunningServer:
    """A server started by ``start``: where it listens and how to stop it."""

    hub: Hub
    host: str
    port: int
    funasr_port: int | None
    _server: _Server
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: pending finals go out, then the sockets close and the engine stops."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def _prepare(hub: Hub, log_level: str) -> tuple[_Server, list[socket.socket]]:
    cfg = hub.config
    sockets = [_bind(cfg.host, cfg.port, "--port")]
    if cfg.funasr_port is not None:
        try:
            sockets.append(_bind(cfg.host, cfg.funasr_port, "--funasr-port"))
        except ConfigError:
            sockets[0].close()
            raise
    uv_config = uvicorn.Config(
        create_app(hub),
        log_level=log_level,
        lifespan="off",
        ws_max_size=HARD_FRAME_CAP * cfg.max_message_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=cfg.shutdown_timeout_s,
    )
    install_log_filter(cfg.api_key)  # after uvicorn.Config: it makes its log handlers anew
    return _Server(uv_config, hub), sockets


def _run(server: _Server, sockets: list[socket.socket]) -> None:
    # The event loop's torch work is the sessions' VAD, which runs best on one thread (see
    # VadModel). Set once for this thread, it is not switched there and back around every
    # scoring (Session's per-call switch): with the switch, a second OpenMP thread spun at its
    # barriers for 0.07 to 0.11 of a core at 8 live sessions, on 2 cores.
    torch.set_num_threads(1)
    try:
        asyncio.run(server.serve(sockets=sockets))
    finally:
        for sock in sockets:
            sock.close()
        server.hub.close()


def start(hub: Hub, log_level: str = "warning") -> RunningServer:
    """Serve in a background thread; returns once the ports accept connections."""
    server, sockets = _prepare(hub, log_level)
    ports = [s.getsockname()[1] for s in sockets]
    thread = threading.Thread(target=_run, args=(server, sockets), name="mooer-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server thread stopped while starting; see its log")
        thread.join(0.01)
    return RunningServer(
        hub, hub.config.host, ports[0], ports[1] if len(ports) > 1 else None, server, thread
    )


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
HEAP_THRESHOLD = 128 * 1024


def fix_heap_thresholds() -> bool:
    """Fix glibc's trim and mmap thresholds (as MALLOC_*_THRESHOLD_ would) in a long-running
    server; False where the C library is not glibc or the user set either variable (theirs wins).

    glibc raises its mmap threshold each time a large block is freed, so later buffers of that
    size come from heaps it never hands back: RSS crept 0.8 MB/min over a 10-minute soak with
    nothing leaking (docs/server.md). Fixed thresholds turn the sliding off.
    """
    import ctypes
    import ctypes.util
    import os

    if {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"} & os.environ.keys():
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # no mallopt: not glibc
        return False
    return all(mallopt(p, HEAP_THRESHOLD) == 1 for p in (M_TRIM_THRESHOLD, M_MMAP_THRESHOLD))


def run(hub: Hub, log_level: str = "info", listening: Callable[[], None] | None = None) -> None:
    """Serve in this thread until SIGINT/SIGTERM, then shut down gracefully; ``listening`` is
    called once the ports are bound."""
    fix_heap_thresholds()
    server, sockets = _prepare(hub, log_level)
    if listening is not None:
        listening()
    _run(server, sockets)
