from __future__ import annotations

import base64
import warnings

import numpy as np
import pytest
import soxr

from mooer.errors import AudioError
from mooer.server.pcm import G711_TABLES, WireDecoder, WireFormat, encode_pcm16


def _pcm16(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.integers(-20000, 20000, n, dtype=np.int16).astype("<i2").tobytes()


def test_g711_tables_match_the_standard_decoder():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    every_byte = bytes(range(256))
    for encoding, decode in (("pcmu", audioop.ulaw2lin), ("pcma", audioop.alaw2lin)):
        expected = np.frombuffer(decode(every_byte, 2), dtype="<i2") / 32768.0
        np.testing.assert_array_equal(G711_TABLES[encoding], expected.astype(np.float32))


def test_chunked_decoding_equals_one_shot_resampling():
    data = _pcm16(24000)  # 1 s at 24 kHz
    decoder = WireDecoder(WireFormat("pcm16", 24000))
    cuts = [0, 1, 7, 480, 481, 9999, 30001, len(data)]  # odd cuts split samples in two
    pieces = [decoder.decode(data[a:b]) for a, b in zip(cuts, cuts[1:])]
    pieces.append(decoder.flush())
    streamed = np.concatenate(pieces)
    whole = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    expected = soxr.resample(whole, 24000, 16000, "HQ")
    assert streamed.shape == (16000,)
    np.testing.assert_allclose(streamed, expected, atol=1e-6)


def test_16k_passes_through_exactly_and_flush_restarts():
    data = _pcm16(1600)
    decoder = WireDecoder(WireFormat("pcm16", 16000))
    out = decoder.decode(data[:3])
    assert out.size == 1  # the 4th byte is carried to the next call
    out = np.concatenate([out, decoder.decode(data[3:])])
    np.testing.assert_array_equal(out, np.frombuffer(data, "<i2") / np.float32(32768.0))
    decoder.decode(b"\x01")
    assert decoder.flush().size == 0
    assert decoder.decode(b"\x00\x40").tolist() == [0.5]  # the stray byte was dropped


def test_g711_stream_is_resampled_from_8k():
    decoder = WireDecoder(WireFormat("pcmu", 8000))
    out = np.concatenate([decoder.decode(bytes([0xFF]) * 4000), decoder.flush()])
    assert out.shape == (8000,) and np.abs(out).max() < 1e-6  # 0xFF is mu-law silence


def test_base64_errors_name_the_problem():
    decoder = WireDecoder(WireFormat("pcm16", 16000))
    assert decoder.decode_base64(base64.b64encode(b"\x00\x40").decode()).tolist() == [0.5]
    with pytest.raises(AudioError, match="not valid base64"):
        decoder.decode_base64("abc$")
    with pytest.raises(AudioError, match="base64 string, got int"):
        decoder.decode_base64(5)


@pytest.mark.parametrize(
    ("encoding", "rate", "match"),
    [
        ("pcm16", 7999, r"sample rate=7999: expected an integer in 8000\.\.192000"),
        ("pcm16", True, "sample rate=True"),
        ("pcmu", 16000, "8000 Hz"),
        ("opus", 48000, "not supported"),
    ],
)
def test_bad_formats_are_refused(encoding, rate, match):
    with pytest.raises(AudioError, match=match):
        WireFormat(encoding, rate)


def test_encode_pcm16_round_trips_and_clips():
    x = np.array([0.0, 0.25, -0.5, 2.0, -2.0], dtype=np.float32)
    back = WireDecoder(WireFormat("pcm16", 16000)).decode(encode_pcm16(x))
    np.testing.assert_allclose(back, np.clip(x, -1, 1), atol=1 / 16384)
