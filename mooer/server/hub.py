"""What all connections share: the model and engine, the limits, metrics, and shutdown."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from starlette.requests import HTTPConnection

from mooer.agent.session import SessionConfig
from mooer.server.config import ServerConfig
from mooer.server.connection import ProtocolError
from mooer.server.metrics import Metrics
from mooer.server.vad_clock import VadClock

if TYPE_CHECKING:
    from mooer.agent.engine import Engine
    from mooer.meetings.store import MeetingStore
    from mooer.model import SpeechLLM
    from mooer.server.connection import Link, WireProtocol
    from mooer.server.recorder import Recorder

log = logging.getLogger("mooer.server")

T = TypeVar("T")

KEY_SUBPROTOCOL = "openai-insecure-api-key."  # how browsers pass a key (they cannot set headers)


def presented_key(conn: HTTPConnection) -> str | None:
    """The API key a client sent: bearer header, ``api_key`` query parameter or subprotocol."""
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if conn.query_params.get("api_key"):
        return conn.query_params["api_key"]
    for offered in conn.scope.get("subprotocols") or []:
        if offered.startswith(KEY_SUBPROTOCOL):
            return offered[len(KEY_SUBPROTOCOL) :]
    return None


class Hub:
    """The model is loaded once and shared; each connection registers here while it lives."""

    def __init__(
        self,
        model: SpeechLLM,
        engine: Engine,
        config: ServerConfig,
        session_defaults: SessionConfig | None = None,
        metrics: Metrics | None = None,
        meetings: MeetingStore | None = None,
        replica: str | None = None,
    ) -> None:
        self.model = model
        self.engine = engine
        self.config = config
        # Decoding options, VAD and partial interval of every session; protocols set the rest.
        self.session_defaults = session_defaults or SessionConfig()
        # One of several replicas (mooer serve --ray): named in /health and on every series.
        self.replica = replica
        self.metrics = metrics or Metrics({"replica": replica} if replica else None)
        self.connections: set[WireProtocol] = set()
        self.vad_clock = VadClock()  # the live sessions' VAD, scored together
        self.draining = False
        self._closed = False
        # An HTTP request's light pre- and post-processing (VAD pass, audio encoding), one at a
        # time off the event loop; its model work is scheduled on the engine like a session's.
        self._offline = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mooer-http")
        # Meetings: opened on first use; one thread writes every recorded connection's finals.
        self._meetings = meetings  # None: opened from config.meetings_db when first needed
        self._meeting_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mooer-meet")

    def meeting_store(self) -> MeetingStore:
        """The store ``config.meetings_db`` names (not connected until first used)."""
        if self._meetings is None:
            from mooer.meetings import open_store

            self._meetings = open_store(self.config.meetings_db)
        return self._meetings

    def records(self, query: dict[str, str]) -> bool:
        """Whether a new connection is recorded: ``--record``, or ``?record=1`` from the client."""
        return self.config.record or query.get("record", "").lower() in ("1", "true", "yes")

    def labels_speakers(self, query: dict[str, str]) -> bool:
        """Whether a new connection asked for speaker labels (``?speakers=1``)."""
        return query.get("speakers", "").lower() in ("1", "true", "yes")

    def recorder(self, link: Link, report: Callable[[ProtocolError], None]) -> Recorder:
        """Start keeping ``link``'s finals as a new meeting (``MooerError``: no store here)."""
        from mooer.meetings.recording import Recording
        from mooer.meetings.tape import AudioTape
        from mooer.server.recorder import Recorder

        store = self.meeting_store()
        received_ms = round(link.audio_s * 1000)
        tape = AudioTape(received_ms) if self.config.record_audio else None
        recording = Recording(store, link.protocol_name, lambda: round(link.audio_s * 1000),
                              tape=tape)  # fmt: skip
        return Recorder(recording, self._meeting_writer, link.loop, report)

    def auth_error(self, conn: HTTPConnection) -> ProtocolError | None:
        """Why this request may not use the API, or None."""
        return self.key_error(presented_key(conn))

    def key_error(self, key: object, where: str = "") -> ProtocolError | None:
        """Why ``key`` (None: none was sent) does not open this server, or None.

        ``where`` says how this client can send one; the default names the HTTP ways."""
        if self.config.api_key is None:
            return None
        if key is None:
            return ProtocolError(
                "missing_api_key",
                "this server needs an API key: "
                + (
                    where
                    or "send 'Authorization: Bearer KEY' (browsers: the api_key query parameter)"
                ),
            )
        if not isinstance(key, str) or not secrets.compare_digest(
            key.encode(), self.config.api_key.encode()
        ):
            return ProtocolError("invalid_api_key", "the API key is not valid for this server")
        return None

    def key_waived(self, conn: HTTPConnection) -> bool:
        """``funasr_open``: websockets on the FunASR port (all of them FunASR) need no key."""
        server = conn.scope.get("server") or (None, None)
        return (
            self.config.funasr_open
            and conn.scope["type"] == "websocket"
            and server[1] == self.config.funasr_port
        )

    def key_awaited(self, conn: HTTPConnection, in_first_message: bool) -> bool:
        """Whether this websocket's key is to come in its first message (FunASR's clients
        cannot send headers): one is needed, none came with the handshake, and the protocol
        takes one in its first message."""
        if not in_first_message or self.key_waived(conn):
            return False
        error = self.auth_error(conn)
        return error is not None and error.code == "missing_api_key"

    def admission_error(
        self, conn: HTTPConnection, key_awaited: bool = False
    ) -> tuple[ProtocolError, str] | None:
        """Why a new websocket session may not start, with the reason label for metrics.
        ``key_awaited``: the key is checked later, on the first message."""
        if self.draining:
            return ProtocolError(
                "server_shutting_down", "the server is shutting down", kind="server_error"
            ), "shutdown"
        error = None if key_awaited or self.key_waived(conn) else self.auth_error(conn)
        if error is not None:
            return error, "auth"
        origin = conn.headers.get("origin")
        if not self.config.origin_allowed(origin, conn.headers.get("host")):
            return ProtocolError(
                "origin_not_allowed",
                f"pages from origin {origin!r} may not connect; start the server with "
                "--allow-origin to allow them",
            ), "origin"
        if len(self.connections) >= self.config.max_sessions:
            return ProtocolError(
                "session_limit_reached",
                f"the server is at its limit of {self.config.max_sessions} live sessions; "
                "try again later",
                kind="server_error",
            ), "limit"
        return None

    async def run_offline(self, fn: Callable[..., T], *args: object) -> T:
        """Run an HTTP request's blocking non-model work (VAD, encoding) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._offline, fn, *args)

    async def drain(self) -> None:
        """Refuse new sessions and let every live one finish (finals first), within the timeout."""
        self.draining = True
        live = list(self.connections)
        if not live:
            return
        log.info("waiting for %d session(s) to finish", len(live))
        done, pending = await asyncio.wait(
            [asyncio.ensure_future(p.finish("the server is shutting down")) for p in live],
            timeout=self.config.shutdown_timeout_s,
        )
        for task in done:
            if task.exception() is not None:
                log.error("a session failed to finish: %r", task.exception())
        if pending:
            log.warning("%d session(s) did not finish in time", len(pending))

    def session_config(self, **changes: object) -> SessionConfig:
        """The server's session defaults with a protocol's ``changes``."""
        return replace(self.session_defaults, **changes)

    def close(self) -> None:
        """Stop the engine (it finishes queued finals first) and the offline worker; once."""
        if self._closed:
            return
        self._closed = True
        self.engine.close(timeout=self.config.shutdown_timeout_s)
        self._offline.shutdown(wait=True)
        self._meeting_writer.shutdown(wait=True)  # the finals the engine flushed are kept
        if self._meetings is not None:
            self._meetings.close()
