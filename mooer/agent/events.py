"""What a live session tells its owner: typed events, the only thing a server consumes.

Ids are strings unique within an engine (``item_<session>_<n>``, ``resp_<session>_<n>``). Times
count from the first sample the session was fed. For one session, events arrive in the order
they happened and never concurrently; see ``Engine`` for the threads they arrive on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Base of every session event."""


@dataclass(frozen=True)
class SpeechStarted(Event):
    """The voice activity detector opened an utterance (padding included)."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped(Event):
    """The utterance ended: enough silence, or max_segment_s reached (a new one starts at once)."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True)
class Committed(Event):
    """The utterance's audio is final; its Transcript/Translation (and chat reply) follow."""

    item_id: str


@dataclass(frozen=True)
class TranscriptDelta(Event):
    """A partial result while the utterance goes on.

    ``delta`` is append-only: the deltas of an item concatenate to ``stable_text``, text that
    later partials no longer change. ``text`` is the whole current hypothesis (``stable_text``
    followed by a tail that may still change), for live captions. The final ``Transcript`` is
    decoded afresh with the offline settings and is the authoritative text.
    """

    item_id: str
    delta: str
    stable_text: str
    text: str


@dataclass(frozen=True)
class FinalTiming:
    """Where the wait for an utterance's final went, in seconds: ``endpoint``, the pause the
    voice activity detector heard before it ended the utterance (audio time; 0 for a commit or
    a cut of speech that goes on); ``queued``, from the endpoint to the final's decode starting
    (behind the session's partial and other clients' work); ``decode``, encoding and decoding
    it (0 when a decode begun in the pause already had it: ``early``)."""

    endpoint: float
    queued: float
    decode: float
    early: bool = False


@dataclass(frozen=True)
class Transcript(Event):
    """The final transcript of an utterance; ``language`` is "zh" or "en" as guessed from it;
    ``speaker`` who said it (0-based, in order of first appearance) where the session labels
    speakers (see ``mooer.asr.speakers``), else None; ``timing``: where the wait for it went."""

    item_id: str
    text: str
    language: str | None = None
    speaker: int | None = None
    timing: FinalTiming | None = None


@dataclass(frozen=True)
class TranslationDelta(Event):
    """Append-only translation text (live interpretation); ``Translation`` is authoritative."""

    item_id: str
    delta: str


@dataclass(frozen=True)
class Translation(Event):
    """The final translation of an utterance; ``speaker`` and ``timing`` as in ``Transcript``."""

    item_id: str
    text: str
    speaker: int | None = None
    timing: FinalTiming | None = None


@dataclass(frozen=True)
class TranslationAudioDelta(Event):
    """Speech of a final translation (``ast`` sessions with ``speech_output``), a sentence at
    a time: mono PCM16, little-endian, at ``sample_rate``."""

    item_id: str
    audio: bytes
    sample_rate: int


@dataclass(frozen=True)
class ResponseStarted(Event):
    """A chat reply begins: to the spoken user turn ``item_id``, or (None) to the conversation
    as remembered; ``output_item_id`` names the assistant message it makes."""

    response_id: str
    item_id: str | None
    output_item_id: str


@dataclass(frozen=True)
class ResponseTextDelta(Event):
    """Reply text as it is generated; the deltas concatenate to ``ResponseDone.text``."""

    response_id: str
    delta: str


@dataclass(frozen=True)
class ResponseAudioDelta(Event):
    """Speech of the reply (sessions with ``speech_output``), a sentence at a time.

    ``audio`` is mono PCM16, little-endian, at ``sample_rate``; the deltas of a response play
    back to back. None follow an ``AudioCleared`` of the same response.
    """

    response_id: str
    audio: bytes
    sample_rate: int


@dataclass(frozen=True)
class ResponseAudioDone(Event):
    """All the speech of a completed reply was sent (a cancelled one gets ``AudioCleared``)."""

    response_id: str


@dataclass(frozen=True)
class AudioCleared(Event):
    """A speaking reply was cut off (barge-in, cancel_response, reset): a player drops what it
    holds of it at once. Its ``ResponseDone`` (cancelled) follows."""

    response_id: str


ResponseStatus = Literal["completed", "cancelled", "failed"]


@dataclass(frozen=True)
class ResponseDone(Event):
    """The reply ended: ``completed``, ``cancelled`` (barge-in or cancel_response, ``text`` is
    what was said so far) or ``failed`` (an Error event says why).

    Tokens: ``input_tokens`` the LLM read (``cached_tokens`` of them from the conversation's
    cache), ``output_tokens`` of text it generated.
    """

    response_id: str
    text: str
    status: ResponseStatus
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Error(Event):
    """Something the session could not do; it goes on working.

    Codes: ``empty_commit`` (commit with no audio), ``model_error`` (model work failed; message
    says why).
    """

    code: str
    message: str


@dataclass(frozen=True)
class SessionClosed(Event):
    """The last event of a session, after ``close()`` (and the finals it flushed)."""

    session_id: str


class Outbox:
    """Delivers one session's events to its owner's callback: one at a time, from any thread,
    none after ``mute()`` but the ``SessionClosed`` of ``close()``.

    ``lock`` is held while an event is delivered; a caller that must decide and deliver in one
    step (no audio delta after its response was cancelled) holds it and calls ``deliver``.
    """

    def __init__(self, session_id: str, on_event: Callable[[Event], None]) -> None:
        self.session_id = session_id
        self.lock = threading.Lock()
        self.muted = False
        self._on_event = on_event

    def emit(self, event: Event) -> None:
        with self.lock:
            self.deliver(event)

    def deliver(self, event: Event) -> None:
        """``emit`` for a caller that holds ``lock``."""
        if not self.muted:
            self._call(event)

    def mute(self) -> None:
        with self.lock:
            self.muted = True

    def close(self) -> None:
        """Send ``SessionClosed``, the last event, and mute."""
        with self.lock:
            self._call(SessionClosed(self.session_id))
            self.muted = True

    def _call(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:  # the owner's bug must not stop the engine or the session
            log.exception("session %s: on_event failed on %r", self.session_id, event)
