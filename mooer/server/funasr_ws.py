"""FunASR's websocket ASR protocol, so FunASR's own clients work unchanged against mooer.

A client sends a JSON frame first (``mode`` online/offline/2pass, ``chunk_size``, ``wav_name``,
``wav_format``, ``audio_fs``, ``is_speaking: true``, ``hotwords``, ``itn``), then binary audio
(PCM16 at ``audio_fs``, or a whole encoded file when ``wav_format`` is not ``pcm``), then
``{"is_speaking": false}``. Offline mode cuts the audio as ``mooer transcribe`` cuts a file
(``SEGMENTER``), so it gives the same utterances and text. A whole encoded file is decoded a
block at a time and fed to the session as it goes; past ``max_request_audio_s`` of audio (or
what is left of the session's allowance) it is refused with ``audio_too_long``
(``session_audio_limit``) before the rest is decoded. Replies are ``{"mode", "wav_name",
"text", "is_final"}``:

- ``online`` / ``2pass-online``: new text while speech goes on (a client appends it);
- ``offline`` / ``2pass-offline``: the final text of each utterance.

After ``is_speaking: false`` the pending utterance is decoded and the last reply carries
``is_final: true`` and ``is_end: true`` (an empty-text reply if nothing was said), so clients
that wait for the end-of-input acknowledgement return. Another JSON frame may then start the
next file on the same connection. ``hotwords`` (a JSON object ``{"word": weight}`` as
FunASR's clients send their hotword file, or words separated by spaces) are favoured by
context biasing (``mooer.llm.biasing``; one bonus for every word, weights checked but not
used); ``itn`` is accepted and ignored.

On a server with an API key, the first JSON frame carries it as ``api_key`` (mooer's addition:
FunASR's clients send no headers); ``ServerConfig.funasr_open`` waives it on the FunASR port.
mooer's additions: each utterance's final (``offline``/``2pass-offline``) carries
``stamp_sents``, one sentence with its ``start`` and ``end`` in ms from the file's start; a
config frame with ``"record": true`` keeps the connection as a meeting, and every reply from
then on carries its ``meeting_id``. A recorded connection, or one whose config frame has
``"speakers": true``, labels each final's speaker from its next file on: its ``stamp_sents``
entry carries ``spk`` (0, 1, ... in order of first appearance, as FunASR's own ``spk``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from typing import Any

from mooer.agent import events as ev
from mooer.audio import AudioStream, AudioTooLong
from mooer.errors import MooerError
from mooer.llm.backend import LLMBackend
from mooer.llm.biasing import Hotwords, hotwords_from_funasr
from mooer.server.captions import AppendOnlyText
from mooer.server.connection import (
    CLOSE_POLICY,
    Link,
    ProtocolError,
    WireProtocol,
    hotwords_field,
    number_field,
    parse_json_object,
)
from mooer.server.pcm import PCM16_RATES, WireDecoder, WireFormat
from mooer.transcribe import SEGMENTER

MODES = ("online", "offline", "2pass")
CHUNK_FRAME_MS = 60  # chunk_size counts 60 ms encoder frames; its middle value is the chunk
CHUNK_FRAMES = 1000  # the most frames of each chunk_size count: 60 s
KEY_FIELD = "api_key"  # mooer's addition to the first JSON message, on a server with a key
KEY_WHERE = (
    f'send it as "{KEY_FIELD}" in the first JSON message (for clients that cannot, the server '
    "may open its FunASR port with --funasr-open)"
)


@dataclass(frozen=True)
class FunasrSettings:
    """The config frame's fields; later frames may change them for the next file."""

    mode: str = "2pass"
    wav_name: str = "microphone"
    chunk_size: tuple[int, int, int] = (5, 10, 5)
    audio_fs: int = 16000
    wav_format: str = "pcm"
    hotwords: Hotwords | None = None

    def engine_changes(self) -> dict[str, Any]:
        """What the engine session needs from these settings. Offline mode: no partials, and
        audio cut as ``mooer transcribe`` and HTTP uploads cut it (``SEGMENTER``)."""
        if self.mode == "offline":
            return {"mode": "asr", "partial_interval_ms": 0, "vad": SEGMENTER, **self._words()}
        partials = max(100, self.chunk_size[1] * CHUNK_FRAME_MS)
        return {"mode": "asr", "partial_interval_ms": partials, **self._words()}

    def _words(self) -> dict[str, Any]:
        return {} if self.hotwords is None else {"hotwords": self.hotwords}


def apply_frame(
    settings: FunasrSettings, frame: dict[str, Any], backend: LLMBackend | None = None
) -> FunasrSettings:
    """``settings`` updated by a JSON frame's fields; ``ProtocolError`` names a bad one
    (hotwords are refused where the LLM ``backend`` cannot use them)."""
    changes: dict[str, Any] = {}
    if "mode" in frame:
        if frame["mode"] not in MODES:
            raise ProtocolError(
                "invalid_value", f"mode {frame['mode']!r}: expected one of {MODES}", "mode"
            )
        changes["mode"] = frame["mode"]
    if "wav_name" in frame:
        changes["wav_name"] = str(frame["wav_name"])
    if "chunk_size" in frame:
        changes["chunk_size"] = _chunk_size(frame["chunk_size"])
    if "audio_fs" in frame:
        changes["audio_fs"] = number_field(frame["audio_fs"], "audio_fs", *PCM16_RATES)
    if "wav_format" in frame:
        changes["wav_format"] = str(frame["wav_format"]).lower()
    if "hotwords" in frame:
        changes["hotwords"] = hotwords_field(
            frame["hotwords"], "hotwords", backend, hotwords_from_funasr
        )
    return replace(settings, **changes)


def _chunk_size(value: object) -> tuple[int, int, int]:
    """``[5, 10, 5]`` or ``"5,10,5"``: 60 ms frames of look-back, chunk and look-ahead."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else value
    if not isinstance(parts, list) or len(parts) != 3:
        raise ProtocolError(
            "invalid_value",
            f"chunk_size {value!r}: expected three counts of 60 ms frames such as [5, 10, 5]",
            "chunk_size",
        )
    numbers = [int(p) if isinstance(p, str) and p.isdigit() else p for p in parts]
    return tuple(  # type: ignore[return-value]
        number_field(n, f"chunk_size[{i}]", 1 if i == 1 else 0, CHUNK_FRAMES)
        for i, n in enumerate(numbers)
    )


class FunasrProtocol(WireProtocol):
    """One FunASR connection; it may carry several files one after another."""

    name = "funasr"
    subprotocols = ("binary",)
    key_in_first_message = True  # FunASR's clients send no headers

    def __init__(self, link: Link) -> None:
        super().__init__(link)
        self.settings = FunasrSettings()
        self.session = None  # opened by the first audio of each file
        self.decoder: WireDecoder | None = None
        self.encoded = bytearray()  # a whole file, when wav_format is not pcm
        self.online = AppendOnlyText(self.count_revision)
        self.held: list[dict[str, Any]] | None = None  # finals kept back while a file ends
        self.file_task: asyncio.Task | None = None
        self.refused = False  # the connection was refused: the error is the last reply
        self.times: dict[str, tuple[int, int]] = {}  # item -> (start, end) ms in the file
        self.gone = False  # the client went away: stop decoding its file

    def start(self) -> None:
        """FunASR servers send nothing until there is text."""

    def reply(self, text: str, mode: str, **extra: Any) -> dict[str, Any]:
        return {
            "mode": mode,
            "wav_name": self.settings.wav_name,
            "text": text,
            "is_final": False,
            **extra,
            **({"meeting_id": self.link.recorder.meeting_id} if self.link.recorder else {}),
        }

    def error_message(self, error: ProtocolError) -> dict[str, Any]:
        # FunASR's clients wait for is_final: a refusal carries it, so that they end
        last = {"is_final": True, "is_end": True} if self.refused else {}
        return {**self.reply("", self.settings.mode, error=error.message, code=error.code), **last}

    def refuse(self, error: ProtocolError, code: int) -> None:
        self.refused = True
        super().refuse(error, code)

    def _key_refused(self, frame: dict[str, Any] | None) -> bool:
        """On a connection whose key is awaited: check the key of the first message (None: a
        binary one); refuse the client if it is wrong, in reply to its own file."""
        if not self.link.key_awaited:
            return False
        error = self.link.admit_key(None if frame is None else frame.get(KEY_FIELD), KEY_WHERE)
        if error is not None:
            with contextlib.suppress(ProtocolError):
                self.settings = apply_frame(self.settings, frame or {})
            self.refuse(error, CLOSE_POLICY)
        return error is not None

    def on_text(self, text: str) -> None:
        frame = parse_json_object(text)
        if self._key_refused(frame):
            return
        frame.pop(KEY_FIELD, None)
        if self.ending or self.held is not None:
            raise ProtocolError(
                "busy", "the previous file is still being finished; wait for its is_final reply"
            )
        settings = apply_frame(self.settings, frame, self.link.hub.model.llm_backend)
        for name, ask in (("record", self.link.record), ("speakers", self.link.label_speakers)):
            if name in frame and frame[name] is not False:
                if frame[name] is not True:
                    raise ProtocolError("invalid_value", f"{name} must be true or false", name)
                ask(self.report)
        if settings != self.settings and self.session is not None:
            if settings.engine_changes() != self.settings.engine_changes() or (
                settings.audio_fs != self.settings.audio_fs
            ):
                raise ProtocolError(
                    "busy", "mode, chunk_size and audio_fs apply from the next file on"
                )
        self.settings = settings
        if frame.get("is_speaking") is False:
            self.finish_file()

    def on_binary(self, data: bytes) -> None:
        if self._key_refused(None):
            return
        if self.ending or self.held is not None:
            raise ProtocolError("busy", "audio after is_speaking=false, before the is_final reply")
        self._ensure_session()
        if self.settings.wav_format != "pcm":
            if len(self.encoded) + len(data) > self.link.hub.config.max_upload_bytes:
                raise ProtocolError("file_too_large", "the encoded file is over the upload limit")
            self.encoded += data
            return
        samples = self.decoder.decode(data)
        if samples.size and self.admit_audio(samples):
            self.link.hub.vad_clock.hear(self.session, samples)

    def _ensure_session(self) -> None:
        if self.session is None:
            config = self.link.hub.session_config(**self.settings.engine_changes())
            self.session = self.link.open_session(config, self.on_event)
            self.decoder = WireDecoder(WireFormat("pcm16", self.settings.audio_fs))
            self.online = AppendOnlyText(self.count_revision)

    def on_event(self, event: object) -> None:
        mode = self.settings.mode
        if isinstance(event, ev.SpeechStarted):
            self.times[event.item_id] = (event.audio_start_ms, event.audio_start_ms)
        elif isinstance(event, ev.SpeechStopped):
            start = self.times.get(event.item_id, (0, 0))[0]
            self.times[event.item_id] = (start, event.audio_end_ms)
        elif isinstance(event, ev.TranscriptDelta) and mode != "offline":
            piece = self.online.advance(event.item_id, event.stable_text)
            if piece:
                self.link.send(self.reply(piece, "online" if mode == "online" else "2pass-online"))
        elif isinstance(event, ev.Transcript):
            times = self.times.pop(event.item_id, None)
            if mode == "online":
                message = self.reply(self.online.advance(event.item_id, event.text, True), mode)
            else:
                self.online.advance(event.item_id, event.text, True)
                message = self.reply(event.text, "2pass-offline" if mode == "2pass" else mode)
                if times is not None:
                    sentence = {"text_seg": event.text, "punc": "", "start": times[0],
                                "end": times[1]}  # fmt: skip
                    if event.speaker is not None:
                        sentence["spk"] = event.speaker
                    message["stamp_sents"] = [{**sentence, "ts_list": []}]
            if self.held is not None:
                self.held.append(message)
            elif message["text"]:
                self.link.send(message)
        elif isinstance(event, ev.Error):
            self.report(ProtocolError(event.code, event.message))

    def finish_file(self) -> None:
        """``is_speaking: false``: decode what is pending, then acknowledge with ``is_final``."""
        self.held = []
        self.file_task = asyncio.ensure_future(self._finish_file())

    async def _finish_file(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            try:
                if self.encoded:
                    await self._feed_file(session, bytes(self.encoded))
                else:
                    session.feed(self.decoder.flush())
            except AudioTooLong as exc:
                self.report(_too_long(exc, self.link.hub.config.max_request_audio_s))
            except MooerError as exc:
                self.report(ProtocolError("invalid_audio", str(exc)))
            finally:
                self.encoded = bytearray()
            await self.link.close_session(session)
        held, self.held = self.held or [], None
        held = [m for m in held if m["text"]] or [self.reply("", self._final_mode())]
        for message in held[:-1]:
            self.link.send(message)
        self.link.send({**held[-1], "is_final": True, "is_end": True})

    async def _feed_file(self, session: Any, data: bytes) -> None:
        """A whole encoded file decoded and fed to ``session`` a block at a time, off the event
        loop, never past the request limit or the session's allowance; stops if the client
        goes away. ``AudioTooLong``/``AudioError`` for a file refused."""
        config = self.link.hub.config
        allowance = config.max_session_audio_s - self.link.audio_s
        stream = await asyncio.to_thread(
            AudioStream, data, max(min(config.max_request_audio_s, allowance), 1e-3)
        )
        try:
            blocks = stream.blocks()
            while not self.gone:
                block = await asyncio.to_thread(next, blocks, None)
                if block is None or not self.admit_audio(block):
                    return
                await asyncio.to_thread(session.feed, block)
        finally:
            stream.close()

    def _final_mode(self) -> str:
        return {"2pass": "2pass-offline"}.get(self.settings.mode, self.settings.mode)

    async def end(self, reason: str, code: int) -> None:
        if self.held is None and self.session is not None:
            self.finish_file()
        if self.file_task is not None:
            await self.file_task
        self.link.close(code, reason)

    def abort(self) -> None:
        self.gone = True
        session, self.session = self.session, None
        if session is not None:
            session.close(flush=False)


def _too_long(error: AudioTooLong, request_limit: float) -> ProtocolError:
    """The limit that refused a file: the request's, or what was left of the session's."""
    if error.limit_s < request_limit:
        return ProtocolError(
            "session_audio_limit",
            f"the file holds more audio than this session's allowance has left ({error})",
        )
    return ProtocolError(
        "audio_too_long",
        f"the file holds more than this server's limit of {request_limit:g} s of audio "
        "(max_request_audio_s)",
    )
