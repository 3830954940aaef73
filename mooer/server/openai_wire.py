"""What OpenAI's two websocket APIs share: event framing, the error event, audio in, the ending."""

from __future__ import annotations

import base64
from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

from mooer.errors import MooerError
from mooer.server.connection import (
    CLOSE_POLICY,
    Link,
    ProtocolError,
    WireProtocol,
    new_id,
    parse_json_object,
)
from mooer.server.pcm import WireDecoder, WireFormat

# Engine error codes a client caused (the rest are the server's own failures)
CLIENT_ERRORS = frozenset({"empty_commit"})


def error_kind(code: str) -> str:
    """OpenAI's error ``type`` for an engine error code."""
    return "invalid_request_error" if code in CLIENT_ERRORS else "server_error"


AUDIO_PIECE_MS = 500  # longest audio delta sent: clients cap message sizes (websockets: 1 MiB)


def audio_pieces(pcm: bytes, sample_rate: int, max_ms: int = AUDIO_PIECE_MS) -> Iterator[str]:
    """PCM16 bytes -> base64 deltas of at most ``max_ms`` each, cut between samples."""
    step = max(1, sample_rate * max_ms // 1000) * 2
    for start in range(0, len(pcm), step):
        yield base64.b64encode(pcm[start : start + step]).decode("ascii")


def json_object(value: object, param: str) -> dict[str, Any]:
    """An optional object field of an event: ``{}`` when absent, ``ProtocolError`` if not one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError("invalid_value", f"{param} must be an object", param)
    return value


class OpenAIWire(WireProtocol):
    """Events are JSON objects with ``type`` and ``event_id``; audio feeds one engine session."""

    unsupported: ClassVar[frozenset[str]] = frozenset()  # known events this server does not serve

    def __init__(self, link: Link, fmt: WireFormat) -> None:
        super().__init__(link)
        self.session = None  # the engine session, opened by start()
        self.decoder = WireDecoder(fmt)
        self.samples_fed = 0  # at 16 kHz, all engine sessions of this connection
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {}

    def emit(self, kind: str, **fields: Any) -> None:
        self.link.send({"type": kind, "event_id": new_id("event"), **fields})

    def with_meeting(self, session: dict[str, Any]) -> dict[str, Any]:
        """A session object, with ``mooer.meeting_id`` while this connection is recorded."""
        if self.link.recorder is None:
            return session
        mooer = {**session.get("mooer", {}), "meeting_id": self.link.recorder.meeting_id}
        return {**session, "mooer": mooer}

    def without_meeting(self, session: object) -> object:
        """A ``session.update``'s session without ``mooer.meeting_id``: a client may echo the id
        it was given (a session object read back and sent again), never set or change it."""
        mooer = session.get("mooer") if isinstance(session, dict) else None
        if not isinstance(mooer, dict) or "meeting_id" not in mooer:
            return session
        given = self.link.recorder.meeting_id if self.link.recorder is not None else None
        if mooer["meeting_id"] != given:
            raise ProtocolError(
                "invalid_value",
                f"session.mooer.meeting_id is read-only: this session's is {given!r} (a meeting "
                "is asked for with ?record=1 when connecting)",
                "session.mooer.meeting_id",
            )
        rest = {k: v for k, v in mooer.items() if k != "meeting_id"}
        return {**session, "mooer": rest}

    def error_message(self, error: ProtocolError) -> dict[str, Any]:
        return {
            "type": "error",
            "event_id": new_id("event"),
            "error": {
                "type": error.kind,
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "event_id": error.event_id,
            },
        }

    def on_text(self, text: str) -> None:
        event = parse_json_object(text)
        kind = event.get("type")
        client_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            if not isinstance(kind, str):
                raise ProtocolError("invalid_event", "the event has no 'type' string", "type")
            if self.ending:
                raise ProtocolError("session_closing", f"the session is closing: {kind} ignored")
            if kind in self.unsupported:
                raise ProtocolError(
                    "unsupported_event", f"mooer does not serve {kind!r} events", "type"
                )
            if kind not in self.handlers:
                raise ProtocolError(
                    "unknown_event",
                    f"unknown event type {kind!r}: this endpoint takes "
                    f"{', '.join(sorted(self.handlers))} (see docs/protocol.md)",
                    "type",
                )
            self.handlers[kind](event)
        except ProtocolError as error:
            error.event_id = error.event_id or client_id
            raise
        except MooerError as error:  # bad settings found below the protocol: still its event's
            raise ProtocolError("invalid_value", str(error), event_id=client_id) from error

    def on_binary(self, data: bytes) -> None:
        """Binary frames carry raw audio in the session's input format (a mooer extension)."""
        self.feed(self.decoder.decode(data))

    def append(self, event: dict[str, Any]) -> None:
        if "audio" not in event:
            raise ProtocolError(
                "missing_required_parameter", f"{event['type']} needs 'audio'", "audio"
            )
        self.feed(self.decoder.decode_base64(event["audio"]))

    def feed(self, samples: np.ndarray) -> None:
        if self.ending or samples.size == 0 or not self.admit_audio(samples):
            return
        self.samples_fed += samples.size
        self.link.hub.vad_clock.hear(self.session, samples)

    def reopen(self, config) -> None:
        """Replace the engine session (its config is fixed): the old one still sends its finals."""
        self.session.close(flush=True)
        self.session = self.link.open_session(config, self.on_event)

    @abstractmethod
    def on_event(self, event: object) -> None:
        """An engine event, on the event loop."""

    async def end(self, reason: str, code: int) -> None:
        session, self.session = self.session, None
        if session is not None:
            tail = self.decoder.flush()
            if tail.size and code != CLOSE_POLICY:
                session.feed(tail)
            await self.link.close_session(session)
        self.closing_message()
        self.link.close(code, reason)

    def closing_message(self) -> None:
        """Sent after the last final, before the websocket closes."""

    def abort(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close(flush=False)
