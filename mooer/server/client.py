"""A small client of ``/v1/realtime`` for the command line: stream audio, print live captions.

Audio goes out as binary frames of 16 kHz PCM16 (mooer's own rate, declared in the
``session.update``); finals are printed to stdout, one line per utterance, and partials to
stderr on a terminal. A ``ReplyAudio`` asks for speech and takes its audio: the replies in chat,
the translations in ast and asr+ast. A session ends by committing the utterance in progress and
waiting for every result still due; with spoken translations it then sends ``session.close``
and reads until the server closes, so that the last translation's speech arrives too.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np

from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError, MooerError
from mooer.server.pcm import encode_pcm16

if TYPE_CHECKING:
    from mooer.server.reply_audio import ReplyAudio

TASKS = ("asr", "ast", "asr+ast", "chat")
SPOKEN_TASKS = ("chat", "ast", "asr+ast")  # what --audio-out / --play can speak
FINAL = "conversation.item.input_audio_transcription.completed"
TRANSLATION = "conversation.item.input_audio_translation.completed"
DRAIN_TIMEOUT_S = 120.0  # how long to wait for the last results


def realtime_url(server: str, task: str) -> str:
    """``http://host:port`` (or ws://, or a bare host:port) -> the ``/v1/realtime`` websocket URL."""
    if "://" not in server:
        server = f"http://{server}"
    parts = urlsplit(server)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ConfigError(f"server URL {server!r}: expected http://, https://, ws:// or wss://")
    query = {"model": "mooer"}
    if task != "chat":
        query["intent"] = "transcription"
    path = parts.path.rstrip("/")
    path = path if path.endswith("/v1/realtime") else f"{path}/v1/realtime"
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


@dataclass
class Captions:
    """Prints results as they come and tracks what is still due."""

    task: str
    live: bool = False  # partials on stderr, rewritten in place
    due: set[str] = field(default_factory=set)  # items and responses awaiting their results
    replies_due: int = 0  # chat: committed turns not yet answered
    updates: int = 0  # session.updated replies seen
    errors: int = 0
    _translations: dict[str, str] = field(default_factory=dict)
    _transcripts: dict[str, str] = field(default_factory=dict)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type", "")
        item = event.get("item_id", "")
        if kind == "session.updated":
            self.updates += 1
        elif kind == "input_audio_buffer.committed":
            self.due.add(item)
            self.replies_due += self.task == "chat"
        elif kind == "conversation.item.input_audio_transcription.delta" and self.live:
            sys.stderr.write(f"\r\033[K{event.get('text', event.get('delta', ''))}")
            sys.stderr.flush()
        elif kind == FINAL:
            self._transcripts[item] = event["transcript"]
            self._settle(item)
        elif kind == TRANSLATION:
            self._translations[item] = event["translation"]
            self._settle(item)
        elif kind == "response.created":
            self.due.add(event["response"]["id"])
        elif kind == "response.done":
            response = event["response"]
            content = response["output"][0]["content"]  # output_text, or output_audio if spoken
            text = "".join(c.get("text") or c.get("transcript") or "" for c in content)
            suffix = " [interrupted]" if response["status"] == "cancelled" else ""
            self._print(f"mooer: {text}{suffix}")
            self.due.discard(response["id"])
            self.replies_due = max(0, self.replies_due - 1)
        elif kind == "error":
            error = event["error"]
            if error.get("code") != "input_audio_buffer_commit_empty":
                self.errors += 1
                self._clear_partial()
                print(
                    f"mooer: server error {error.get('code')}: {error['message']}", file=sys.stderr
                )

    @property
    def pending(self) -> bool:
        return bool(self.due) or self.replies_due > 0

    def _settle(self, item: str) -> None:
        if self.task == "asr+ast" and not (
            item in self._transcripts and item in self._translations
        ):
            return
        transcript = self._transcripts.pop(item, "")
        if self.task == "asr+ast":
            self._print(f"{transcript}\t{self._translations.pop(item)}")
        else:
            self._print(f"you: {transcript}" if self.task == "chat" else transcript)
        self.due.discard(item)

    def _print(self, line: str) -> None:
        self._clear_partial()
        print(line, flush=True)

    def _clear_partial(self) -> None:
        if self.live:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


async def run_session(
    server: str,
    task: str,
    audio: AsyncIterator[np.ndarray],
    api_key: str | None = None,
    captions: Captions | None = None,
    reply_audio: ReplyAudio | None = None,
) -> Captions:
    """Stream 16 kHz float32 chunks from ``audio`` to the server; returns the captions printed.

    With ``reply_audio`` the chat replies, or the translations, are spoken too and their audio
    goes there.
    """
    import websockets

    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    check_speech_output(task, reply_audio is not None)
    captions = captions or Captions(task)
    url = realtime_url(server, task)
    # the key in a header, not the URL: URLs end up in proxies' logs
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        ws = await websockets.connect(url, max_size=None, additional_headers=headers)
    except (OSError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        raise MooerError(f"cannot connect to {url.split('?')[0]}: {exc}") from exc
    async with ws:
        reader = asyncio.ensure_future(_read(ws, captions, reply_audio))
        try:
            await _send(ws, audio, captions, reader, reply_audio)
        except websockets.ConnectionClosed as exc:
            await asyncio.wait({reader}, timeout=1)  # print what the server said last
            if not captions.errors:
                raise MooerError(f"the server closed the connection: {exc}") from exc
        finally:
            reader.cancel()
    return captions


def check_speech_output(task: str, wanted: bool) -> None:
    """Chat replies and translations are spoken; a transcript is not."""
    if wanted and task not in SPOKEN_TASKS:
        raise ConfigError(
            f"--audio-out and --play speak chat replies and translations: use --mode "
            f"{', '.join(SPOKEN_TASKS)}, not {task!r}"
        )


async def _send(
    ws,
    audio: AsyncIterator[np.ndarray],
    captions: Captions,
    reader,
    reply_audio: ReplyAudio | None,
) -> None:
    session: dict[str, Any] = {
        "type": "realtime" if captions.task == "chat" else "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}}},
        "mooer": {"task": captions.task},
    }
    speaks_translations = reply_audio is not None and captions.task != "chat"
    if captions.task == "chat":  # the API's default is spoken replies
        session["output_modalities"] = ["text"]
    if reply_audio is not None:
        session["output_modalities"] = ["audio"]
        session["audio"]["output"] = {"format": {"type": "audio/pcm", "rate": reply_audio.rate}}
    await ws.send(json.dumps({"type": "session.update", "session": session}))
    async for chunk in audio:
        if reader.done():
            break
        await ws.send(encode_pcm16(chunk))
    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
    # The server answers events in order, each one's own events first: once this update is
    # answered, the commit's item (if any) is known to be due.
    await ws.send(json.dumps({"type": "session.update", "session": {}}))
    deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
    while (captions.updates < 2 or captions.pending) and not reader.done():
        if asyncio.get_running_loop().time() > deadline:
            raise MooerError("the server did not send the last results in time")
        await asyncio.sleep(0.05)
    if speaks_translations and not reader.done():
        # The last translation may still be speaking: the server flushes it, then closes.
        await ws.send(json.dumps({"type": "session.close"}))
        remaining = deadline - asyncio.get_running_loop().time()
        await asyncio.wait({reader}, timeout=max(1.0, remaining))


async def _read(ws, captions: Captions, reply_audio: ReplyAudio | None) -> None:
    import websockets

    try:
        async for message in ws:
            event = json.loads(message)
            captions.handle(event)
            if reply_audio is not None:
                reply_audio.handle(event)
    except websockets.ConnectionClosed:
        return


async def file_chunks(
    samples: np.ndarray, chunk_ms: int = 100, realtime: bool = False
) -> AsyncIterator[np.ndarray]:
    """``samples`` in chunks; at the pace of speech when ``realtime``."""
    step = SAMPLE_RATE * chunk_ms // 1000
    for start in range(0, len(samples), step):
        yield samples[start : start + step]
        await asyncio.sleep(chunk_ms / 1000 if realtime else 0)


async def microphone_chunks(
    stop: asyncio.Event, device: str | int | None = None
) -> AsyncIterator[np.ndarray]:
    """100 ms chunks from the default (or named) input device until ``stop`` is set."""
    sd = import_sounddevice()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[np.ndarray] = asyncio.Queue()

    def callback(data, frames, time, status) -> None:  # on PortAudio's thread
        loop.call_soon_threadsafe(queue.put_nowait, data[:, 0].copy())

    try:
        stream = sd.InputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="float32",
            blocksize=SAMPLE_RATE // 10,
            device=device,
            callback=callback,
        )
    except Exception as exc:  # PortAudioError and ValueError for a bad device
        raise MooerError(f"cannot open the microphone ({device or 'default'}): {exc}") from exc
    stopped = asyncio.ensure_future(stop.wait())
    with stream:
        while not stop.is_set():
            chunk = asyncio.ensure_future(queue.get())
            await asyncio.wait({chunk, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if chunk.done():
                yield chunk.result()
            else:
                chunk.cancel()
    stopped.cancel()


def import_sounddevice(user: str = "mooer mic"):
    """sounddevice, or a ``MooerError`` saying how to get it (the wheel or PortAudio missing).

    ``user`` names what needs it in the message.
    """
    try:
        import sounddevice
    except ImportError as exc:
        raise MooerError(f"{user} needs the sounddevice package: pip install 'mooer[mic]'") from exc
    except OSError as exc:  # the package is there, the PortAudio library is not
        raise MooerError(
            f"{user} needs the PortAudio library ({exc}): install it, e.g. "
            "'apt install libportaudio2' or 'brew install portaudio'"
        ) from exc
    return sounddevice
