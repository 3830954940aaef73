"""Audio in: any file or array -> float32 mono 16 kHz in [-1, 1], with the time units the model uses.

Every layer (CLI, server, agent, training) goes through here, so bad audio is rejected once,
with an ``AudioError`` naming the source, before it can turn into NaN features or a torch traceback.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from mooer.errors import AudioError, check_number

SAMPLE_RATE = 16000  # Hz, the only rate the front end accepts
HOP_MS = 10  # fbank frame shift
WINDOW_MS = 25  # fbank analysis window
HOP_LENGTH = SAMPLE_RATE * HOP_MS // 1000  # 160 samples
WINDOW_LENGTH = SAMPLE_RATE * WINDOW_MS // 1000  # 400 samples
N_MELS = 80  # fbank bins
LFR_M = 7  # fbank frames stacked into one low-frame-rate (LFR) frame
LFR_N = 6  # fbank frames advanced per LFR frame
FEATURE_DIM = N_MELS * LFR_M  # 560 values per LFR frame (the encoder input)
FRAME_MS = HOP_MS * LFR_N  # 60 ms per LFR / encoder frame
ADAPTER_DOWNSAMPLE = 2  # encoder frames merged into one LLM audio token
TOKEN_MS = FRAME_MS * ADAPTER_DOWNSAMPLE  # 120 ms per LLM audio token
SAMPLES_PER_TOKEN = SAMPLE_RATE * TOKEN_MS // 1000  # 1920 samples

MAX_CHANNELS = 32  # a wider (N, C) array is almost surely a transposed (C, N) one
BLOCK_S = 5.0  # seconds of audio a file is decoded in at a time
UNKNOWN_FRAMES = 2**63 - 1  # libsndfile's frame count for a stream that does not declare it


def samples_to_ms(samples: int) -> int:
    """A count of 16 kHz samples as whole milliseconds (rounded down)."""
    return samples * 1000 // SAMPLE_RATE


def ms_to_samples(milliseconds: float) -> int:
    """Milliseconds as the nearest count of 16 kHz samples."""
    return int(round(milliseconds * SAMPLE_RATE / 1000))


AudioSource = str | os.PathLike | bytes | BinaryIO


def load_audio(source: AudioSource, max_seconds: float | None = None) -> np.ndarray:
    """Decode a path, raw file bytes or a binary stream (wav/flac/ogg/mp3...) to (N,) float32 16 kHz.

    Channels are averaged and the rate converted with soxr. Raises ``AudioError`` naming the
    source if it is missing, not audio, corrupt, empty, or holds NaN/inf samples, and
    ``AudioTooLong`` if it holds more than ``max_seconds`` of audio.
    """
    with AudioStream(source, max_seconds) as stream:
        return np.concatenate(list(stream.blocks()))


class AudioTooLong(AudioError):
    """A file holds more audio than a limit allows; found from its header or while decoding,
    before the rest is decoded."""

    def __init__(self, name: str, limit_s: float) -> None:
        super().__init__(f"{name} holds more than {limit_s:g} s of audio: over the limit")
        self.limit_s = limit_s


class AudioStream:
    """A file decoded a block at a time to float32 mono 16 kHz, so that no more than
    ``max_seconds`` of it is ever decoded: a small compressed file of hours of silence is
    refused from its header, or at the block that passes the limit when the header does not
    tell. Opening reads the header only (``AudioError`` if it is not audio)."""

    def __init__(self, source: AudioSource, max_seconds: float | None = None) -> None:
        self.name, handle = _open(source)
        self.max_seconds = max_seconds
        self.samples = 0  # 16 kHz samples given out so far
        try:
            self._file = sf.SoundFile(handle)
        except (sf.SoundFileError, RuntimeError, ValueError, EOFError) as err:
            raise AudioError(f"cannot decode audio from {self.name}: {err}") from err
        self.rate = self._file.samplerate
        if self._file.channels > MAX_CHANNELS:
            self.close()
            raise AudioError(
                f"{self.name} has {self._file.channels} channels: at most {MAX_CHANNELS}"
            )
        declared = self._file.frames
        if declared != UNKNOWN_FRAMES and self._over(declared):
            self.close()
            raise AudioTooLong(self.name, max_seconds)

    def _over(self, frames: int) -> bool:
        return self.max_seconds is not None and frames > self.max_seconds * self.rate

    def blocks(self, block_s: float = BLOCK_S) -> Iterator[np.ndarray]:
        """The audio as (n,) float32 16 kHz blocks of about ``block_s`` seconds, in order."""
        frames = max(1, int(block_s * self.rate))
        resampler = None
        if _check_rate(self.rate) != SAMPLE_RATE:
            resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="float32")
        read = 0
        while True:
            try:
                block = self._file.read(frames, dtype="float32", always_2d=True)  # (n, C)
            except (sf.SoundFileError, RuntimeError, ValueError, EOFError) as err:
                raise AudioError(f"cannot decode audio from {self.name}: {err}") from err
            read += len(block)
            if self._over(read):
                raise AudioTooLong(self.name, self.max_seconds)
            last = len(block) < frames
            x = _finite(block.mean(axis=1, dtype=np.float32), self.name)  # (n, C) -> (n,)
            if resampler is not None:
                x = resampler.resample_chunk(x, last=last)
            if x.size:
                self.samples += x.size
                # Float files and the resampler may overshoot full scale; clip as 16 bits would.
                yield np.clip(np.ascontiguousarray(x, dtype=np.float32), -1.0, 1.0)
            if last:
                break
        if read == 0:
            raise AudioError(f"{self.name} has no samples")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def to_mono_16k(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """An array from an API user, (N,) or (N, C) at any rate -> (N',) float32 16 kHz in [-1, 1].

    Integer arrays are scaled to full scale (int16 by 1/32768). Raises ``AudioError`` for an empty,
    non-finite, non-numeric or wrongly shaped array and for a non-positive rate.
    """
    return _to_mono_16k(samples, sample_rate, "audio array")


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(N,) or (N, C) float samples at ``from_rate`` -> the same at ``to_rate`` (soxr, high quality)."""
    from_rate, to_rate = _check_rate(from_rate), _check_rate(to_rate)
    if from_rate == to_rate:
        return samples
    return soxr.resample(samples, from_rate, to_rate)


def _check_rate(rate: int) -> int:
    """``rate`` as an int; NumPy scalars and whole floats, which array callers hand in, pass."""
    if isinstance(rate, np.number):
        rate = rate.item()
    if isinstance(rate, float) and rate.is_integer():
        rate = int(rate)
    return check_number(rate, "sample rate", 1, integer=True, error=AudioError)


def _open(source: AudioSource) -> tuple[str, str | BinaryIO]:
    """A display name for errors plus something soundfile can read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>", io.BytesIO(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise AudioError(f"audio file not found: {path}")
        return path, path
    if hasattr(source, "read"):
        name = str(getattr(source, "name", "<stream>"))
        seekable = getattr(source, "seekable", None)
        if seekable is None or not seekable():
            return name, io.BytesIO(source.read())  # soundfile needs to seek to read headers
        return name, source
    raise AudioError(
        f"cannot read audio from a {type(source).__name__}: expected a path, bytes or file"
    )


def _to_mono_16k(samples: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    x = _as_float(samples, name)
    if x.ndim == 2:
        if x.shape[1] > MAX_CHANNELS:
            raise AudioError(
                f"{name} has shape {x.shape}: expected (N,) or (N, C) with C <= {MAX_CHANNELS}; "
                "transpose a (C, N) array"
            )
        x = x.mean(axis=1, dtype=np.float32)  # (N, C) -> (N,)
    elif x.ndim != 1:
        raise AudioError(f"{name} has shape {x.shape}: expected (N,) or (N, C)")
    if x.size == 0:
        raise AudioError(f"{name} has no samples")
    x = resample(_finite(x, name), sample_rate, SAMPLE_RATE)
    # Float files and the resampler may overshoot full scale; clip as a 16-bit recording would.
    return np.clip(np.ascontiguousarray(x, dtype=np.float32), -1.0, 1.0)  # a new array


def _finite(x: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(x).all():
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise AudioError(f"{name} holds {bad} NaN or infinite samples")
    return x


def _as_float(samples: np.ndarray, name: str) -> np.ndarray:
    """Any numeric array -> float32, integer types scaled so full scale is 1.0."""
    x = np.asarray(samples)
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype.kind == "i":
        return x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))
    if x.dtype.kind == "u":
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        return (x.astype(np.float32) - half) / half
    raise AudioError(f"{name} has dtype {x.dtype}: expected float or integer samples")
