"""OpenAI's Realtime Translation API at ``/v1/realtime/translations``: live Chinese -> English.

``client.realtime.translations.connect(model=...)`` connects unchanged. The client streams
``session.input_audio_buffer.append`` (base64 24 kHz PCM16; binary frames of the same PCM
are accepted too) and gets ``session.output_transcript.delta`` (English) and, when
``audio.input.transcription`` is set, ``session.input_transcript.delta`` (the Chinese heard).
Both streams are append-only: a client concatenates deltas as they come. Each final English
sentence is also spoken: ``session.output_audio.delta`` (base64 PCM16, 24 kHz mono, with
``sample_rate``, ``channels`` and ``format``; ``audio.output.voice`` picks an espeak-ng voice,
OpenAI's names the default one). ``session.close``
flushes the utterance in progress, then ``session.closed`` ends the connection.
"""

from __future__ import annotations

from typing import Any

from mooer.agent import events as ev
from mooer.agent.session import SessionConfig
from mooer.audio import SAMPLE_RATE
from mooer.server.captions import AppendOnlyText
from mooer.server.connection import CLOSE_NORMAL, Link, ProtocolError, new_id
from mooer.server.openai_wire import OpenAIWire, audio_pieces, error_kind, json_object
from mooer.server.pcm import WireFormat
from mooer.server.realtime_session import OPENAI_VOICES

INPUT_FORMAT = WireFormat("pcm16", 24000)
OUTPUT_RATE = 24000  # the speech of the translation, PCM16
OUTPUT_LANGUAGES = ("en",)  # MooER translates into English
ELAPSED_STEP_MS = 200  # the API reports elapsed time in 200 ms frames


class TranslationProtocol(OpenAIWire):
    """One ``/v1/realtime/translations`` connection."""

    name = "translation"
    subprotocols = ("realtime",)

    def __init__(self, link: Link) -> None:
        super().__init__(link, INPUT_FORMAT)
        self.model = link.query.get("model") or link.hub.config.model_name
        self.session_id = new_id("sess")
        self.transcription: dict[str, Any] | None = None
        self.voice: str | None = None  # as the client named it
        self.source = AppendOnlyText(self.count_revision)  # the Chinese transcript
        self.target = AppendOnlyText(self.count_revision)  # the English translation
        self.handlers = {
            "session.update": self._session_update,
            "session.input_audio_buffer.append": self.append,
            "session.close": lambda event: self.finish_soon("closed by the client", CLOSE_NORMAL),
        }

    def _engine_config(self) -> SessionConfig:
        return self.link.hub.session_config(
            mode="asr+ast" if self.transcription else "ast",
            speech_output=True,
            early_finals=True,  # interpretation: each sentence's English as soon as it can be
            voice=None if self.voice in OPENAI_VOICES else self.voice,
            output_sample_rate=OUTPUT_RATE,
        )

    def _describe(self) -> dict[str, Any]:
        return self.with_meeting(
            {
                "id": self.session_id,
                "object": "realtime.translation_session",
                "type": "translation",
                "model": self.model,
                "expires_at": 0,
                "audio": {
                    "input": {"transcription": self.transcription, "noise_reduction": None},
                    "output": {"language": OUTPUT_LANGUAGES[0], "voice": self.voice},
                },
            }
        )

    def start(self) -> None:
        self.session = self.link.open_session(self._engine_config(), self.on_event)
        self.emit("session.created", session=self._describe())

    def _session_update(self, event: dict[str, Any]) -> None:
        session = json_object(self.without_meeting(event.get("session")), "session")
        for key, current in (("type", "translation"), ("model", self.model)):
            if key in session and session[key] != current:
                raise ProtocolError(
                    "invalid_value",
                    f"session.{key} is set when the session is created and cannot change",
                    f"session.{key}",
                )
        audio = json_object(session.get("audio"), "session.audio")
        output = json_object(audio.get("output"), "session.audio.output")
        language = output.get("language", OUTPUT_LANGUAGES[0])
        if language not in OUTPUT_LANGUAGES:
            raise ProtocolError(
                "unsupported_language",
                f"audio.output.language {language!r} is not available: mooer translates into "
                "English ('en')",
                "session.audio.output.language",
            )
        before = self._engine_config()
        voice = output.get("voice", self.voice)
        if voice is not None and not isinstance(voice, str):
            raise ProtocolError(
                "invalid_value",
                "session.audio.output.voice must be a voice name",
                "session.audio.output.voice",
            )
        audio_input = json_object(audio.get("input"), "session.audio.input")
        transcription = audio_input.get("transcription", self.transcription)
        if transcription is not None:
            json_object(transcription, "session.audio.input.transcription")
        old = self.voice, self.transcription
        self.voice, self.transcription = voice, transcription
        if self._engine_config() != before:
            try:
                self.link.hub.engine.check_speech(self._engine_config())  # a bad voice
            except Exception:
                self.voice, self.transcription = old
                raise
            self.reopen(self._engine_config())
        self.emit("session.updated", session=self._describe())

    def _elapsed_ms(self) -> int:
        ms = self.samples_fed * 1000 // SAMPLE_RATE
        return ms - ms % ELAPSED_STEP_MS

    def on_event(self, event: object) -> None:
        if isinstance(event, ev.TranscriptDelta | ev.Transcript):
            if self.transcription is not None:
                final = isinstance(event, ev.Transcript)
                settled = event.text if final else event.stable_text
                self._delta("session.input_transcript.delta", self.source, event, settled, final)
        elif isinstance(event, ev.TranslationDelta):
            so_far = self.target.current(event.item_id) + event.delta
            self._delta("session.output_transcript.delta", self.target, event, so_far, False)
        elif isinstance(event, ev.Translation):
            self._delta("session.output_transcript.delta", self.target, event, event.text, True)
        elif isinstance(event, ev.TranslationAudioDelta):
            for piece in audio_pieces(event.audio, event.sample_rate):
                self.emit(
                    "session.output_audio.delta",
                    delta=piece,
                    sample_rate=event.sample_rate,
                    channels=1,
                    format="pcm16",
                    elapsed_ms=self._elapsed_ms(),
                )
        elif isinstance(event, ev.Error):
            self.report(ProtocolError(event.code, event.message, kind=error_kind(event.code)))

    def _delta(self, kind: str, stream: AppendOnlyText, event: Any, text: str, final: bool) -> None:
        piece = stream.advance(event.item_id, text, final)
        if piece:
            self.emit(kind, delta=piece, elapsed_ms=self._elapsed_ms())

    def closing_message(self) -> None:
        self.emit("session.closed")
