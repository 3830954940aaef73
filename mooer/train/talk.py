"""Continuous speech for tests and benchmarks: held-out sentences spoken one after another.

A speaker in a lecture leaves 100-300 ms between sentences, not the half second a voice
activity detector waits for; ``spoken_talk`` joins held-out Mandarin template sentences (the
demo model never trained on them) with a chosen pause, in a voice it never heard, and keeps
where each sentence is, so segmentation and simultaneous translation can be scored per sentence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from mooer.audio import SAMPLE_RATE, resample
from mooer.errors import ConfigError
from mooer.train.corpus import is_heldout, mandarin_pairs
from mooer.train.synth import HELDOUT_VOICES, VoiceSpec
from mooer.tts import espeak

AUDIBLE = 1e-3  # sample magnitude (-60 dBFS) above which a clip's sound begins and ends
TALK_VOICE = next(v for v in HELDOUT_VOICES if v.lang == "zh")  # cmn+m7, never trained


@dataclass(frozen=True)
class Talk:
    """Sentences spoken in a row: the audio and, per sentence, its texts and samples."""

    audio: np.ndarray  # float32 (N,) at 16 kHz
    sentences: list[tuple[str, str]]  # (Mandarin, English reference)
    spans: list[tuple[int, int]]  # [start, end) samples of each sentence's sound

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE


def heldout_sentences(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct held-out (Mandarin, English) pairs in an order fixed by ``seed``."""
    pairs = [p for p in mandarin_pairs() if is_heldout(p[1])]
    if not 0 < n <= len(pairs):
        raise ConfigError(f"n must be in [1, {len(pairs)}] held-out sentences, got {n!r}")
    random.Random(f"mooer-talk/{seed}").shuffle(pairs)
    return pairs[:n]


def spoken_talk(
    sentences: list[tuple[str, str]],
    pause_s: float,
    voice: VoiceSpec = TALK_VOICE,
    lead_s: float = 0.5,
    tail_s: float = 1.0,
) -> Talk:
    """The Mandarin of ``sentences`` spoken by ``voice``, ``pause_s`` of silence between them,
    ``lead_s`` before the first and ``tail_s`` after the last."""
    for name, value in (("pause_s", pause_s), ("lead_s", lead_s), ("tail_s", tail_s)):
        if not isinstance(value, (int, float)) or not 0 <= value <= 10:
            raise ConfigError(f"{name} must be a number of seconds in [0, 10], got {value!r}")
    parts: list[np.ndarray] = [np.zeros(round(lead_s * SAMPLE_RATE), dtype=np.float32)]
    spans = []
    at = parts[0].size
    for i, (zh, _) in enumerate(sentences):
        pcm = espeak.synthesize(zh, voice.voice, voice.variant, voice.rate, voice.pitch)
        clip = resample(pcm.astype(np.float32) / 32768.0, espeak.SAMPLE_RATE_ESPEAK, SAMPLE_RATE)
        sound = np.flatnonzero(np.abs(clip) > AUDIBLE)
        clip = clip[sound[0] : sound[-1] + 1]  # the pause is all the silence between sentences
        gap = pause_s if i + 1 < len(sentences) else tail_s
        parts += [clip, np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32)]
        spans.append((at, at + clip.size))
        at += clip.size + parts[-1].size
    return Talk(np.concatenate(parts), list(sentences), spans)
