"""OpenAI's Realtime API (GA) at ``/v1/realtime``, for the part of it a speech LLM can serve.

``AsyncOpenAI(base_url="http://HOST:PORT/v1").realtime.connect(model=...)`` connects unchanged.
Client events: ``session.update``, ``input_audio_buffer.append|commit|clear``,
``response.create|cancel``; binary frames carry raw audio in the session's input format.
Server events: ``session.created|updated``, ``input_audio_buffer.speech_started|speech_stopped|
committed|cleared``, ``conversation.item.added|done``,
``conversation.item.input_audio_transcription.delta|completed``, the ``response.*`` text
sequence, and ``error``. With ``output_modalities`` ``["audio"]`` a reply is spoken:
``response.output_audio.delta|done`` (base64 PCM16), ``response.output_audio_transcript.delta|
done`` in place of the text events, and ``output_audio_buffer.started|stopped|cleared`` (cleared
at barge-in or on ``output_audio_buffer.clear``). docs/protocol.md describes every message.

mooer's own additions: in the ast tasks with ``output_modalities`` ``["audio"]`` each final
translation is spoken as ``conversation.item.input_audio_translation.audio.delta`` (base64
PCM16 with ``sample_rate``); the client event ``session.close`` ends the session as on
``/v1/realtime/translations``: what is pending is flushed (translations spoken), then
``session.closed`` and the socket closes. A change of ``instructions`` alone keeps the
conversation (its cache is rebuilt under the new system turn).

Which stream carries what, by task (``session.mooer.task``):
asr and chat put the transcript in ``input_audio_transcription``; ast puts the English
translation there (it is the session's transcript, in English); asr+ast adds the translation
as ``conversation.item.input_audio_translation.delta|completed`` (a mooer event). chat answers
each turn as a response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mooer.agent import events as ev
from mooer.audio import SAMPLE_RATE
from mooer.server.connection import CLOSE_NORMAL, Link, ProtocolError, new_id
from mooer.server.openai_wire import OpenAIWire, audio_pieces, error_kind, json_object
from mooer.server.pcm import WireDecoder
from mooer.server.realtime_session import RealtimeSettings, apply_update

# Known client events mooer does not serve.
UNSUPPORTED = frozenset(
    {"conversation.item.delete", "conversation.item.retrieve", "conversation.item.truncate"}
)
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this
# Engine error codes that have an OpenAI name
OPENAI_CODES = {"empty_commit": "input_audio_buffer_commit_empty"}
TRANSLATION_AUDIO = "conversation.item.input_audio_translation.audio.delta"  # mooer's own


@dataclass
class _Utterance:
    """What the server tracks about one user item between speech start and its final."""

    start_ms: int = 0
    end_ms: int = 0


@dataclass
class _Response:
    response_id: str
    item_id: str  # the assistant message's id
    audio: bool = False  # spoken: audio content, transcript events
    audio_started: bool = False  # output_audio_buffer.started was sent
    audio_done: bool = False  # response.output_audio.done was sent


class RealtimeProtocol(OpenAIWire):
    """One ``/v1/realtime`` connection."""

    name = "realtime"
    subprotocols = ("realtime",)
    unsupported = UNSUPPORTED

    def __init__(self, link: Link) -> None:
        kind = "transcription" if link.query.get("intent") == "transcription" else "realtime"
        self.defaults = link.hub.session_defaults
        self.settings = RealtimeSettings.initial(kind, self.defaults)
        super().__init__(link, self.settings.format)
        self.session_id = new_id("sess")
        self.commit_mark = 0  # samples_fed at the last commit or clear
        self.committed_ms = 0  # audio the last client commit covered
        self.items: dict[str, _Utterance] = {}
        self.last_item_id: str | None = None
        self.response: _Response | None = None
        self.cancel_requested = False
        self.close_requested = False  # session.close: session.closed ends the connection
        self.handlers = {
            "session.update": self._session_update,
            "transcription_session.update": self._session_update,  # beta name
            "input_audio_buffer.append": self.append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_clear,
            "session.close": self._close,
        }
        self.event_handlers: dict[type, Callable[[Any], None]] = {
            ev.SpeechStarted: self._on_speech_started,
            ev.SpeechStopped: self._on_speech_stopped,
            ev.Committed: self._on_committed,
            ev.TranscriptDelta: self._on_transcript_delta,
            ev.Transcript: self._on_transcript,
            ev.TranslationDelta: self._on_translation_delta,
            ev.Translation: self._on_translation,
            ev.ResponseStarted: self._on_response_started,
            ev.ResponseTextDelta: self._on_response_text_delta,
            ev.ResponseDone: self._on_response_done,
            ev.ResponseAudioDelta: self._on_response_audio_delta,
            ev.ResponseAudioDone: self._on_response_audio_done,
            ev.AudioCleared: self._on_audio_cleared,
            ev.TranslationAudioDelta: self._on_translation_audio_delta,
            ev.Error: self._on_error,
        }

    def start(self) -> None:
        self.session = self.link.open_session(
            self.settings.engine_config(self.defaults), self.on_event
        )
        self.emit("session.created", session=self._describe())

    def _describe(self) -> dict[str, Any]:
        return self.with_meeting(
            self.settings.describe(self.session_id, self.link.hub.config.model_name)
        )

    # -- client events ---------------------------------------------------------------------

    def _session_update(self, event: dict[str, Any]) -> None:
        new = apply_update(self.settings, event.get("session"))
        if new.format != self.settings.format:
            self.feed(self.decoder.flush())
            self.decoder = WireDecoder(new.format)
        config, current = new.engine_config(self.defaults), self.session.config
        if config != current:
            if replace(config, instructions=current.instructions) == current:
                self.session.set_instructions(config.instructions)  # the turns are kept
            else:
                self.link.hub.engine.check_speech(config)  # a bad voice
                self.reopen(config)
                self.commit_mark = self.samples_fed
        self.settings = new
        self.emit("session.updated", session=self._describe())

    def _close(self, event: dict[str, Any]) -> None:
        self.close_requested = True
        self.finish_soon("closed by the client", CLOSE_NORMAL)

    def closing_message(self) -> None:
        if self.close_requested:
            self.emit("session.closed")

    def _commit(self, event: dict[str, Any]) -> None:
        self.feed(self.decoder.flush())
        pending = self.samples_fed - self.commit_mark
        if pending * 1000 < MIN_COMMIT_MS * SAMPLE_RATE:
            raise ProtocolError(
                "input_audio_buffer_commit_empty",
                f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, "
                f"but the buffer only has {pending * 1000 // SAMPLE_RATE} ms",
            )
        self.commit_mark = self.samples_fed
        self.committed_ms = pending * 1000 // SAMPLE_RATE
        self.session.commit()

    def _clear(self, event: dict[str, Any]) -> None:
        self.decoder.flush()
        self.commit_mark = self.samples_fed
        self.session.clear()
        self.emit("input_audio_buffer.cleared")

    def _require_chat(self, kind: str) -> None:
        if self.settings.task != "chat":
            raise ProtocolError(
                "unsupported_for_task",
                f"{kind} needs session.mooer.task 'chat'; this session's task is "
                f"{self.settings.task!r}",
                "type",
            )

    def _item_create(self, event: dict[str, Any]) -> None:
        """A typed user message (chat): answered by the next ``response.create``."""
        self._require_chat("conversation.item.create")
        item = json_object(event.get("item"), "item")
        if item.get("type", "message") != "message" or item.get("role") != "user":
            raise ProtocolError(
                "unsupported_value", "mooer takes user messages with input_text only", "item"
            )
        parts = item.get("content") if isinstance(item.get("content"), list) else []
        texts = [
            p.get("text") for p in parts if isinstance(p, dict) and p.get("type") == "input_text"
        ]
        text = " ".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
        if not text:
            raise ProtocolError(
                "invalid_value", "item.content needs an input_text part with text", "item.content"
            )
        item_id = self.session.add_text(text)
        added = _user_item(item_id, {"type": "input_text", "text": text})
        self.emit("conversation.item.added", previous_item_id=self.last_item_id, item=added)
        self.emit("conversation.item.done", item=added)
        self.last_item_id = item_id

    def _response_create(self, event: dict[str, Any]) -> None:
        self._require_chat("response.create")
        if self.response is not None:
            raise ProtocolError(
                "conversation_already_has_active_response",
                f"response {self.response.response_id} is still in progress",
            )
        self.session.create_response()

    def _response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self.response is None or wanted not in (None, self.response.response_id):
            raise ProtocolError(
                "response_cancel_not_active",
                "there is no active response to cancel"
                + (f" with id {wanted!r}" if wanted else ""),
                "response_id" if wanted else None,
            )
        self.cancel_requested = True
        self.session.cancel_response()

    def _output_clear(self, event: dict[str, Any]) -> None:
        """Cut the spoken reply off; ``output_audio_buffer.cleared`` follows (none: no-op)."""
        if self.response is not None and self.response.audio:
            self.cancel_requested = True
            self.session.cancel_response()

    # -- engine events ---------------------------------------------------------------------

    def on_event(self, event: object) -> None:
        handler = self.event_handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _on_speech_started(self, e: ev.SpeechStarted) -> None:
        self.items[e.item_id] = _Utterance(start_ms=e.audio_start_ms)
        self.emit(
            "input_audio_buffer.speech_started", item_id=e.item_id, audio_start_ms=e.audio_start_ms
        )

    def _on_speech_stopped(self, e: ev.SpeechStopped) -> None:
        self.items.setdefault(e.item_id, _Utterance()).end_ms = e.audio_end_ms
        self.emit(
            "input_audio_buffer.speech_stopped", item_id=e.item_id, audio_end_ms=e.audio_end_ms
        )

    def _on_committed(self, e: ev.Committed) -> None:
        # A manual turn has no speech_started: its length is what the commit covered.
        self.items.setdefault(e.item_id, _Utterance(0, self.committed_ms))
        self.commit_mark = self.samples_fed
        self.emit(
            "input_audio_buffer.committed", item_id=e.item_id, previous_item_id=self.last_item_id
        )
        self.emit(
            "conversation.item.added",
            previous_item_id=self.last_item_id,
            item=_user_item(e.item_id, {"type": "input_audio", "transcript": None}),
        )
        self.last_item_id = e.item_id

    def _on_transcript_delta(self, e: ev.TranscriptDelta) -> None:
        self._transcription_delta(e.item_id, e.delta, stable_text=e.stable_text, text=e.text)

    def _on_transcript(self, e: ev.Transcript) -> None:
        self._transcription_done(e.item_id, e.text)

    def _on_translation_delta(self, e: ev.TranslationDelta) -> None:
        if self.settings.task == "ast":
            self._transcription_delta(e.item_id, e.delta)
        else:
            self.emit(
                "conversation.item.input_audio_translation.delta",
                item_id=e.item_id,
                content_index=0,
                delta=e.delta,
            )

    def _on_translation(self, e: ev.Translation) -> None:
        if self.settings.task == "ast":
            self._transcription_done(e.item_id, e.text)
        else:
            self.emit(
                "conversation.item.input_audio_translation.completed",
                item_id=e.item_id,
                content_index=0,
                translation=e.text,
            )

    def _transcription_delta(self, item_id: str, delta: str, **extra: Any) -> None:
        self.emit(
            "conversation.item.input_audio_transcription.delta",
            item_id=item_id,
            content_index=0,
            delta=delta,
            **extra,
        )

    def _transcription_done(self, item_id: str, text: str) -> None:
        item = self.items.pop(item_id, _Utterance())
        seconds = max(0, item.end_ms - item.start_ms) / 1000
        self.emit(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=text,
            usage={"type": "duration", "seconds": seconds},
        )
        done = _user_item(item_id, {"type": "input_audio", "transcript": text})
        self.emit("conversation.item.done", item=done)

    def _on_response_started(self, e: ev.ResponseStarted) -> None:
        self.response = _Response(e.response_id, new_id("item"), audio=self.settings.speaks)
        item = self._assistant_item("in_progress", "")
        self.emit("response.created", response=self._response_object("in_progress", []))
        self.emit(
            "response.output_item.added", response_id=e.response_id, output_index=0, item=item
        )
        self.emit("conversation.item.added", previous_item_id=self.last_item_id, item=item)
        self.emit("response.content_part.added", **self._text_position(), part=self._part(""))
        self.last_item_id = self.response.item_id

    def _on_response_text_delta(self, e: ev.ResponseTextDelta) -> None:
        if self.response is None or e.response_id != self.response.response_id:
            return
        kind = "output_audio_transcript" if self.response.audio else "output_text"
        self.emit(f"response.{kind}.delta", **self._text_position(), delta=e.delta)

    def _on_response_audio_delta(self, e: ev.ResponseAudioDelta) -> None:
        response = self.response
        if response is None or e.response_id != response.response_id or not response.audio:
            return
        if not response.audio_started:
            response.audio_started = True
            self.emit("output_audio_buffer.started", response_id=e.response_id)
        for piece in audio_pieces(e.audio, e.sample_rate):
            self.emit("response.output_audio.delta", **self._text_position(), delta=piece)

    def _on_response_audio_done(self, e: ev.ResponseAudioDone) -> None:
        response = self.response
        if response is None or e.response_id != response.response_id or response.audio_done:
            return
        response.audio_done = True
        self.emit("response.output_audio.done", **self._text_position())

    def _on_translation_audio_delta(self, e: ev.TranslationAudioDelta) -> None:
        for piece in audio_pieces(e.audio, e.sample_rate):
            self.emit(
                TRANSLATION_AUDIO,
                item_id=e.item_id,
                content_index=0,
                delta=piece,
                sample_rate=e.sample_rate,
                channels=1,
                format="pcm16",
            )

    def _on_audio_cleared(self, e: ev.AudioCleared) -> None:
        self.emit("output_audio_buffer.cleared", response_id=e.response_id)

    def _on_response_done(self, e: ev.ResponseDone) -> None:
        if self.response is None or e.response_id != self.response.response_id:
            return
        text = e.text
        status = e.status if e.status in ("completed", "cancelled", "failed") else "failed"
        item = self._assistant_item("completed" if status == "completed" else "incomplete", text)
        response = self.response
        if response.audio:  # OpenAI ends the audio of an interrupted response too
            self._on_response_audio_done(ev.ResponseAudioDone(e.response_id))
            self.emit(
                "response.output_audio_transcript.done", **self._text_position(), transcript=text
            )
        else:
            self.emit("response.output_text.done", **self._text_position(), text=text)
        self.emit("response.content_part.done", **self._text_position(), part=self._part(text))
        self.emit("response.output_item.done", response_id=e.response_id, output_index=0, item=item)
        self.emit("conversation.item.done", item=item)
        details: dict[str, Any] | None = None
        if status == "cancelled":
            reason = "client_cancelled" if self.cancel_requested else "turn_detected"
            details = {"type": "cancelled", "reason": reason}
        elif status == "failed":
            details = {"type": "failed", "error": {"type": "server_error", "code": "failed"}}
        self.emit("response.done", response=self._response_object(status, [item], details))
        if response.audio_started and status == "completed":
            self.emit("output_audio_buffer.stopped", response_id=e.response_id)
        self.response, self.cancel_requested = None, False

    def _on_error(self, e: ev.Error) -> None:
        code = OPENAI_CODES.get(e.code, e.code)
        self.report(ProtocolError(code, e.message, kind=error_kind(e.code)))

    def _text_position(self) -> dict[str, Any]:
        assert self.response is not None
        return {
            "response_id": self.response.response_id,
            "item_id": self.response.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    def _response_object(
        self, status: str, output: list[dict[str, Any]], details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        assert self.response is not None
        return {
            "id": self.response.response_id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": output,
            "conversation_id": self.session_id,
            "output_modalities": ["audio" if self.response.audio else "text"],
            "max_output_tokens": "inf",
            "usage": None,
        }

    def _part(self, text: str) -> dict[str, Any]:
        """The response's content part: spoken (audio with its transcript) or text."""
        assert self.response is not None
        if self.response.audio:
            return {"type": "output_audio", "transcript": text}
        return {"type": "output_text", "text": text}

    def _assistant_item(self, status: str, text: str) -> dict[str, Any]:
        assert self.response is not None
        content = (
            {"type": "output_audio", "transcript": text}
            if self.response.audio
            else {"type": "output_text", "text": text}
        )
        return {
            "id": self.response.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": [content],
        }


def _user_item(item_id: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [content],
    }
