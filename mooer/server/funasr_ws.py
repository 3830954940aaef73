"""FunASR's websocket ASR protocol, so FunASR's own clients work unchanged against mooer.

A client sends a JSON frame first (``mode`` online/offline/2pass, ``chunk_size``, ``wav_name``,
``wav_format``, ``audio_fs``, ``is_speaking: true``, ``hotwords``, ``itn``), then binary audio
(PCM16 at ``audio_fs``, or a whole encoded file when ``wav_format`` is not ``pcm``), then
``{"is_speaking": false}``. Replies are ``{"mode", "wav_name", "text", "is_final"}``:

- ``online`` / ``2pass-online``: new text while speech goes on (a client appends it);
- ``offline`` / ``2pass-offline``: the final text of each utterance.

After ``is_speaking: false`` the pending utterance is decoded and the last reply carries
``is_final: true`` and ``is_end: true`` (an empty-text reply if nothing was said), so clients
that wait for the end-of-input acknowledgement return. Another JSON frame may then start the
next file on the same connection. ``hotwords`` and ``itn`` are accepted and ignored.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from mooer.agent import events as ev
from mooer.audio import load_audio
from mooer.errors import MooerError
from mooer.server.captions import AppendOnlyText
from mooer.server.connection import Link, ProtocolError, WireProtocol, parse_json_object
from mooer.server.pcm import WireDecoder, WireFormat

MODES = ("online", "offline", "2pass")
CHUNK_FRAME_MS = 60  # chunk_size counts 60 ms encoder frames; its middle value is the chunk


@dataclass(frozen=True)
class FunasrSettings:
    """The config frame's fields; later frames may change them for the next file."""

    mode: str = "2pass"
    wav_name: str = "microphone"
    chunk_size: tuple[int, int, int] = (5, 10, 5)
    audio_fs: int = 16000
    wav_format: str = "pcm"

    def engine_changes(self) -> dict[str, Any]:
        """What the engine session needs from these settings (offline mode: no partials)."""
        partials = 0 if self.mode == "offline" else max(100, self.chunk_size[1] * CHUNK_FRAME_MS)
        return {"mode": "asr", "partial_interval_ms": partials}


def apply_frame(settings: FunasrSettings, frame: dict[str, Any]) -> FunasrSettings:
    """``settings`` updated by a JSON frame's fields; ``ProtocolError`` names a bad one."""
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
        changes["audio_fs"] = frame["audio_fs"]
        try:
            WireFormat("pcm16", frame["audio_fs"])
        except MooerError as exc:
            raise ProtocolError("invalid_value", f"audio_fs: {exc}", "audio_fs") from exc
    if "wav_format" in frame:
        changes["wav_format"] = str(frame["wav_format"]).lower()
    return replace(settings, **changes)


def _chunk_size(value: object) -> tuple[int, int, int]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(int(p) for p in parts)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(n >= 0 for n in numbers) or numbers[1] < 1:
        raise ProtocolError(
            "invalid_value",
            f"chunk_size {value!r}: expected three counts of 60 ms frames such as [5, 10, 5]",
            "chunk_size",
        )
    return numbers  # type: ignore[return-value]


class FunasrProtocol(WireProtocol):
    """One FunASR connection; it may carry several files one after another."""

    name = "funasr"
    subprotocols = ("binary",)

    def __init__(self, link: Link) -> None:
        super().__init__(link)
        self.settings = FunasrSettings()
        self.session = None  # opened by the first audio of each file
        self.decoder: WireDecoder | None = None
        self.encoded = bytearray()  # a whole file, when wav_format is not pcm
        self.online = AppendOnlyText(self.count_revision)
        self.held: list[dict[str, Any]] | None = None  # finals kept back while a file ends
        self.file_task: asyncio.Task | None = None

    def start(self) -> None:
        """FunASR servers send nothing until there is text."""

    def reply(self, text: str, mode: str, **extra: Any) -> dict[str, Any]:
        return {
            "mode": mode,
            "wav_name": self.settings.wav_name,
            "text": text,
            "is_final": False,
            **extra,
        }

    def error_message(self, error: ProtocolError) -> dict[str, Any]:
        return self.reply("", self.settings.mode, error=error.message, code=error.code)

    def on_text(self, text: str) -> None:
        frame = parse_json_object(text)
        if self.ending or self.held is not None:
            raise ProtocolError(
                "busy", "the previous file is still being finished; wait for its is_final reply"
            )
        settings = apply_frame(self.settings, frame)
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
        if self.ending or self.held is not None:
            raise ProtocolError("busy", "audio after is_speaking=false, before the is_final reply")
        self._ensure_session()
        if self.settings.wav_format != "pcm":
            if len(self.encoded) + len(data) > self.link.hub.config.max_upload_bytes:
                raise ProtocolError("file_too_large", "the encoded file is over the upload limit")
            self.encoded += data
            return
        samples = self.decoder.decode(data)
        if samples.size and self.admit_audio(samples.size):
            self.session.feed(samples)

    def _ensure_session(self) -> None:
        if self.session is None:
            config = self.link.hub.session_config(**self.settings.engine_changes())
            self.session = self.link.open_session(config, self.on_event)
            self.decoder = WireDecoder(WireFormat("pcm16", self.settings.audio_fs))
            self.online = AppendOnlyText(self.count_revision)

    def on_event(self, event: object) -> None:
        mode = self.settings.mode
        if isinstance(event, ev.TranscriptDelta) and mode != "offline":
            piece = self.online.advance(event.item_id, event.stable_text)
            if piece:
                self.link.send(self.reply(piece, "online" if mode == "online" else "2pass-online"))
        elif isinstance(event, ev.Transcript):
            if mode == "online":
                message = self.reply(self.online.advance(event.item_id, event.text, True), mode)
            else:
                self.online.advance(event.item_id, event.text, True)
                message = self.reply(event.text, "2pass-offline" if mode == "2pass" else mode)
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
                if self.encoded:  # decode and run the VAD over a whole file off the event loop
                    samples = await asyncio.to_thread(load_audio, bytes(self.encoded))
                    if self.admit_audio(samples.size):
                        await asyncio.to_thread(session.feed, samples)
                else:
                    session.feed(self.decoder.flush())
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

    def _final_mode(self) -> str:
        return {"2pass": "2pass-offline"}.get(self.settings.mode, self.settings.mode)

    async def end(self, reason: str, code: int) -> None:
        if self.held is None and self.session is not None:
            self.finish_file()
        if self.file_task is not None:
            await self.file_task
        self.link.close(code, reason)

    def abort(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close(flush=False)
