"""The segmenter's length-only cut of audio already taken as one utterance (its voice activity
cut is tested with the VAD, tests/asr/test_vad.py, and through files in tests/test_transcribe.py)."""

from __future__ import annotations

import numpy as np

from mooer.asr.segmenter import split_long
from mooer.audio import SAMPLE_RATE


def test_split_long_cuts_at_the_quietest_point():
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.1, 70 * SAMPLE_RATE).astype(np.float32)
    samples[25 * SAMPLE_RATE : 25 * SAMPLE_RATE + 1600] = 0.0  # a 100 ms silence at 25 s
    ranges = split_long(samples)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(samples)
    assert all(a == b for (_, a), (b, _) in zip(ranges, ranges[1:]))  # contiguous
    assert all(b - a <= 30 * SAMPLE_RATE for a, b in ranges)
    assert abs(ranges[0][1] - int(25.05 * SAMPLE_RATE)) <= SAMPLE_RATE // 10
    assert split_long(samples[: 10 * SAMPLE_RATE]) == [(0, 10 * SAMPLE_RATE)]
