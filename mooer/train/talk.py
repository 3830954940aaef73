"""Continuous speech for tests and benchmarks: held-out sentences spoken one after another.

A speaker in a lecture or a meeting leaves 100-300 ms between sentences, not the half second a
voice activity detector waits for; a long recording of many sentences is what a file
transcriber meets. ``spoken_talk`` joins held-out template sentences (the demo model never
trained on them) with chosen pauses, in a voice it never heard, and keeps where each sentence
is, so segmentation, transcription and simultaneous translation can be scored per sentence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError, check_number
from mooer.text import language_of
from mooer.train.corpus import english_sentences, is_heldout, mandarin_pairs
from mooer.train.synth import HELDOUT_VOICES, VoiceSpec, spoken, trimmed

LANGUAGES = ("zh", "en")


@dataclass(frozen=True)
class Talk:
    """Sentences spoken in a row: the audio and, per sentence, its texts and samples."""

    audio: np.ndarray  # float32 (N,) at 16 kHz
    sentences: list[tuple[str, str]]  # (what is said, its English: the translation or itself)
    spans: list[tuple[int, int]]  # [start, end) samples of each sentence's sound

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE


def heldout_sentences(n: int, lang: str = "zh", seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct held-out sentences in an order fixed by ``seed``: (Mandarin, English)
    pairs, or for ``lang`` "en" (English, English)."""
    if lang not in LANGUAGES:
        raise ConfigError(f"lang must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    if lang == "zh":
        pairs = [p for p in mandarin_pairs() if is_heldout(p[1])]
    else:
        pairs = [(s, s) for s in english_sentences() if is_heldout(s)]
    if not 0 < n <= len(pairs):
        raise ConfigError(f"n must be in [1, {len(pairs)}] held-out {lang} sentences, got {n!r}")
    random.Random(f"mooer-talk/{seed}" if lang == "zh" else f"mooer-talk/en/{seed}").shuffle(pairs)
    return pairs[:n]


def spoken_talk(
    sentences: list[tuple[str, str]],
    pause_s: float | tuple[float, float],
    voice: VoiceSpec | None = None,
    seed: int = 0,
    lead_s: float = 0.5,
    tail_s: float = 1.0,
) -> Talk:
    """What ``sentences`` say, spoken by ``voice`` (default: a held-out voice of their language)
    with ``pause_s`` of silence between them (a (shortest, longest) pair: drawn for each pause
    with ``seed``), ``lead_s`` before the first and ``tail_s`` after the last."""
    low, high = pause_s if isinstance(pause_s, tuple) else (pause_s, pause_s)
    for name, value in (
        ("pause_s", low),
        ("pause_s", high),
        ("lead_s", lead_s),
        ("tail_s", tail_s),
    ):
        check_number(value, name, 0, 10)
    if low > high:
        raise ConfigError(f"pause_s={pause_s!r}: expected (shortest, longest)")
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = [np.zeros(round(lead_s * SAMPLE_RATE), dtype=np.float32)]
    spans = []
    at = parts[0].size
    for i, (said, _) in enumerate(sentences):
        spec = voice or next(v for v in HELDOUT_VOICES if v.lang == language_of(said))
        # trimmed: the pause is all the silence between sentences
        clip = trimmed(spoken(said, spec, spec.rate, spec.pitch))
        gap = rng.uniform(low, high) if i + 1 < len(sentences) else tail_s
        parts += [clip, np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32)]
        spans.append((at, at + clip.size))
        at += clip.size + parts[-1].size
    return Talk(np.concatenate(parts), list(sentences), spans)


# Three voices no model here trained on, for speaker labelling: a man, a woman and a second man.
MEETING_VOICES = (
    VoiceSpec("cmn", "m7", 170, 50),
    VoiceSpec("cmn", "f4", 180, 50),
    VoiceSpec("cmn", "m8", 160, 40),
)


@dataclass(frozen=True)
class Meeting:
    """Turns of several voices: the audio and, per turn, its speaker (an index into the voices)
    and samples."""

    audio: np.ndarray  # float32 (N,) at 16 kHz
    turns: list[tuple[int, int, int]]  # (speaker, start, end) samples of each turn's sound

    @property
    def duration_s(self) -> float:
        return self.audio.size / SAMPLE_RATE


def spoken_meeting(
    turns: int,
    voices: tuple[VoiceSpec, ...] = MEETING_VOICES,
    pause_s: tuple[float, float] = (0.7, 1.2),
    seed: int = 0,
) -> Meeting:
    """``turns`` short turns (one held-out Mandarin sentence each, about 1.5-3 s) of ``voices``
    in an order drawn with ``seed`` (every voice speaks; the same voice may go on), with pauses
    drawn from ``pause_s`` between them: long enough for a voice activity detector to end each
    turn, so segments and turns match."""
    if not len(voices) <= turns <= 411:
        raise ConfigError(f"turns={turns!r}: expected {len(voices)}..411 (one sentence each)")
    rng = np.random.default_rng(seed)
    order = list(range(len(voices))) + list(rng.integers(0, len(voices), turns - len(voices)))
    rng.shuffle(order)
    sentences = heldout_sentences(turns, "zh", seed)
    parts, spans = [], []
    at = 0
    for speaker, sentence in zip(order, sentences):
        pause = float(rng.uniform(*pause_s))
        turn = spoken_talk([sentence], 0.0, voices[speaker], lead_s=pause, tail_s=0.0)
        start, end = turn.spans[0]
        parts.append(turn.audio)
        spans.append((int(speaker), at + start, at + end))
        at += turn.audio.size
    parts.append(np.zeros(SAMPLE_RATE, dtype=np.float32))  # the last turn ends in silence
    return Meeting(np.concatenate(parts), spans)
