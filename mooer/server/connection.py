"""One websocket connection: admission, the receive loop, the send queue, and the engine bridge.

Each protocol (OpenAI Realtime, Realtime Translation, FunASR) is a ``WireProtocol``: it turns
client messages into calls on an engine ``Session`` and engine events into messages. Its
handlers are plain methods that run on the event loop and never block; what they send goes
through one queue, so messages leave in the order they were produced. Engine events arrive
on the engine's worker thread and are handed to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from mooer.agent import events as ev
from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError, MooerError, check_number
from mooer.llm.backend import check_hotwords
from mooer.llm.biasing import Hotwords, hotwords_from_text
from mooer.server.logs import log_handshake

if TYPE_CHECKING:
    from mooer.agent.session import Session, SessionConfig
    from mooer.asr.speakers import SpeakerLabeller
    from mooer.llm.backend import LLMBackend
    from mooer.server.hub import Hub
    from mooer.server.recorder import Recorder

log = logging.getLogger("mooer.server")

# Websocket close codes (RFC 6455 section 7.4.1)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutdown
CLOSE_POLICY = 1008  # refused: bad key, bad origin, a limit reached
CLOSE_TRY_AGAIN = 1013  # refused: too many sessions


# Deeper JSON is refused: every message of these protocols nests a few levels, and
# echoing or printing a deeply nested value would recurse.
MAX_JSON_DEPTH = 32
_TOO_DEEP = f"the message is not usable JSON: it nests more than {MAX_JSON_DEPTH} levels deep"


def new_id(prefix: str) -> str:
    """An id like OpenAI's: ``event_3f1c...``."""
    return f"{prefix}_{secrets.token_hex(10)}"


class ProtocolError(Exception):
    """A client message the protocol cannot act on; becomes an error message, not a disconnect."""

    def __init__(
        self,
        code: str,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        event_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.kind = kind
        self.event_id = event_id  # of the client message at fault, when it had one


def hotwords_field(
    value: object,
    name: str,
    backend: LLMBackend | None,
    read: Callable[[object, str], Hotwords | None] = hotwords_from_text,
) -> Hotwords | None:
    """A request's hotwords from its field ``name`` (read by ``read``; default: the words of a
    prompt); a ``ProtocolError`` naming the field when they are too many or too long, or when
    the LLM ``backend`` cannot use them (None: not checked)."""
    try:
        hotwords = read(value, name)
        if hotwords is not None and backend is not None:
            check_hotwords(backend)
    except ConfigError as exc:
        raise ProtocolError("invalid_value", str(exc), name) from None
    return hotwords


def parse_json_object(text: str) -> dict[str, Any]:
    """A text frame -> a JSON object, or a ``ProtocolError`` saying what is wrong with it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            "invalid_json", f"the message is not valid JSON: {exc.msg} at char {exc.pos}"
        ) from exc
    except ValueError as exc:  # an integer past Python's digit limit
        raise ProtocolError(
            "invalid_json", "the message is not usable JSON: a number has too many digits"
        ) from exc
    except RecursionError as exc:
        raise ProtocolError("invalid_json", _TOO_DEEP) from exc
    if not isinstance(obj, dict):
        raise ProtocolError(
            "invalid_json", f"the message must be a JSON object, got {type(obj).__name__}"
        )
    if _depth_over(obj, MAX_JSON_DEPTH):
        raise ProtocolError("invalid_json", _TOO_DEEP)
    return obj


def _depth_over(obj: object, limit: int) -> bool:
    """Whether ``obj`` nests dicts and lists more than ``limit`` deep (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in value)
    return False


def number_field(
    value: object, param: str, low: float, high: float | None = None, integer: bool = True
) -> Any:
    """A client's numeric field, or ``invalid_value`` naming ``param`` and its range."""
    try:
        return check_number(value, param, low, high, integer=integer)
    except ConfigError as exc:
        raise ProtocolError("invalid_value", str(exc), param) from exc


class Link:
    """What a protocol may do with its connection: send, close, open engine sessions."""

    def __init__(self, websocket: WebSocket, hub: Hub, protocol_name: str) -> None:
        self.websocket = websocket
        self.hub = hub
        self.protocol_name = protocol_name
        self.loop = asyncio.get_running_loop()
        self.outbox: asyncio.Queue[dict[str, Any] | tuple[int, str]] = asyncio.Queue()
        self.closing = False
        self.audio_s = 0.0  # received so far, all engine sessions together
        self.key_awaited = False  # the API key is to come in the first message (FunASR)
        self._closed: dict[int, asyncio.Future] = {}  # by id(session): set by SessionClosed
        self._ended: dict[str, float] = {}  # item id -> when its utterance ended (monotonic)
        self.recorder: Recorder | None = None  # set while this connection is kept as a meeting
        self.speakers: SpeakerLabeller | None = None  # set once its finals carry speakers

    @property
    def query(self) -> dict[str, str]:
        return dict(self.websocket.query_params)

    def admit_key(self, key: object, where: str) -> ProtocolError | None:
        """Check the key a first message carried (see ``key_awaited``); None: admitted.
        The handshake's access line is written now that its outcome is known."""
        self.key_awaited = False
        error = self.hub.key_error(key, where)
        if error is not None:
            self.hub.metrics.sessions_refused.inc(reason="auth")
            log.info("%s: refused a connection (auth): %s", self.protocol_name, error.message)
        log_handshake(self.websocket, "accepted" if error is None else f"refused: {error.code}")
        return error

    def send(self, message: dict[str, Any]) -> None:
        """Queue a JSON message; dropped once the connection is closing for good."""
        if not self.closing:
            self.outbox.put_nowait(message)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close after everything queued so far has been sent."""
        if not self.closing:
            self.closing = True
            self.outbox.put_nowait((code, reason[:120]))

    def record(self, report: Callable[[ProtocolError], None]) -> str | None:
        """Keep this connection's finals as a meeting from now on; its id (None: the store
        cannot be used, and ``report`` has said why). Asking again returns the same id."""
        if self.recorder is None:
            try:
                self.recorder = self.hub.recorder(self, report)
            except MooerError as exc:
                report(ProtocolError("recording_stopped", str(exc), kind="server_error"))
                return None
            self.label_speakers(report, asked=False)
        return self.recorder.meeting_id

    def label_speakers(self, report: Callable[[ProtocolError], None], asked: bool = True) -> None:
        """Label the speakers of this connection's finals, from its next engine session on, with
        one numbering for all its sessions (its meeting's). Without resemblyzer, a client that
        ``asked`` is told why; a recording goes on without labels."""
        if self.speakers is None:
            try:
                self.speakers = self.hub.engine.speaker_labeller(self.hub.config.speakers)
            except MooerError as exc:
                if asked:
                    report(ProtocolError("speakers_unavailable", str(exc), kind="server_error"))
                else:
                    log.info("%s: recorded without speaker labels: %s", self.protocol_name, exc)

    def open_session(self, config: SessionConfig, on_event: Callable[[Any], None]) -> Session:
        """An engine session whose events run ``on_event`` on this connection's event loop
        (through the meeting writer first, while recording)."""
        closed = self.loop.create_future()
        offset_ms = round(self.audio_s * 1000)  # where this session starts in the meeting

        def hand_over(event: Any) -> None:
            try:
                self.loop.call_soon_threadsafe(self._dispatch, on_event, event, closed)
            except RuntimeError:  # the loop is closed: the server has stopped, no one listens
                pass

        def deliver(event: Any) -> None:  # on the engine's worker thread
            if self.recorder is None:
                hand_over(event)
            else:
                self.recorder.keep(event, offset_ms, hand_over)

        session = self.hub.engine.open(config, deliver, self.speakers)
        self._closed[id(session)] = closed
        return session

    async def close_session(self, session: Session) -> None:
        """Close ``session`` with its pending finals and wait until its last event was handled."""
        closed = self._closed.pop(id(session), None)
        session.close(flush=True)
        if closed is None:  # closed before
            return
        try:
            await asyncio.wait_for(asyncio.shield(closed), self.hub.config.shutdown_timeout_s)
        except asyncio.TimeoutError:
            log.warning("%s: session did not flush within the shutdown timeout", self.protocol_name)

    def count_audio(self, seconds: float) -> bool:
        """Add received audio; False once the session's audio allowance is used up."""
        self.audio_s += seconds
        self.hub.metrics.audio_seconds.inc(seconds, protocol=self.protocol_name)
        return self.audio_s <= self.hub.config.max_session_audio_s

    def _dispatch(
        self, on_event: Callable[[Any], None], event: Any, closed: asyncio.Future
    ) -> None:
        try:
            on_event(event)
        except Exception:  # a bug in a mapping must not take the connection's loop down
            log.exception("%s: failed to handle engine event %r", self.protocol_name, event)
        self._time(event)
        if isinstance(event, ev.SessionClosed) and not closed.done():
            closed.set_result(None)

    def _time(self, event: Any) -> None:
        """End of utterance (speech stopped or commit) to its first final, for the metrics."""
        if isinstance(event, ev.SpeechStopped | ev.Committed):
            self._ended.setdefault(event.item_id, time.monotonic())
        elif isinstance(event, ev.Transcript | ev.Translation):
            ended = self._ended.pop(event.item_id, None)
            if ended is not None:
                latency = time.monotonic() - ended
                self.hub.metrics.final_latency.observe(latency, protocol=self.protocol_name)
                timing = event.timing
                if timing is not None:  # once per utterance, as the latency
                    for stage in ("endpoint", "queued", "decode"):
                        self.hub.metrics.final_stage.observe(
                            getattr(timing, stage), protocol=self.protocol_name, stage=stage
                        )
                    if timing.early:
                        self.hub.metrics.early_finals.inc(protocol=self.protocol_name)


class WireProtocol(ABC):
    """A protocol's side of one connection. Subclasses name themselves for metrics and logs."""

    name: ClassVar[str]
    subprotocols: ClassVar[tuple[str, ...]] = ()  # accepted when the client offers them
    key_in_first_message: ClassVar[bool] = False  # clients that cannot send it with the handshake

    def __init__(self, link: Link) -> None:
        self.link = link
        self._ending: asyncio.Future | None = None

    @abstractmethod
    def start(self) -> None:
        """The connection was accepted: greet the client, open the engine session."""

    @abstractmethod
    def on_text(self, text: str) -> None:
        """One text frame. Raise ``ProtocolError`` for a bad message."""

    @abstractmethod
    def on_binary(self, data: bytes) -> None:
        """One binary frame. Raise ``ProtocolError`` for a bad message."""

    @abstractmethod
    def error_message(self, error: ProtocolError) -> dict[str, Any]:
        """The protocol's way of reporting ``error`` to the client."""

    async def finish(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        """End the session gracefully, once however often asked: finals first, then close."""
        self.finish_soon(reason, code)
        await asyncio.shield(self._ending)

    def finish_soon(self, reason: str, code: int = CLOSE_GOING_AWAY) -> None:
        """``finish`` from a handler that cannot wait."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self.end(reason, code))

    @property
    def ending(self) -> bool:
        return self._ending is not None

    @abstractmethod
    async def end(self, reason: str, code: int) -> None:
        """Flush the engine session (pending utterances get their finals), then close."""

    @abstractmethod
    def abort(self) -> None:
        """The client is gone: drop the engine session without waiting for anything."""

    def count_revision(self) -> None:
        """A final contradicted text this connection had sent on an append-only stream."""
        self.link.hub.metrics.text_revisions.inc(protocol=self.name)

    def report(self, error: ProtocolError) -> None:
        self.link.hub.metrics.errors.inc(code=error.code)
        self.link.send(self.error_message(error))

    def refuse(self, error: ProtocolError, code: int) -> None:
        """Report ``error`` and close: used for refusals."""
        self.report(error)
        self.link.close(code, error.message)

    def admit_audio(self, samples: np.ndarray) -> bool:
        """Count received audio (16 kHz); past the allowance, report and end the session.
        A recorded connection that keeps audio holds on to what it admits."""
        if self.link.count_audio(samples.size / SAMPLE_RATE):
            if self.link.recorder is not None:
                self.link.recorder.hear(samples)
            return True
        limit = self.link.hub.config.max_session_audio_s
        self.report(
            ProtocolError(
                "session_audio_limit",
                f"this session has sent more than the server's limit of {limit:g} s of audio",
            )
        )
        self.finish_soon("audio limit", CLOSE_POLICY)
        return False


async def serve_connection(
    websocket: WebSocket, hub: Hub, make: Callable[[Link], WireProtocol]
) -> None:
    """Run one websocket connection from handshake to close."""
    link = Link(websocket, hub, "pending")
    protocol = make(link)
    link.protocol_name = protocol.name
    offered = websocket.scope.get("subprotocols") or []
    chosen = next((p for p in offered if p in protocol.subprotocols), None)
    await websocket.accept(subprotocol=chosen)

    link.key_awaited = hub.key_awaited(websocket, protocol.key_in_first_message)
    refusal = hub.admission_error(websocket, link.key_awaited)
    if refusal is not None:
        error, reason = refusal
        hub.metrics.sessions_refused.inc(reason=reason)
        log.info("%s: refused a connection (%s): %s", protocol.name, reason, error.message)
        log_handshake(websocket, f"refused: {error.code}")
        protocol.refuse(error, CLOSE_TRY_AGAIN if reason in ("limit", "shutdown") else CLOSE_POLICY)
        await _write(websocket, link)
        return
    if not link.key_awaited:
        log_handshake(websocket, "accepted")

    hub.connections.add(protocol)
    hub.metrics.sessions_total.inc(protocol=protocol.name)
    hub.metrics.sessions_active.inc(protocol=protocol.name)
    writer = asyncio.create_task(_write(websocket, link))
    try:
        if hub.records(link.query):
            link.record(protocol.report)
        if hub.labels_speakers(link.query):
            link.label_speakers(protocol.report)
        protocol.start()
        await _read(websocket, link, protocol, writer)
    finally:
        if link.key_awaited:
            log_handshake(websocket, "closed before sending its key")
        if link.recorder is not None:
            link.recorder.stop()
        hub.connections.discard(protocol)
        hub.metrics.sessions_active.dec(protocol=protocol.name)
        if not writer.done():
            link.close(CLOSE_NORMAL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(writer, timeout=hub.config.shutdown_timeout_s)
        protocol.abort()
        writer.cancel()


async def _read(
    websocket: WebSocket, link: Link, protocol: WireProtocol, writer: asyncio.Task
) -> None:
    limit = link.hub.config.max_message_bytes
    idle = link.hub.config.idle_timeout_s
    receive = asyncio.ensure_future(websocket.receive())
    try:
        while True:
            done, _ = await asyncio.wait(
                {receive, writer}, timeout=idle, return_when="FIRST_COMPLETED"
            )
            if writer in done:  # closed by us (or the socket broke while sending)
                return
            if not done:
                protocol.report(
                    ProtocolError("idle_timeout", f"no message for {idle:g} s: closing the session")
                )
                await protocol.finish("idle timeout")
                return
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                return
            receive = asyncio.ensure_future(websocket.receive())
            data = message.get("bytes")
            text = message.get("text")
            size = len(data) if data is not None else len((text or "").encode())
            try:
                if size > limit:
                    raise ProtocolError(
                        "message_too_large",
                        f"a message of {size} bytes is over this server's limit of {limit} bytes; "
                        "send audio in smaller chunks",
                    )
                if data is not None:
                    protocol.on_binary(data)
                else:
                    protocol.on_text(text or "")
            except ProtocolError as error:
                protocol.report(error)
            except MooerError as error:  # bad audio or settings found below the protocol
                protocol.report(ProtocolError("invalid_value", str(error)))
            except Exception as exc:  # a server bug: say so, keep the connection
                log.exception("%s: failed to handle a message", protocol.name)
                protocol.report(
                    ProtocolError(
                        "server_error",
                        f"the server failed on this message: {type(exc).__name__}: {exc}",
                        kind="server_error",
                    )
                )
            if link.closing:
                await asyncio.wait({receive, writer}, timeout=link.hub.config.shutdown_timeout_s)
                return
    finally:
        receive.cancel()


def _dumps(message: dict[str, Any]) -> str:
    """JSON text for the wire; escaped where a client's string held a lone surrogate
    (``"\\ud800"`` parses, but has no UTF-8 form)."""
    text = json.dumps(message, ensure_ascii=False)
    try:
        text.encode()
    except UnicodeEncodeError:
        return json.dumps(message)
    return text


async def _write(websocket: WebSocket, link: Link) -> None:
    """Send queued messages in order until a close request (or a dead socket)."""
    while True:
        item = await link.outbox.get()
        if websocket.application_state != WebSocketState.CONNECTED:
            return
        try:
            if isinstance(item, tuple):
                code, reason = item
                await websocket.close(code, reason)
                return
            await websocket.send_text(_dumps(item))
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:  # the client went away
            log.debug("%s: send failed: %s", link.protocol_name, exc)
            return
