"""Continuous speech: held-out template sentences spoken one after another with short pauses.

A long recording of many sentences is what a file transcriber meets (a lecture, a meeting)
and what the segmenter must cut without losing a sentence; the demo model never heard one in
training. The sentences are held-out ones (never trained on), the voice a held-out voice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.train.corpus import Utterance, build_corpus
from mooer.train.synth import HELDOUT_VOICES, VoiceSpec, _speak

PAUSES_MS = (150, 700)  # the shortest and longest pause between two sentences


def heldout_sentences(n: int, lang: str = "en", seed: int = 7) -> list[Utterance]:
    """``n`` distinct held-out asr sentences in ``lang`` ("en" or "zh"), the same for a seed."""
    drawn: dict[str, Utterance] = {}
    for u in build_corpus(0, 8 * n, seed=seed)[1]:
        if u.task == "asr" and u.lang == lang:
            drawn.setdefault(u.text, u)
    if len(drawn) < n:
        raise ConfigError(f"only {len(drawn)} held-out {lang} sentences drawn, {n} asked for")
    return list(drawn.values())[:n]


def continuous_speech(
    sentences: Sequence[Utterance],
    voice: VoiceSpec | None = None,
    pauses_ms: tuple[int, int] = PAUSES_MS,
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The sentences spoken by ``voice`` (default: the first held-out voice of their language),
    each followed by a pause drawn uniformly from ``pauses_ms`` (the last by the longest)
    -> ((N,) float32 16 kHz, each sentence's [start, end) in samples)."""
    low, high = pauses_ms
    if not 0 <= low <= high:
        raise ConfigError(f"pauses_ms={pauses_ms!r}: expected (shortest, longest) >= 0")
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    at = 0
    for i, sentence in enumerate(sentences):
        spec = voice or next(v for v in HELDOUT_VOICES if v.lang == sentence.lang)
        audio, _ = _speak(sentence, [spec], seed, vary=False)
        last = i == len(sentences) - 1
        pause = int((high if last else rng.uniform(low, high)) * SAMPLE_RATE / 1000)
        pieces += [audio, np.zeros(pause, dtype=np.float32)]
        spans.append((at, at + audio.size))
        at += audio.size + pause
    return np.concatenate(pieces), spans
