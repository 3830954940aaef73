"""The Realtime session object: what ``session.update`` may set and how it maps onto the engine.

Both the GA shape (``session.audio.input.format``, ``...turn_detection``, ``...transcription``,
``output_modalities``) and the older beta names (``input_audio_format``, ``turn_detection``,
``input_audio_transcription``, ``modalities`` at the session's top level) are read.
``output_modalities`` ``["audio"]`` (a realtime session's default, as OpenAI's) makes chat
replies spoken, and in the ast tasks the final
translations (PCM16, 24 kHz unless ``audio.output.format.rate`` says 16000): by the model's own
speech head when it has one, else by the TTS backend, whose voice ``audio.output.voice`` names
(espeak-ng ``m1``..``m8``, ``f1``..``f5``; OpenAI's voice names pick the default one).
``instructions`` become the chat's system turn (empty: the released one);
``audio.input.transcription`` null silences a chat's transcription events. The ``mooer``
object is this server's own: ``{"task": "asr"|"ast"|"asr+ast"|"chat",
"partial_interval_ms": int}``. Fields mooer has no use for (tools, tracing, noise_reduction,
...) are accepted and ignored so that existing clients work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mooer.agent.session import SessionConfig
from mooer.asr.vad import VadConfig
from mooer.audio import SAMPLE_RATE
from mooer.llm.backend import LLMBackend
from mooer.llm.biasing import Hotwords
from mooer.server.connection import ProtocolError, hotwords_field, number_field
from mooer.server.openai_wire import json_object
from mooer.server.pcm import WireFormat

TASKS = ("asr", "ast", "asr+ast", "chat")
SESSION_TYPES = ("realtime", "transcription")
DEFAULT_TASK = {"realtime": "chat", "transcription": "asr"}
# OpenAI's default output by session type: spoken replies; transcription sessions have none
DEFAULT_MODALITIES = {"realtime": ("audio",), "transcription": ("text",)}
# mooer transcribes what it hears unless a chat session sets audio.input.transcription null
DEFAULT_TRANSCRIPTION = {"model": "mooer"}
GA_FORMATS = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
BETA_FORMATS = {"pcm16": "pcm16", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
# semantic_vad has no model here: its eagerness picks how much silence ends a turn
EAGERNESS_SILENCE_MS = {"low": 1000, "medium": 600, "auto": 600, "high": 300}
MODALITIES = ("text", "audio")
# OpenAI's built-in voices: accepted, spoken in the TTS backend's default voice
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
PCM16_RATES = (24000, SAMPLE_RATE)
# Ranges of the numeric fields (docs/protocol.md); values outside are refused with invalid_value.
# server_vad: OpenAI field -> (mooer's VadConfig field, low, high, whole number). Below a
# threshold of 0.2 the detector's off threshold (0.15 lower) would leave it no room.
VAD_FIELDS = {
    "threshold": ("threshold", 0.2, 0.99, False),
    "prefix_padding_ms": ("speech_pad_ms", 0, 2000, True),
    "silence_duration_ms": ("min_silence_ms", 1, 10_000, True),
}
PARTIAL_INTERVAL_MS = (100, 10_000)  # or 0: no partial transcripts


@dataclass(frozen=True)
class TurnDetection:
    """OpenAI's ``turn_detection`` object, as far as mooer's VAD can honour it."""

    type: str = "server_vad"
    vad: VadConfig = field(default_factory=VadConfig)
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str | None = None  # semantic_vad only

    def describe(self) -> dict[str, Any]:
        common = {
            "type": self.type,
            "create_response": self.create_response,
            "interrupt_response": self.interrupt_response,
        }
        if self.type == "semantic_vad":
            return {**common, "eagerness": self.eagerness or "auto"}
        return {
            **common,
            "threshold": self.vad.threshold,
            "prefix_padding_ms": self.vad.speech_pad_ms,
            "silence_duration_ms": self.vad.min_silence_ms,
            "idle_timeout_ms": None,
        }


@dataclass(frozen=True)
class RealtimeSettings:
    """One connection's session as the client configured it."""

    type: str = "realtime"
    task: str = "chat"
    format: WireFormat = field(default_factory=WireFormat)
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    # echoed back (mooer has one recogniser); null: a chat session sends no transcription events
    transcription: dict[str, Any] | None = field(
        default_factory=lambda: dict(DEFAULT_TRANSCRIPTION)
    )
    instructions: str = ""
    partial_interval_ms: int = 480
    output_modalities: tuple[str, ...] = ("text",)
    voice: str | None = None  # as the client named it
    output_rate: int = 24000  # PCM16 output
    hotwords: Hotwords | None = None  # the words of transcription.prompt

    @property
    def speaks(self) -> bool:
        """Replies carry audio (chat sessions that asked for it)."""
        return "audio" in self.output_modalities and self.task == "chat"

    @property
    def speaks_translations(self) -> bool:
        """Final translations are spoken (ast and asr+ast sessions that asked for audio)."""
        return "audio" in self.output_modalities and self.task in ("ast", "asr+ast")

    @classmethod
    def initial(cls, session_type: str, defaults: SessionConfig) -> RealtimeSettings:
        """A new connection's session: the server's defaults, the task by session type."""
        return cls(
            type=session_type,
            task=DEFAULT_TASK[session_type],
            output_modalities=DEFAULT_MODALITIES[session_type],
            turn_detection=TurnDetection(vad=defaults.vad),
            partial_interval_ms=defaults.partial_interval_ms,
        )

    def engine_config(self, defaults: SessionConfig) -> SessionConfig:
        """The engine session this asks for; ``defaults`` gives decoding options and the rest."""
        turns = self.turn_detection
        return replace(
            defaults,
            mode=self.task,
            vad=turns.vad if turns else defaults.vad,
            turn_detection=turns is not None,
            partial_interval_ms=self.partial_interval_ms,
            auto_response=turns is not None and turns.create_response,
            barge_in=turns is not None and turns.interrupt_response,
            speech_output=self.speaks or self.speaks_translations,
            voice=None if self.voice in OPENAI_VOICES else self.voice,
            output_sample_rate=self.output_rate,
            instructions=self.instructions,
            hotwords=self.hotwords,
        )

    def describe(self, session_id: str, model: str) -> dict[str, Any]:
        """The session object of ``session.created`` / ``session.updated``."""
        fmt = {v: k for k, v in GA_FORMATS.items()}[self.format.encoding]
        audio_format: dict[str, Any] = {"type": fmt}
        if self.format.encoding == "pcm16":
            audio_format["rate"] = self.format.rate
        audio_input = {
            "format": audio_format,
            "transcription": self.transcription,
            "turn_detection": self.turn_detection.describe() if self.turn_detection else None,
            "noise_reduction": None,
        }
        mooer: dict[str, Any] = {"task": self.task, "partial_interval_ms": self.partial_interval_ms}
        audio_output = {
            "format": {"type": "audio/pcm", "rate": self.output_rate},
            "voice": self.voice,
        }
        if self.type == "transcription":
            audio: dict[str, Any] = {"input": audio_input}
            if self.speaks_translations:  # mooer's own: the translations' speech
                mooer["output_modalities"] = list(self.output_modalities)
                audio["output"] = audio_output
            return {
                "type": "transcription",
                "object": "realtime.transcription_session",
                "id": session_id,
                "expires_at": 0,
                "audio": audio,
                "include": None,
                "mooer": mooer,
            }
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "expires_at": 0,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "max_output_tokens": "inf",
            "tools": [],
            "tool_choice": "auto",
            "audio": {"input": audio_input, "output": audio_output},
            "mooer": mooer,
        }


def apply_update(
    settings: RealtimeSettings, session: object, backend: LLMBackend | None = None
) -> RealtimeSettings:
    """``settings`` changed by a ``session.update``'s ``session``; ``ProtocolError`` if bad.
    The words of the transcription's ``prompt`` become hotwords (refused where the LLM
    ``backend`` cannot use them)."""
    if not isinstance(session, dict):
        raise ProtocolError("invalid_value", "'session' must be an object", param="session")
    new = settings
    kind = session.get("type", settings.type)
    if kind not in SESSION_TYPES:
        raise ProtocolError(
            "invalid_value",
            f"session.type {kind!r} is not supported: expected 'realtime' or 'transcription'",
            param="session.type",
        )
    if kind != settings.type:
        new = replace(
            new, type=kind, task=DEFAULT_TASK[kind], output_modalities=DEFAULT_MODALITIES[kind]
        )

    audio = json_object(session.get("audio"), "session.audio")
    audio_input = json_object(audio.get("input"), "session.audio.input")
    if "format" in audio_input:
        new = replace(new, format=_ga_format(audio_input["format"]))
    elif "input_audio_format" in session:
        new = replace(new, format=_beta_format(session["input_audio_format"]))

    for container, key, param in (
        (audio_input, "turn_detection", "session.audio.input.turn_detection"),
        (session, "turn_detection", "session.turn_detection"),
    ):
        if key in container:
            new = replace(new, turn_detection=_turn_detection(container[key], param))
            break

    for container, key, param in (
        (audio_input, "transcription", "session.audio.input.transcription"),
        (session, "input_audio_transcription", "session.input_audio_transcription"),
    ):
        if key in container:
            value = container[key]
            if value is not None and not isinstance(value, dict):
                raise ProtocolError("invalid_value", f"{param} must be an object or null", param)
            prompt = (value or {}).get("prompt") or ""
            hotwords = hotwords_field(prompt, f"{param}.prompt", backend)
            new = replace(new, transcription=value, hotwords=hotwords)
            break

    if "instructions" in session:
        if not isinstance(session["instructions"], str):
            raise ProtocolError(
                "invalid_value", "session.instructions must be a string", "session.instructions"
            )
        new = replace(new, instructions=session["instructions"])
    for key in ("output_modalities", "modalities"):
        if key in session:
            new = replace(new, output_modalities=read_modalities(session[key], f"session.{key}"))
            break
    new = _apply_output(new, session, json_object(audio.get("output"), "session.audio.output"))

    if "mooer" in session:
        new = _apply_mooer(new, session["mooer"])
    return new


def _ga_format(value: object) -> WireFormat:
    param = "session.audio.input.format"
    fmt = json_object(value, param)
    kind = fmt.get("type", "audio/pcm")
    if not isinstance(kind, str) or kind not in GA_FORMATS:
        raise ProtocolError(
            "invalid_value",
            f"{param}.type {kind!r} is not supported: expected one of {sorted(GA_FORMATS)}",
            f"{param}.type",
        )
    encoding = GA_FORMATS[kind]
    rate = fmt.get("rate", 24000) if encoding == "pcm16" else 8000
    return _wire_format(encoding, rate, f"{param}.rate")


def _beta_format(value: object) -> WireFormat:
    if not isinstance(value, str) or value not in BETA_FORMATS:
        raise ProtocolError(
            "invalid_value",
            f"session.input_audio_format {value!r} is not supported: expected one of "
            f"{sorted(BETA_FORMATS)}",
            "session.input_audio_format",
        )
    encoding = BETA_FORMATS[value]
    return _wire_format(encoding, 24000 if encoding == "pcm16" else 8000, "input_audio_format")


def _wire_format(encoding: str, rate: object, param: str) -> WireFormat:
    if encoding == "pcm16" and (not isinstance(rate, int) or rate not in PCM16_RATES):
        raise ProtocolError(
            "invalid_value",
            f"{param}: sample rate {rate!r} is not supported: expected 24000 (the API's rate) "
            "or 16000 (mooer's own)",
            param,
        )
    return WireFormat(encoding, rate)  # type: ignore[arg-type]


def _turn_detection(value: object, param: str) -> TurnDetection | None:
    if value is None:
        return None
    obj = json_object(value, param)
    kind = obj.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise ProtocolError(
            "invalid_value",
            f"{param}.type {kind!r} is not supported: expected 'server_vad', 'semantic_vad' or "
            "a null turn_detection (the client commits)",
            f"{param}.type",
        )
    vad_fields: dict[str, Any] = {}
    eagerness = None
    if kind == "semantic_vad":
        eagerness = obj.get("eagerness", "auto")
        if not isinstance(eagerness, str) or eagerness not in EAGERNESS_SILENCE_MS:
            raise ProtocolError(
                "invalid_value",
                f"{param}.eagerness {eagerness!r}: expected one of {sorted(EAGERNESS_SILENCE_MS)}",
                f"{param}.eagerness",
            )
        vad_fields["min_silence_ms"] = EAGERNESS_SILENCE_MS[eagerness]
    else:
        for theirs, (ours, low, high, integer) in VAD_FIELDS.items():
            if obj.get(theirs) is not None:
                field_param = f"{param}.{theirs}"
                vad_fields[ours] = number_field(obj[theirs], field_param, low, high, integer)
    vad = VadConfig(**vad_fields)  # in these ranges always valid
    flags = {}
    for key in ("create_response", "interrupt_response"):
        value = obj.get(key, True)
        if not isinstance(value, bool):
            raise ProtocolError("invalid_value", f"{param}.{key} must be true or false", param)
        flags[key] = value
    return TurnDetection(type=kind, vad=vad, eagerness=eagerness, **flags)


def read_modalities(value: object, param: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(m in MODALITIES for m in value):
        raise ProtocolError(
            "invalid_value", f"{param} must be a list of 'text' and/or 'audio'", param
        )
    return tuple(dict.fromkeys(value))


def _apply_output(
    settings: RealtimeSettings, session: dict[str, Any], output: dict[str, Any]
) -> RealtimeSettings:
    """The output format and voice, GA (``audio.output``) or beta (top-level) names."""
    if "format" in output:
        param = "session.audio.output.format"
        fmt = json_object(output["format"], param)
        if fmt.get("type", "audio/pcm") != "audio/pcm":
            raise ProtocolError(
                "invalid_value",
                f"{param}.type {fmt.get('type')!r} is not supported: mooer speaks 'audio/pcm'",
                f"{param}.type",
            )
        rate = fmt.get("rate", 24000)
        if not isinstance(rate, int) or rate not in PCM16_RATES:
            raise ProtocolError(
                "invalid_value",
                f"{param}.rate {rate!r} is not supported: expected 24000 or 16000",
                f"{param}.rate",
            )
        settings = replace(settings, output_rate=rate)
    elif session.get("output_audio_format", "pcm16") != "pcm16":
        raise ProtocolError(
            "invalid_value",
            f"session.output_audio_format {session['output_audio_format']!r} is not supported: "
            "mooer speaks 'pcm16'",
            "session.output_audio_format",
        )
    for container, param in ((output, "session.audio.output.voice"), (session, "session.voice")):
        if "voice" in container:
            voice = container["voice"]
            if voice is not None and not isinstance(voice, str):
                raise ProtocolError(
                    "invalid_value",
                    f"{param} must be a voice name: espeak-ng m1..m8, f1..f5, or an OpenAI one",
                    param,
                )
            return replace(settings, voice=voice)
    return settings


def _apply_mooer(settings: RealtimeSettings, value: object) -> RealtimeSettings:
    obj = json_object(value, "session.mooer")
    unknown = sorted(set(obj) - {"task", "partial_interval_ms"})
    if unknown:
        raise ProtocolError(
            "unknown_parameter",
            f"session.mooer has unknown field(s) {unknown}: expected 'task', 'partial_interval_ms'",
            "session.mooer",
        )
    if "task" in obj:
        if obj["task"] not in TASKS:
            raise ProtocolError(
                "invalid_value",
                f"session.mooer.task {obj['task']!r}: expected one of {', '.join(TASKS)}",
                "session.mooer.task",
            )
        settings = replace(settings, task=obj["task"])
    if "partial_interval_ms" in obj:
        ms = obj["partial_interval_ms"]
        if type(ms) is not int or ms != 0:  # 0: no partial transcripts
            number_field(ms, "session.mooer.partial_interval_ms", *PARTIAL_INTERVAL_MS)
        settings = replace(settings, partial_interval_ms=ms)
    return settings
