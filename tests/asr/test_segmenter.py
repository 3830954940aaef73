"""The segmenter's length-only cut of audio already taken as one utterance (its voice activity
cut is tested with the VAD, tests/asr/test_vad.py, and through files in tests/test_transcribe.py)."""

from __future__ import annotations

import numpy as np

from mooer.asr.segmenter import cut, split_long
from mooer.asr.vad import BLOCK
from mooer.audio import SAMPLE_RATE
from mooer.train.talk import spoken_talk
from mooer.transcribe import SEGMENTER


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


# Held-out sentences of bench_long's English file (seed 2), the second of which the offline
# segmenter once cut between two words: silero scores the s of "costs" below its off threshold
# for 130 ms, at 17-26 dB below the loudest window, and after 0.68 s of silence the segment's
# 500 ms pad had shrunk its wait to 96 ms. The others follow 150 ms apart, the file's
# shortest pause.
WORD_GAPS = [
    (0.5, "it will be sunny on friday"),
    (0.68, "one box costs twenty yuan"),
    (0.15, "i am sixteen years old"),
    (0.15, "the meeting starts at one in the evening on thursday"),
    (0.15, "one box costs twenty yuan"),
]


def test_a_file_is_cut_at_its_sentence_gaps_and_never_between_two_words():
    """``mooer transcribe``'s segmenter gives one segment per sentence, each ending in the
    pause after it and starting no more than ``quiet_lead_ms`` before it (not the whole 500 ms
    pad). (Whether the live rule, any window silero scores as silence being a pause, cuts
    this file after "box" depends on espeak-ng's small variations with its earlier calls:
    alone it does, after the other tests of tests/asr it did not.)"""
    talks = [spoken_talk([(said, said)], 0.0, lead_s=lead, tail_s=0.0) for lead, said in WORD_GAPS]
    audio = np.concatenate([talk.audio for talk in talks] + [np.zeros(SAMPLE_RATE, np.float32)])
    spans, at = [], 0
    for talk in talks:
        ((a, b),) = talk.spans
        spans.append((at + a, at + b))
        at += talk.audio.size
    segments = cut(audio, SEGMENTER)
    assert len(segments) == len(spans)
    after = [a for a, _ in spans[1:]] + [audio.size]
    lead = int(SEGMENTER.quiet_lead_ms * SAMPLE_RATE / 1000) + BLOCK  # silence kept before
    for segment, (start, end), next_start in zip(segments, spans, after):
        assert start - lead <= segment.start < start and end < segment.end <= next_start
