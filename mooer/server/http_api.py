"""OpenAI-style HTTP endpoints: file transcription and translation, models, health, metrics.

``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` take OpenAI's multipart form
(``file``, ``model``, ``language``, ``prompt``, ``response_format``, ``temperature``) so
``client.audio.transcriptions.create(...)`` works unchanged. The upload is cut into utterances
by the voice activity detector (the same one live sessions use), each utterance is decoded
with the offline settings, and the answer gives their texts and times in the format asked for:
``json``, ``text``, ``verbose_json``, ``srt`` or ``vtt``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mooer.agent.vad import SpeechEnded, StreamingVad, VadConfig
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.errors import MooerError
from mooer.server.captions import join_texts
from mooer.server.connection import ProtocolError
from mooer.server.hub import Hub
from mooer.transcribe import transcribe

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
TASK_OF_ROUTE = {"transcriptions": "asr", "translations": "ast"}
LANGUAGE_NAMES = {"zh": "chinese", "en": "english"}


@dataclass(frozen=True)
class Segment:
    start: float  # seconds
    end: float
    text: str


def speech_segments(samples: np.ndarray, vad_config: VadConfig) -> list[tuple[int, int]]:
    """Sample ranges of the utterances the VAD finds; the whole input if it finds none."""
    vad = StreamingVad(vad_config)
    ended = [e for e in vad.feed(samples) + vad.flush() if isinstance(e, SpeechEnded)]
    return [(e.start, e.end) for e in ended] or [(0, len(samples))]


def recognise(hub: Hub, samples: np.ndarray, task: str) -> list[Segment]:
    """Blocking: decode each utterance of ``samples`` with ``task`` (asr or ast)."""
    ranges = speech_segments(samples, hub.session_defaults.vad)
    options = hub.session_defaults.final_options  # the same as live finals
    results = transcribe(hub.model, [samples[a:b] for a, b in ranges], task=task, options=options)
    return [
        Segment(round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3), r.text)
        for (a, b), r in zip(ranges, results)
    ]


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
        try:
            samples = load_audio(data)
        except MooerError as exc:
            raise ProtocolError(
                "invalid_audio", f"{upload.filename or 'file'}: {exc}", "file"
            ) from exc
        duration = len(samples) / SAMPLE_RATE
        self.hub.metrics.audio_seconds.inc(duration, protocol="http")
        segments = await self.hub.run_offline(recognise, self.hub, samples, task)
        language = str(form.get("language") or "") or None
        return _render(fmt, task, segments, duration, language)

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
        return JSONResponse(body, status_code=503 if self.hub.draining else 200)

    async def metrics(self, request: Request) -> Response:
        return PlainTextResponse(
            self.hub.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )


_STATUS = {"missing_api_key": 401, "invalid_api_key": 401, "file_too_large": 413}


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(
        "file_too_large",
        f"the upload is {size} bytes, over this server's {limit} byte limit",
        "file",
    )


def _render(
    fmt: str, task: str, segments: list[Segment], duration: float, language: str | None
) -> Response:
    text = join_texts([s.text for s in segments])
    if fmt == "json":
        usage = {"type": "duration", "seconds": int(np.ceil(duration))}
        return JSONResponse({"text": text, "usage": usage})
    if fmt == "text":
        return PlainTextResponse(text + "\n")
    if fmt == "srt":
        return PlainTextResponse(_subtitles(segments, ",", numbered=True))
    if fmt == "vtt":
        cues = _subtitles(segments, ".", numbered=False)
        return PlainTextResponse("WEBVTT\n\n" + cues, media_type="text/vtt")
    if task == "ast":
        language = "en"
    elif language is None:
        language = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"
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


def _subtitles(segments: list[Segment], decimal: str, numbered: bool) -> str:
    cues = []
    for i, s in enumerate(segments, 1):
        times = f"{_clock(s.start, decimal)} --> {_clock(s.end, decimal)}"
        cues.append(f"{i}\n{times}\n{s.text}\n" if numbered else f"{times}\n{s.text}\n")
    return "\n".join(cues)


def _clock(seconds: float, decimal: str) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"
