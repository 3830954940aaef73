"""Audio as it travels on the wire: PCM16 / G.711 bytes at the client's rate -> 16 kHz float32.

Clients send little-endian 16-bit PCM (OpenAI's ``audio/pcm`` at 24 kHz, or 16 kHz, mooer's own
rate), or 8 kHz G.711 mu-law/A-law (``audio/pcmu``/``audio/pcma``). A ``WireDecoder`` holds one
stream's resampler state, so audio may arrive in chunks of any size (even odd byte counts)
and still come out exactly as if it had been resampled in one piece.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np
import soxr

from mooer.audio import SAMPLE_RATE
from mooer.errors import AudioError, check_number

ENCODINGS = ("pcm16", "pcmu", "pcma")
PCM16_RATES = (8000, 192000)  # the range accepted; protocols narrow it (Realtime: 24 or 16 kHz)
G711_RATE = 8000
BYTES_PER_SAMPLE = {"pcm16": 2, "pcmu": 1, "pcma": 1}


def _mulaw_table() -> np.ndarray:
    """G.711 mu-law byte -> linear 16-bit value (ITU-T G.711, magnitude up to 32124)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = (((u & 0x0F) << 3) + 0x84 << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.float32) / 32768.0


def _alaw_table() -> np.ndarray:
    """G.711 A-law byte -> linear 16-bit value (magnitude up to 32256; bit 7 set = positive)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.float32) / 32768.0


G711_TABLES = {"pcmu": _mulaw_table(), "pcma": _alaw_table()}


@dataclass(frozen=True)
class WireFormat:
    """An input audio format: ``encoding`` (pcm16, pcmu or pcma) at ``rate`` Hz, mono."""

    encoding: str = "pcm16"
    rate: int = 24000

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise AudioError(
                f"audio encoding {self.encoding!r} is not supported: expected one of {ENCODINGS}"
            )
        rate = self.rate
        if self.encoding != "pcm16":
            if rate != G711_RATE:
                raise AudioError(f"{self.encoding} audio is {G711_RATE} Hz, got {rate!r}")
        else:
            check_number(rate, "sample rate", *PCM16_RATES, integer=True, error=AudioError)


class WireDecoder:
    """One stream's bytes -> 16 kHz float32 samples; keeps split samples and resampler state."""

    def __init__(self, fmt: WireFormat) -> None:
        self.format = fmt
        self._width = BYTES_PER_SAMPLE[fmt.encoding]
        self._reset()

    def _reset(self) -> None:
        self._carry = b""  # the first byte of a sample split across two messages
        self._resampler = (
            None
            if self.format.rate == SAMPLE_RATE
            else soxr.ResampleStream(
                self.format.rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )
        )

    def decode(self, data: bytes) -> np.ndarray:
        """Raw bytes of any length -> (N,) float32 at 16 kHz (N may be 0)."""
        data = self._carry + bytes(data)
        whole = len(data) - len(data) % self._width
        data, self._carry = data[:whole], data[whole:]
        if self.format.encoding == "pcm16":
            x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        else:
            x = G711_TABLES[self.format.encoding][np.frombuffer(data, dtype=np.uint8)]
        return self._resample(x, last=False)

    def decode_base64(self, text: object) -> np.ndarray:
        """A base64 string of raw bytes -> 16 kHz samples; ``AudioError`` if it is not base64."""
        if not isinstance(text, str):
            raise AudioError(f"audio must be a base64 string, got {type(text).__name__}")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AudioError(f"audio is not valid base64: {exc}") from exc
        return self.decode(data)

    def flush(self) -> np.ndarray:
        """The resampler's remaining output at the end of the stream; the decoder starts afresh."""
        tail = self._resample(np.zeros(0, dtype=np.float32), last=True)
        self._reset()
        return tail

    def _resample(self, x: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return x
        return self._resampler.resample_chunk(x, last=last)


def encode_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> little-endian PCM16 bytes (clipped)."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (np.round(x * 32767.0)).astype("<i2").tobytes()
