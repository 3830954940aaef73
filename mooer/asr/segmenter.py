"""Recorded audio cut into utterances: the one segmenter of files, uploads and FunASR files.

A recording is cut the way a live session cuts its stream, by the same ``StreamingVad``: voice
activity first (silence is dropped, so all-silent audio gives no utterance at all), then the
length limit (``VadConfig.max_segment_s``; longer speech is cut at its best pause in the last
``cut_search_s``). Since the detector's results do not depend on how its input is chunked, a
file cut here, the same file uploaded, and the same audio streamed to a live session give the
same utterances, with the same sample offsets.

Audio already cut into one utterance (a manual turn, a question spoken to ``mooer speak``)
is only cut by length (``split_long``): the model reads at most ``MAX_SEGMENT_S`` at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from mooer.asr.vad import SpeechEnded, StreamingVad, VadConfig, VadModel
from mooer.audio import SAMPLE_RATE

MAX_SEGMENT_S = 30.0  # an utterance given whole longer than this is cut...
MIN_CUT_S = 20.0  # ... at the quietest 100 ms between 20 s and 30 s
_WINDOW = SAMPLE_RATE // 10  # 100 ms energy window


def cut_blocks(
    blocks: Iterable[np.ndarray], config: VadConfig, model: VadModel | None = None
) -> Iterator[list[SpeechEnded]]:
    """For each (n,) float32 16 kHz block of a recording in turn, the utterances it ended (most
    often none), then those the end of the recording ends. One item per block lets a caller
    do other work between blocks; the recording is never held whole."""
    vad = StreamingVad(config, model)
    for block in blocks:
        yield _ended(vad.feed(block))
    yield _ended(vad.flush())


def cut(samples: np.ndarray, config: VadConfig, model: VadModel | None = None) -> list[SpeechEnded]:
    """The utterances of a whole recording, (N,) float32 16 kHz: ``cut_blocks`` in one go."""
    return [u for ended in cut_blocks([samples], config, model) for u in ended]


def split_long(samples: np.ndarray, max_s: float = MAX_SEGMENT_S) -> list[tuple[int, int]]:
    """Sample ranges covering one utterance's (N,) ``samples``, each at most ``max_s`` long,
    cut where it is quietest: no voice activity, only the length limit."""
    max_len = int(max_s * SAMPLE_RATE)
    min_len = int(min(MIN_CUT_S, max_s * 2 / 3) * SAMPLE_RATE)
    ranges, start, n = [], 0, len(samples)
    while n - start > max_len:
        window = samples[start + min_len : start + max_len]
        frames = len(window) // _WINDOW
        energy = (window[: frames * _WINDOW].reshape(frames, _WINDOW) ** 2).sum(axis=1)  # (F,)
        cut = start + min_len + int(np.argmin(energy)) * _WINDOW + _WINDOW // 2
        ranges.append((start, cut))
        start = cut
    ranges.append((start, n))
    return ranges


def _ended(events: list) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]
