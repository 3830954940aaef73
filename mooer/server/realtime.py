"""OpenAI's Realtime API (GA) at ``/v1/realtime``, for the part of it a speech LLM can serve.

``AsyncOpenAI(base_url="http://HOST:PORT/v1").realtime.connect(model=...)`` connects unchanged.
Client events: ``session.update``, ``input_audio_buffer.append|commit|clear``,
``conversation.item.create|retrieve|delete|truncate``, ``response.create|cancel``,
``output_audio_buffer.clear``; binary frames carry raw audio in the session's input format.
Server events: ``session.created|updated``, ``input_audio_buffer.speech_started|speech_stopped|
committed|cleared``, ``conversation.item.added|done|retrieved|deleted|truncated``,
``conversation.item.input_audio_transcription.delta|completed``, the ``response.*`` text
sequence, and ``error``. The conversation's items (``mooer.server.realtime_items``) keep the
client's ids; the session's chat memory follows each change. With ``output_modalities``
``["audio"]`` (the default of realtime sessions) a reply is spoken:
``response.output_audio.delta|done`` (base64 PCM16), ``response.output_audio_transcript.delta|
done`` in place of the text events, and ``output_audio_buffer.started|stopped|cleared`` (cleared
at barge-in or on ``output_audio_buffer.clear``). docs/protocol.md describes every message.

mooer's own additions: in the ast tasks with ``output_modalities`` ``["audio"]`` each final
translation is spoken as ``conversation.item.input_audio_translation.audio.delta`` (base64
PCM16 with ``sample_rate``); the client event ``session.close`` ends the session as on
``/v1/realtime/translations``: what is pending is flushed (translations spoken), then
``session.closed`` and the socket closes. A change of ``instructions`` alone keeps the
conversation (its cache is rebuilt under the new system turn). On a connection that labels
speakers (``?speakers=1``, or recorded) each final's ``...transcription.completed`` (and
asr+ast's ``...translation.completed``) carries ``speaker``: "speaker 1", "speaker 2"...

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
from mooer.asr.speakers import speaker_label
from mooer.audio import SAMPLE_RATE
from mooer.server.connection import CLOSE_NORMAL, Link, ProtocolError, new_id, number_field
from mooer.server.openai_wire import OpenAIWire, audio_pieces, error_kind, json_object
from mooer.server.pcm import WireDecoder
from mooer.server.realtime_items import ROOT, Items, Speech, read_input, read_message
from mooer.server.realtime_session import RealtimeSettings, apply_update, read_modalities

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
class _Request:
    """What a ``response.create`` asked for, until its response starts."""

    audio: bool  # spoken
    remember: bool = True  # conversation "auto" (False: "none", out of band)
    metadata: dict[str, Any] | None = None


@dataclass
class _Response:
    response_id: str
    item_id: str  # the assistant message's id
    audio: bool = False  # spoken: audio content, transcript events
    audio_started: bool = False  # output_audio_buffer.started was sent
    audio_done: bool = False  # response.output_audio.done was sent
    remember: bool = True  # in the conversation (False: out of band)
    metadata: dict[str, Any] | None = None
    speech: Speech | None = None  # what was spoken, for truncate


class RealtimeProtocol(OpenAIWire):
    """One ``/v1/realtime`` connection."""

    name = "realtime"
    subprotocols = ("realtime",)

    def __init__(self, link: Link) -> None:
        kind = "transcription" if link.query.get("intent") == "transcription" else "realtime"
        self.defaults = link.hub.session_defaults
        self.settings = RealtimeSettings.initial(kind, self.defaults)
        super().__init__(link, self.settings.format)
        self.session_id = new_id("sess")
        self.commit_mark = 0  # samples_fed at the last commit or clear
        self.committed_ms = 0  # audio the last client commit covered
        self.items: dict[str, _Utterance] = {}
        self.conversation = Items()
        self.requests: dict[str, _Request] = {}  # asked for, not started yet
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
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.delete": self._item_delete,
            "conversation.item.truncate": self._item_truncate,
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
        new = apply_update(
            self.settings,
            self.without_meeting(event.get("session")),
            self.link.hub.model.llm_backend,
        )
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
                self.conversation = Items()  # the new engine session's memory starts afresh
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
        """A typed message (user, assistant or system) into the conversation, under the
        client's id if it gave one; a user one is answered by the next ``response.create``."""
        self._require_chat("conversation.item.create")
        role, text, item = read_message(json_object(event.get("item"), "item"))
        if item["id"] is not None and (not isinstance(item["id"], str) or not item["id"]):
            raise ProtocolError("invalid_value", "item.id must be a non-empty string", "item.id")
        if item["id"] in self.conversation:
            raise ProtocolError(
                "item_create_duplicate_item_id",
                f"item.id {item['id']!r} is already in the conversation",
                "item.id",
            )
        after = event.get("previous_item_id")
        if after is not None and after != ROOT:
            self.conversation.get(after, "previous_item_id")
        item["id"] = self.session.add_message(
            text, role, item["id"], after if after != ROOT else None, first=after == ROOT
        )
        previous = self.conversation.add(item, after)
        self.emit("conversation.item.added", previous_item_id=previous, item=item)
        self.emit("conversation.item.done", item=item)

    def _item_retrieve(self, event: dict[str, Any]) -> None:
        self.conversation.get(event.get("item_id"))
        self.emit("conversation.item.retrieved", item=self.conversation.retrieved(event["item_id"]))

    def _item_delete(self, event: dict[str, Any]) -> None:
        """Drop an item; the chat memory forgets it (a reply still being made is cancelled)."""
        self.conversation.get(event.get("item_id"))
        item_id = event["item_id"]
        self._cancel_if_making(item_id)
        self.conversation.remove(item_id)
        if self.settings.task == "chat":
            self.session.delete_item(item_id)
        self.emit("conversation.item.deleted", item_id=item_id)

    def _item_truncate(self, event: dict[str, Any]) -> None:
        """Cut a spoken reply to the audio heard: its stored audio, its transcript, and what
        the chat memory remembers of it (a reply still being made is cancelled first)."""
        item = self.conversation.get(event.get("item_id"))
        item_id = item["id"]
        if event.get("content_index", 0) != 0:
            raise ProtocolError(
                "invalid_value", "content_index must be 0: a reply has one part", "content_index"
            )
        end_ms = number_field(event.get("audio_end_ms"), "audio_end_ms", 0)
        speech = self.conversation.speech.get(item_id)
        if self.response is not None and self.response.item_id == item_id:
            speech = self.response.speech  # still being made (or its end not seen yet)
        if speech is None:
            raise ProtocolError(
                "invalid_value",
                f"item {item_id!r} is not a spoken reply whose audio is kept: only those can "
                "be truncated",
                "item_id",
            )
        if end_ms > speech.duration_ms:
            raise ProtocolError(
                "invalid_value",
                f"audio_end_ms {end_ms} is beyond the {speech.duration_ms} ms of audio of "
                f"item {item_id!r}",
                "audio_end_ms",
            )
        self._cancel_if_making(item_id)
        heard = speech.truncate(end_ms)
        item["content"] = [{"type": "output_audio", "transcript": heard}]
        self.session.rewrite_item(item_id, heard)
        self.emit(
            "conversation.item.truncated", item_id=item_id, content_index=0, audio_end_ms=end_ms
        )

    def _cancel_if_making(self, item_id: str) -> None:
        if self.response is not None and self.response.item_id == item_id:
            self.cancel_requested = True
            self.session.cancel_response()

    def _response_create(self, event: dict[str, Any]) -> None:
        """A reply: to the spoken turn waiting for one, else to the conversation as it is (with
        no user turn, the assistant speaks first), or with ``input`` to those items alone; with
        the ``response`` object's other fields."""
        self._require_chat("response.create")
        asked = json_object(event.get("response"), "response")
        conversation = asked.get("conversation", "auto")
        if conversation not in ("auto", "none"):
            raise ProtocolError(
                "invalid_value",
                f"response.conversation {conversation!r}: expected 'auto' or 'none'",
                "response.conversation",
            )
        remember = conversation == "auto"
        if remember and (self.response is not None and self.response.remember or self._asked()):
            raise ProtocolError(
                "conversation_already_has_active_response",
                f"response {self._active_id()} is still in progress",
            )
        context = None  # the conversation; "input": a context of the reply's own
        if asked.get("input") is not None:
            context = read_input(asked["input"], self.conversation)
        audio = self.settings.speaks
        if "output_modalities" in asked:
            audio = "audio" in read_modalities(
                asked["output_modalities"], "response.output_modalities"
            )
        instructions = asked.get("instructions") or ""
        if not isinstance(instructions, str):
            raise ProtocolError(
                "invalid_value", "response.instructions must be a string", "response.instructions"
            )
        metadata = asked.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ProtocolError(
                "invalid_value", "response.metadata must be an object", "response.metadata"
            )
        response_id = self.session.create_response(instructions, remember, audio, context)
        self.requests[response_id] = _Request(audio, remember, metadata)

    def _asked(self) -> bool:
        """An in-conversation response was asked for and has not started."""
        return any(r.remember for r in self.requests.values())

    def _active_id(self) -> str:
        if self.response is not None:
            return self.response.response_id
        return next(iter(self.requests), "")

    def _response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        active = ([self.response.response_id] if self.response else []) + list(self.requests)
        if not active or wanted not in (None, *active):
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
        item = _user_item(e.item_id, {"type": "input_audio", "transcript": None})
        previous = self.conversation.add(item)
        self.emit("input_audio_buffer.committed", item_id=e.item_id, previous_item_id=previous)
        self.emit("conversation.item.added", previous_item_id=previous, item=item)

    def _on_transcript_delta(self, e: ev.TranscriptDelta) -> None:
        self._transcription_delta(e.item_id, e.delta, stable_text=e.stable_text, text=e.text)

    def _on_transcript(self, e: ev.Transcript) -> None:
        self._transcription_done(e.item_id, e.text, e.speaker)

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
            self._transcription_done(e.item_id, e.text, e.speaker)
        else:
            self.emit(
                "conversation.item.input_audio_translation.completed",
                item_id=e.item_id,
                content_index=0,
                translation=e.text,
                **_speaker(e.speaker),
            )

    @property
    def _transcribes(self) -> bool:
        """Input transcription events are sent (a chat session with transcription null has
        none; the other tasks' whole output is their transcript)."""
        return self.settings.transcription is not None or self.settings.task != "chat"

    def _transcription_delta(self, item_id: str, delta: str, **extra: Any) -> None:
        if not delta or not self._transcribes:
            return  # a partial that changed only the unstable tail: its text comes later
        self.emit(
            "conversation.item.input_audio_transcription.delta",
            item_id=item_id,
            content_index=0,
            delta=delta,
            **extra,
        )

    def _transcription_done(self, item_id: str, text: str, speaker: int | None) -> None:
        item = self.items.pop(item_id, _Utterance())
        seconds = max(0, item.end_ms - item.start_ms) / 1000
        if self._transcribes:
            self.emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": seconds},
                **_speaker(speaker),
            )
        transcript = text if self._transcribes else None
        done = _user_item(item_id, {"type": "input_audio", "transcript": transcript})
        if item_id in self.conversation:  # not deleted meanwhile
            self.conversation.update(done)
        self.emit("conversation.item.done", item=done)

    def _on_response_started(self, e: ev.ResponseStarted) -> None:
        asked = self.requests.pop(e.response_id, None) or _Request(self.settings.speaks)
        self.response = response = _Response(
            e.response_id,
            e.output_item_id,
            audio=asked.audio,
            remember=asked.remember,
            metadata=asked.metadata,
        )
        if response.audio:
            response.speech = Speech(self.settings.output_rate)
        item = self._assistant_item("in_progress", "")
        self.emit("response.created", response=self._response_object("in_progress", []))
        self.emit(
            "response.output_item.added", response_id=e.response_id, output_index=0, item=item
        )
        if response.remember:
            previous = self.conversation.add(item)
            self.emit("conversation.item.added", previous_item_id=previous, item=item)
        self.emit("response.content_part.added", **self._text_position(), part=self._part(""))

    def _on_response_text_delta(self, e: ev.ResponseTextDelta) -> None:
        if self.response is None or e.response_id != self.response.response_id:
            return
        if self.response.speech is not None:
            self.response.speech.add_text(e.delta)
        kind = "output_audio_transcript" if self.response.audio else "output_text"
        self.emit(f"response.{kind}.delta", **self._text_position(), delta=e.delta)

    def _on_response_audio_delta(self, e: ev.ResponseAudioDelta) -> None:
        response = self.response
        if response is None or e.response_id != response.response_id or not response.audio:
            return
        if not response.audio_started:
            response.audio_started = True
            self.emit("output_audio_buffer.started", response_id=e.response_id)
        if response.speech is not None:
            response.speech.add_audio(e.audio)
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
        if response.remember and response.item_id in self.conversation:  # not deleted
            speech = response.speech
            if speech is not None and speech.cut:  # truncated: the memory holds what was heard
                item = self._assistant_item(item["status"], speech.transcript)
            self.conversation.update(item)
            if speech is not None:
                self.conversation.keep_speech(response.item_id, speech)
            self.emit("conversation.item.done", item=item)
        details: dict[str, Any] | None = None
        if status == "cancelled":
            reason = "client_cancelled" if self.cancel_requested else "turn_detected"
            details = {"type": "cancelled", "reason": reason}
        elif status == "failed":
            details = {"type": "failed", "error": {"type": "server_error", "code": "failed"}}
        usage = {
            "total_tokens": e.input_tokens + e.output_tokens,
            "input_tokens": e.input_tokens,
            "output_tokens": e.output_tokens,
            "input_token_details": {"cached_tokens": e.cached_tokens},
            "output_token_details": {"text_tokens": e.output_tokens, "audio_tokens": 0},
        }
        done = self._response_object(status, [item], details)
        self.emit("response.done", response={**done, "usage": usage})
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
            "conversation_id": self.session_id if self.response.remember else None,
            "output_modalities": ["audio" if self.response.audio else "text"],
            "max_output_tokens": "inf",
            "metadata": self.response.metadata,
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


def _speaker(index: int | None) -> dict[str, str]:
    """A final's ``speaker`` field ("speaker 1"...), on connections that label speakers."""
    return {} if index is None else {"speaker": speaker_label(index)}
