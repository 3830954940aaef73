from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mooer.errors import AudioError, ConfigError
from mooer.tts.backend import (
    EspeakBackend,
    TTSBackend,
    load_backend,
    resample_pcm16,
    split_sentences,
)
from mooer.tts.espeak import SAMPLE_RATE_ESPEAK


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("Hello there! How are you? I am fine.", ["Hello there!", "How are you?", "I am fine."]),
        ("今天星期三。明天下雨！你好吗？好的", ["今天星期三。", "明天下雨！", "你好吗？", "好的"]),
        ("It costs 3.5 dollars. OK", ["It costs 3.5 dollars.", "OK"]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("Wait... what?! No", ["Wait...", "what?!", "No"]),
        ("first line\nsecond line", ["first line", "second line"]),
        ("我说：“好。”然后走了", ["我说：“好。”", "然后走了"]),
        ("mixed 中文。English here.", ["mixed 中文。", "English here."]),
        ("no end punctuation", ["no end punctuation"]),
        ("  ", []),
        ("?!", []),
    ],
)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_espeak_backend_streams_one_chunk_per_sentence():
    backend = EspeakBackend()
    chunks = list(backend.stream("Good morning. What time is it? It is three o'clock."))
    assert len(chunks) == 3
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    # The short greeting is the shortest chunk, the long statement the longest.
    assert len(chunks[0]) < len(chunks[2])
    assert backend.sample_rate == SAMPLE_RATE_ESPEAK


def test_espeak_backend_speaks_mandarin():
    chunks = list(EspeakBackend().stream("今天星期三。明天星期四。", language="zh", voice="f2"))
    assert len(chunks) == 2
    seconds = sum(len(c) for c in chunks) / SAMPLE_RATE_ESPEAK
    assert 1.0 < seconds < 5.0


def test_espeak_backend_rate_is_applied():
    text = "the weather is warm and sunny on tuesday"
    slow = next(EspeakBackend(rate=100).stream(text))
    fast = next(EspeakBackend(rate=300).stream(text))
    assert len(fast) < 0.6 * len(slow)


def test_espeak_backend_is_a_tts_backend():
    backend: TTSBackend = load_backend("espeak", rate=200)
    assert isinstance(backend, EspeakBackend) and backend.rate == 200


def test_bad_requests_fail_when_made_not_when_iterated():
    backend = EspeakBackend()
    with pytest.raises(ConfigError, match="fr"):
        backend.stream("bonjour", language="fr")
    with pytest.raises(ConfigError, match="m42"):
        backend.stream("hello", voice="m42")
    with pytest.raises(ConfigError, match="rate"):
        EspeakBackend(rate=5)


def test_region_tagged_languages_are_accepted():
    assert len(list(EspeakBackend().stream("hello", language="en-GB"))) == 1


def test_resample_pcm16_keeps_duration_and_tone():
    rate = SAMPLE_RATE_ESPEAK
    t = np.arange(rate) / rate  # one second
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    out = resample_pcm16(tone, rate, 24000)
    assert out.dtype == np.int16 and len(out) == 24000
    spectrum = np.abs(np.fft.rfft(out.astype(np.float64)))
    assert np.argmax(spectrum) == 440  # 1 Hz bins over one second
    assert abs(np.abs(out).max() - 0.5 * 32767) < 500


def test_resample_pcm16_clips_instead_of_wrapping():
    square = np.tile(np.array([32767] * 20 + [-32768] * 20, dtype=np.int16), 200)
    out = resample_pcm16(square, 16000, 22050)
    # Ringing overshoots full scale; wrapping would put large negatives next to the top.
    assert out.max() == 32767 and out.min() == -32768
    assert np.abs(np.diff(out.astype(np.int32))).max() < 65535


def test_resample_pcm16_same_rate_is_identity():
    chunk = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    assert np.array_equal(resample_pcm16(chunk, 16000, 16000), chunk)


def test_resample_pcm16_refuses_float_input():
    with pytest.raises(AudioError, match="int16"):
        resample_pcm16(np.zeros(10, dtype=np.float32), 16000, 24000)


def test_unknown_backend_name():
    with pytest.raises(ConfigError, match="festival"):
        load_backend("festival")


def test_bad_backend_options():
    with pytest.raises(ConfigError, match="speed"):
        load_backend("espeak", speed=2)


@pytest.mark.skipif(
    importlib.util.find_spec("cosyvoice") is not None, reason="CosyVoice is installed"
)
def test_missing_cosyvoice_says_how_to_install():
    with pytest.raises(ConfigError, match="CosyVoice.*not installed.*git clone"):
        load_backend("cosyvoice", model_dir="/nonexistent")
