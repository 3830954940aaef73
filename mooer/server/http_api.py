"""OpenAI-style HTTP endpoints: file transcription and translation, models, health, metrics.

``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` take OpenAI's multipart form
(``file``, ``model``, ``language``, ``prompt``, ``response_format``, ``temperature``) so
``client.audio.transcriptions.create(...)`` works unchanged. The upload is cut into utterances
by ``mooer.asr.segmenter`` (voice activity, then a length limit) as ``mooer transcribe`` cuts
files (live sessions use the same detector with their own turn settings), each utterance is decoded with the offline settings, and the
answer gives their texts and times in the format asked for: ``json``, ``text``,
``verbose_json``, ``srt`` or ``vtt``. An upload without speech gives empty text, no segments.
An upload holding more than ``max_request_audio_s`` of audio is refused with 413
``audio_too_long``, from its header or at the block of decoding that passes the limit.

``POST /v1/audio/speech`` takes OpenAI's JSON (``model``, ``input``, ``voice``,
``response_format``, ``speed``) so ``client.audio.speech.create(...)`` works unchanged: the text
is spoken by espeak-ng (Mandarin where it holds Chinese) at 24 kHz, OpenAI's rate.

Where the work runs: the upload's decoding and voice activity (a few seconds of audio per
step), its utterances (one per step) and the speech synthesis (one sentence per step) are
requests in the engine's round-robin (``Engine.schedule``), beside the live sessions, so a long
upload delays a live session or another upload by at most one step per round, and is dropped
at its next step when its client goes away. The encoding of synthesised speech is not model
work: it runs on the hub's offline thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import soundfile as sf
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mooer.audio import AudioStream, AudioTooLong
from mooer.errors import ConfigError, MooerError
from mooer.llm.backend import Waiting
from mooer.llm.decoding import DecodingOptions
from mooer.meetings.export import subtitles
from mooer.model import SpeechLLM
from mooer.server.connection import ProtocolError, hotwords_field, number_field
from mooer.server.hub import Hub
from mooer.server.realtime_session import OPENAI_VOICES
from mooer.text import language_of
from mooer.transcribe import SEGMENTER, Embed, Result, transcribe_steps
from mooer.tts import espeak
from mooer.tts.backend import EspeakBackend, resample_pcm16

log = logging.getLogger("mooer.server")

T = TypeVar("T")

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
TASK_OF_ROUTE = {"transcriptions": "asr", "translations": "ast"}
LANGUAGE_NAMES = {"zh": "chinese", "en": "english"}
SPEECH_RATE = 24000  # OpenAI's: its "pcm" format is raw 24 kHz PCM16
SPEECH_MAX_CHARS = 4096  # OpenAI's limit on ``input``
# response_format -> (soundfile format, subtype, media type); aac has no writer here
SPEECH_FORMATS = {
    "wav": ("WAV", "PCM_16", "audio/wav"),
    "mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"),
    "flac": ("FLAC", "PCM_16", "audio/flac"),
    "opus": ("OGG", "OPUS", "audio/ogg"),
}
ESPEAK_WPM = 175  # espeak-ng's default words per minute: speed 1.0


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str


def transcription_work(
    model: SpeechLLM,
    stream: AudioStream,
    filename: str,
    task: str,
    options: DecodingOptions,
    embed: Embed,
) -> Waiting[Result]:
    """Engine work: the upload cut and decoded by ``transcribe_steps``, one bounded step at a
    time (a block of decoding and voice activity, or one utterance, encoded in the engine's
    batch by ``embed``), exactly as ``mooer transcribe`` cuts and decodes the same file; its
    audio errors as the client's."""
    try:
        return (yield from transcribe_steps(model, stream, task, options, embed, SEGMENTER))
    except AudioTooLong as exc:
        raise _audio_too_long(filename, exc.limit_s) from exc
    except MooerError as exc:
        raise ProtocolError("invalid_audio", f"{filename}: {exc}", "file") from exc


def synthesise_sentences(
    text: str, voice: str | None, speed: float
) -> Generator[None, None, tuple[np.ndarray, int]]:
    """Engine work: ``text`` spoken by espeak-ng, one sentence per step -> (N,) int16 PCM at
    ``SPEECH_RATE``. ProtocolError for a voice espeak-ng does not have."""
    low, high = espeak.RATE_RANGE
    backend = EspeakBackend(rate=min(high, max(low, round(ESPEAK_WPM * speed))))
    try:
        sentences = backend.stream(text, language_of(text), _espeak_voice(voice))
    except MooerError as exc:
        raise ProtocolError("invalid_value", str(exc), "voice") from exc
    chunks: list[np.ndarray] = []
    for chunk in sentences:
        if chunks:
            yield  # the other clients' turn
        chunks.append(chunk)
    if not chunks:  # nothing to say
        return np.zeros(0, dtype=np.int16), SPEECH_RATE
    return resample_pcm16(np.concatenate(chunks), backend.sample_rate, SPEECH_RATE), SPEECH_RATE


async def _disconnected(request: Request) -> None:
    """Return when the client has closed the connection (the body was read before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _espeak_voice(voice: str | None) -> str | None:
    """OpenAI's voice names mean espeak-ng's default voice."""
    return None if voice in OPENAI_VOICES else voice


def error_response(error: ProtocolError, status: int) -> JSONResponse:
    """OpenAI's error body."""
    body = {
        "error": {
            "message": error.message,
            "type": error.kind,
            "param": error.param,
            "code": error.code,
        }
    }
    return JSONResponse(body, status_code=status)


class HttpApi:
    """The HTTP routes' handlers, bound to one hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def transcriptions(self) -> Callable[[Request], Awaitable[Response]]:
        return self._audio_route("transcriptions")

    def translations(self) -> Callable[[Request], Awaitable[Response]]:
        return self._audio_route("translations")

    def _audio_route(self, route: str) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            started = time.monotonic()
            metrics = self.hub.metrics
            try:
                response = await self._audio(request, TASK_OF_ROUTE[route])
            except ProtocolError as error:
                metrics.errors.inc(code=error.code)
                response = error_response(error, _STATUS.get(error.code, 400))
            metrics.requests.inc(route=route, status=str(response.status_code))
            metrics.request_latency.observe(time.monotonic() - started, route=route)
            return response

        return handle

    async def _audio(self, request: Request, task: str) -> Response:
        error = self.hub.auth_error(request)
        if error is not None:
            raise error
        limit = self.hub.config.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise _too_large(int(declared), limit)
        try:
            form = await request.form(max_files=1, max_fields=20)
        except Exception as exc:  # starlette raises several types for a broken multipart body
            raise ProtocolError(
                "invalid_request", f"expected a multipart/form-data body: {exc}"
            ) from exc
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ProtocolError(
                "missing_required_parameter", "the form needs a 'file' field", "file"
            )
        fmt = str(form.get("response_format") or "json")
        if fmt not in RESPONSE_FORMATS:
            raise ProtocolError(
                "invalid_value",
                f"response_format {fmt!r}: expected one of {', '.join(RESPONSE_FORMATS)}",
                "response_format",
            )
        if str(form.get("stream") or "false").lower() == "true":
            raise ProtocolError("unsupported_value", "stream=true is not supported", "stream")
        data = await upload.read()
        if len(data) > limit:
            raise _too_large(len(data), limit)
        filename = upload.filename or "file"
        max_audio = self.hub.config.max_request_audio_s
        try:  # the header only: a file declaring too much audio is refused before decoding
            stream = AudioStream(data, max_seconds=max_audio)
        except AudioTooLong as exc:
            raise _audio_too_long(filename, max_audio) from exc
        except MooerError as exc:
            raise ProtocolError("invalid_audio", f"{filename}: {exc}", "file") from exc
        options = self.hub.session_defaults.final_options  # the same as live finals
        hotwords = hotwords_field(form.get("prompt") or "", "prompt", self.hub.model.llm_backend)
        if hotwords is not None:
            options = replace(options, hotwords=hotwords)
        result = await self._on_engine(
            request,
            transcription_work(
                self.hub.model, stream, filename, task, options, self.hub.engine.embed
            ),
        )
        self.hub.metrics.audio_seconds.inc(result.duration, protocol="http")
        segments = [
            Segment(start, end, text)
            for (start, end), text in zip(result.segments, result.segment_texts)
        ]
        language = str(form.get("language") or "") or None
        return _render(fmt, task, result.text, segments, result.duration, language)

    async def _on_engine(self, request: Request, work: Generator[None, None, T]) -> T:
        """``work``'s result, run as a request in the engine's round-robin; stopped at its next
        step if the client goes away."""
        try:
            future = self.hub.engine.schedule(work, label="http")
        except ConfigError as exc:  # the engine is closing
            raise ProtocolError("server_shutting_down", str(exc), kind="server_error") from exc
        result = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not result.done():
            # The engine's own future, now: cancelling ``result`` reaches it only a loop turn
            # later, so the worker could run another step of work whose client is gone.
            future.cancel()
            raise ProtocolError("client_disconnected", "the client went away")
        try:
            return result.result()
        except ProtocolError:
            raise
        except Exception as exc:  # the model failed: the client gets a server error, not a hang
            log.exception("an HTTP request's model work failed")
            raise ProtocolError(
                "model_error", f"{type(exc).__name__}: {exc}", kind="server_error"
            ) from exc

    async def speech(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            error = self.hub.auth_error(request)
            if error is not None:
                raise error
            text, voice, fmt, speed = _speech_request(await request.body())
            pcm, rate = await self._on_engine(request, synthesise_sentences(text, voice, speed))
            body = await self.hub.run_offline(_encode, pcm, rate, fmt)
            response = Response(body, media_type=_media_type(fmt))
        except ProtocolError as error:
            self.hub.metrics.errors.inc(code=error.code)
            response = error_response(error, _STATUS.get(error.code, 400))
        self.hub.metrics.requests.inc(route="speech", status=str(response.status_code))
        self.hub.metrics.request_latency.observe(time.monotonic() - started, route="speech")
        return response

    async def models(self, request: Request) -> Response:
        error = self.hub.auth_error(request)
        if error is not None:
            return error_response(error, 401)
        model = {
            "id": self.hub.config.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "mooer",
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, request: Request) -> Response:
        body = {
            "status": "shutting_down" if self.hub.draining else "ok",
            "model": self.hub.config.model_name,
            "sessions": len(self.hub.connections),
            "max_sessions": self.hub.config.max_sessions,
        }
        if self.hub.replica is not None:
            body["replica"] = self.hub.replica
        return JSONResponse(body, status_code=503 if self.hub.draining else 200)

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(
            self.hub.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )


def _speech_request(raw: bytes) -> tuple[str, str | None, str, float]:
    """OpenAI's speech JSON -> (text, voice, response_format, speed); ProtocolError if bad."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError) as exc:  # also too deep, too many digits, not UTF-8
        raise ProtocolError("invalid_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProtocolError("invalid_request", "the body must be a JSON object")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("missing_required_parameter", "'input' must be non-empty text", "input")
    if len(text) > SPEECH_MAX_CHARS:
        raise ProtocolError(
            "string_above_max_length",
            f"'input' has {len(text)} characters: at most {SPEECH_MAX_CHARS}",
            "input",
        )
    voice = body.get("voice")
    if isinstance(voice, dict):  # OpenAI's custom voice object
        voice = voice.get("id")
    if voice is not None and not isinstance(voice, str):
        raise ProtocolError("invalid_value", "'voice' must be a voice name", "voice")
    fmt = body.get("response_format") or "mp3"
    if fmt not in (*SPEECH_FORMATS, "pcm"):
        raise ProtocolError(
            "invalid_value",
            f"response_format {fmt!r} is not supported: expected one of "
            f"{', '.join([*SPEECH_FORMATS, 'pcm'])}",
            "response_format",
        )
    speed = number_field(body.get("speed", 1.0), "speed", 0.25, 4.0, integer=False)
    return text, voice, fmt, float(speed)


def _encode(pcm: np.ndarray, rate: int, fmt: str) -> bytes:
    """Blocking: (N,) int16 PCM at ``rate`` as a ``fmt`` file (``pcm``: the raw samples)."""
    if fmt == "pcm":
        return pcm.astype("<i2").tobytes()
    container, subtype, _ = SPEECH_FORMATS[fmt]
    if fmt == "opus":  # Opus runs at 48 kHz
        pcm, rate = resample_pcm16(pcm, rate, 48000), 48000
    buffer = io.BytesIO()
    try:
        sf.write(buffer, pcm, rate, format=container, subtype=subtype)
    except (sf.SoundFileError, ValueError, TypeError) as exc:
        raise ProtocolError(
            "unsupported_value",
            f"response_format {fmt!r} cannot be written here ({exc}): use wav or pcm",
            "response_format",
        ) from exc
    return buffer.getvalue()


def _media_type(fmt: str) -> str:
    return "audio/pcm" if fmt == "pcm" else SPEECH_FORMATS[fmt][2]


_STATUS = {
    "missing_api_key": 401,
    "invalid_api_key": 401,
    "file_too_large": 413,
    "audio_too_long": 413,
    "client_disconnected": 499,  # nginx's "client closed request": only the metrics see it
    "model_error": 500,
    "server_shutting_down": 503,
}


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        "file_too_large",
        f"the upload is {size} bytes, over this server's {limit} byte limit",
        "file",
    )


def _audio_too_long(filename: str, limit_s: float) -> ProtocolError:
    return ProtocolError(
        "audio_too_long",
        f"{filename} holds more than this server's limit of {limit_s:g} s of audio "
        "(max_request_audio_s)",
        "file",
    )


def _render(
    fmt: str,
    task: str,
    text: str,
    segments: list[Segment],
    duration: float,
    language: str | None,
) -> Response:
    if fmt == "json":
        usage = {"type": "duration", "seconds": int(np.ceil(duration))}
        return JSONResponse({"text": text, "usage": usage})
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt in ("srt", "vtt"):
        cues = [(s.start, s.end, s.text) for s in segments]
        media = "text/vtt" if fmt == "vtt" else "text/plain"
        return PlainTextResponse(subtitles(cues, vtt=fmt == "vtt"), media_type=media)
    if task == "ast":
        language = "en"
    elif language is None:
        language = language_of(text)
    body = {
        "task": "translate" if task == "ast" else "transcribe",
        "language": LANGUAGE_NAMES.get(language, language),
        "duration": round(duration, 3),
        "text": text,
        "segments": [_verbose_segment(i, s) for i, s in enumerate(segments)],
        "usage": {"type": "duration", "seconds": int(np.ceil(duration))},
    }
    return JSONResponse(body)


def _verbose_segment(index: int, segment: Segment) -> dict[str, object]:
    # Whisper's fields; mooer has no token-level scores, so those are zero.
    return {
        "id": index,
        "seek": 0,
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": 0.0,
        "no_speech_prob": 0.0,
    }
