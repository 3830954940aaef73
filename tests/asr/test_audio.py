from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from mooer.audio import (
    FEATURE_DIM,
    FRAME_MS,
    SAMPLE_RATE,
    SAMPLES_PER_TOKEN,
    TOKEN_MS,
    load_audio,
    resample,
    to_mono_16k,
)
from mooer.errors import AudioError


def tone(seconds: float, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_time_units():
    assert (FEATURE_DIM, FRAME_MS, TOKEN_MS, SAMPLES_PER_TOKEN) == (560, 60, 120, 1920)


def test_stereo_44k_file_is_averaged_and_resampled(tmp_path):
    left, right = tone(5.0, 44100, 440.0), tone(5.0, 44100, 1000.0, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    x = load_audio(path)
    assert x.dtype == np.float32 and x.shape == (5 * SAMPLE_RATE,)
    expected = to_mono_16k((left + right) / 2, 44100)
    assert np.abs(x - expected).max() < 1e-3  # 16-bit quantisation only
    spectrum = np.abs(np.fft.rfft(x))
    peaks = sorted(np.argsort(spectrum)[-2:] * SAMPLE_RATE / len(x))
    assert peaks == pytest.approx([440.0, 1000.0], abs=1.0)


@pytest.mark.parametrize(
    ("fmt", "subtype"), [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("OGG", "VORBIS"), ("MP3", None)]
)
def test_formats_from_path_bytes_and_stream(tmp_path, fmt, subtype):
    x = tone(1.0, 22050)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, 22050, format=fmt, subtype=subtype)
    from_path = load_audio(str(path))
    assert abs(len(from_path) - SAMPLE_RATE) < 0.02 * SAMPLE_RATE  # mp3 adds encoder padding
    assert 0.4 < np.abs(from_path).max() <= 0.6
    data = path.read_bytes()
    np.testing.assert_array_equal(load_audio(data), from_path)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_audio(f), from_path)


def test_unseekable_stream_is_buffered(tmp_path):
    buffer = io.BytesIO()
    sf.write(buffer, tone(0.5, SAMPLE_RATE), SAMPLE_RATE, format="WAV")

    class Pipe:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, n: int = -1) -> bytes:
            return self.data

        def seekable(self) -> bool:
            return False

    assert load_audio(Pipe(buffer.getvalue())).shape == (SAMPLE_RATE // 2,)


def test_16k_mono_float_passes_through_unchanged():
    x = tone(1.0, SAMPLE_RATE)
    y = to_mono_16k(x, SAMPLE_RATE)
    np.testing.assert_array_equal(x, y)
    y[0] = 9.0
    assert x[0] != 9.0  # the caller's array is not aliased


def test_int16_arrays_are_scaled():
    x = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    np.testing.assert_allclose(to_mono_16k(x, SAMPLE_RATE), [0.0, 0.5, -1.0, 32767 / 32768])


def test_out_of_range_floats_are_clipped():
    assert np.abs(to_mono_16k(np.array([2.0, -3.0, 0.1]), SAMPLE_RATE)).max() == 1.0


def test_resample_length():
    assert len(resample(tone(2.0, 8000), 8000, SAMPLE_RATE)) == 2 * SAMPLE_RATE
    assert len(resample(tone(2.0, 48000), 48000, SAMPLE_RATE)) == 2 * SAMPLE_RATE


def test_silence_is_valid_audio(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(SAMPLE_RATE, np.int16), SAMPLE_RATE)
    assert np.count_nonzero(load_audio(path)) == 0


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found.*nope.wav"):
        load_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize(
    "content", [np.random.default_rng(0).bytes(4000), b"hello, this is not audio\n" * 40]
)
def test_not_audio(tmp_path, content):
    path = tmp_path / "fake.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="fake.wav"):
        load_audio(path)
    with pytest.raises(AudioError, match="bytes"):
        load_audio(content)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="empty.wav has no samples"):
        load_audio(path)


def test_nan_samples(tmp_path):
    x = tone(0.5, SAMPLE_RATE)
    x[100:103] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav holds 3 NaN"):
        load_audio(path)
    with pytest.raises(AudioError, match="NaN"):
        to_mono_16k(x, SAMPLE_RATE)


@pytest.mark.parametrize(
    ("samples", "rate", "message"),
    [
        (np.zeros(0, np.float32), SAMPLE_RATE, "no samples"),
        (np.array([np.inf, 0.0]), SAMPLE_RATE, "infinite"),
        (np.zeros((2, 16000), np.float32), SAMPLE_RATE, "transpose"),
        (np.zeros((2, 3, 4), np.float32), SAMPLE_RATE, "shape"),
        (np.array(["a", "b"]), SAMPLE_RATE, "dtype"),
        (np.zeros(100, np.float32), 0, "sample rate"),
        (np.zeros(100, np.float32), 16000.5, "sample rate"),
    ],
)
def test_bad_arrays(samples, rate, message):
    with pytest.raises(AudioError, match=message):
        to_mono_16k(samples, rate)
