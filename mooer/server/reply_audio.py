"""Where ``mooer stream`` / ``mooer mic`` put spoken replies and translations: a wav file, the
speakers, or both.

The server sends each chat reply's speech as ``response.output_audio.delta`` events, and each
translation's (ast tasks) as ``conversation.item.input_audio_translation.audio.delta`` (base64
PCM16 mono at the rate the client asked for). The file keeps everything received, in order. The
speakers play it as it comes; a reply falls silent at once on barge-in: when the user starts
speaking (``input_audio_buffer.speech_started``, which may come after the server has sent the
whole reply) or when the server clears the reply (``output_audio_buffer.cleared``). A
translation is an interpreter's: it plays on while the user goes on speaking.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from mooer.errors import ConfigError, MooerError

OUTPUT_RATE = 24000  # what the client asks for: the OpenAI APIs' rate
BARGE_IN = ("input_audio_buffer.speech_started", "output_audio_buffer.cleared")
REPLY_AUDIO = "response.output_audio.delta"
TRANSLATION_AUDIO = "conversation.item.input_audio_translation.audio.delta"


class PcmQueue:
    """PCM16 waiting to be played: pushed by the event loop, pulled in blocks by PortAudio's thread."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._offset = 0  # samples of the first chunk already played
        self._queued = 0
        self._lock = threading.Lock()

    @property
    def queued(self) -> int:
        """Samples not played yet."""
        return self._queued

    def push(self, pcm: np.ndarray) -> None:
        if pcm.size:
            with self._lock:
                self._chunks.append(pcm)
                self._queued += pcm.size

    def pull(self, out: np.ndarray) -> int:
        """Fill ``out`` (int16, 1-D) with the next samples, silence past the end; how many were audio."""
        filled = 0
        with self._lock:
            while filled < out.size and self._chunks:
                chunk = self._chunks[0]
                take = min(out.size - filled, chunk.size - self._offset)
                out[filled : filled + take] = chunk[self._offset : self._offset + take]
                filled += take
                self._offset += take
                if self._offset == chunk.size:
                    self._chunks.popleft()
                    self._offset = 0
            self._queued -= filled
        out[filled:] = 0
        return filled

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()
            self._offset = self._queued = 0


class Speakers:
    """An output device playing a ``PcmQueue`` through PortAudio (sounddevice, imported here)."""

    def __init__(self, rate: int = OUTPUT_RATE, device: str | int | None = None) -> None:
        from mooer.server.client import import_sounddevice

        sd = import_sounddevice("--play")
        self.queue = PcmQueue()
        try:
            self._stream = sd.OutputStream(
                samplerate=rate, channels=1, dtype="int16", device=device, callback=self._play
            )
            self._stream.start()
        except Exception as exc:  # PortAudioError, and ValueError for a bad device
            raise MooerError(f"cannot open the speakers ({device or 'default'}): {exc}") from exc

    def _play(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        self.queue.pull(outdata[:, 0])  # (frames, 1) int16

    def drain(self, timeout_s: float) -> None:
        """Wait until everything queued has been played (or ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        while self.queue.queued and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(self._stream.latency)  # the last block is still in the device's buffer

    def close(self) -> None:
        self._stream.abort()
        self._stream.close()


class ReplyAudio:
    """The spoken replies of one client session, written to ``path`` and/or played."""

    def __init__(
        self,
        path: str | Path | None = None,
        play: bool = False,
        device: str | int | None = None,
        rate: int = OUTPUT_RATE,
    ) -> None:
        self.rate = rate
        self.samples = 0  # received
        self._replying = False  # the last audio was a chat reply's (barge-in cuts it off)
        self.speakers = Speakers(rate, device) if play else None
        self._file = None
        if path is not None:
            import soundfile as sf

            try:
                self._file = sf.SoundFile(
                    path, "w", samplerate=rate, channels=1, format="WAV", subtype="PCM_16"
                )
            except (sf.LibsndfileError, OSError) as exc:
                if self.speakers:
                    self.speakers.close()
                raise ConfigError(f"cannot write the reply audio to {path}: {exc}") from exc

    def handle(self, event: dict[str, Any]) -> None:
        """Take one server event: audio is kept, barge-in silences a reply."""
        kind = event.get("type")
        if kind in (REPLY_AUDIO, TRANSLATION_AUDIO):
            self._replying = kind == REPLY_AUDIO
            pcm = np.frombuffer(base64.b64decode(event["delta"]), dtype="<i2")
            self.samples += pcm.size
            if self._file is not None:
                self._file.write(pcm)
            if self.speakers:
                self.speakers.queue.push(pcm)
        elif kind in BARGE_IN and self.speakers and self._replying:
            self.speakers.queue.clear()

    def finish(self, timeout_s: float = 600.0) -> None:
        """Let the speakers play what is left of the last reply."""
        if self.speakers:
            self.speakers.drain(timeout_s)

    def close(self) -> None:
        """Close the wav (its header then holds the length) and the device."""
        if self._file is not None:
            self._file.close()
        if self.speakers:
            self.speakers.close()

    def __enter__(self) -> ReplyAudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
