"""Recorded audio cut into utterances: the one segmenter of files, uploads and FunASR files.

A recording is cut the way a live session cuts its stream, by the same ``StreamingVad``: voice
activity first (silence is dropped, so all-silent audio gives no utterance at all), then the
length limit (``VadConfig.max_segment_s``; longer speech is cut at its best pause in the last
``cut_search_s``). Since the detector's results do not depend on how its input is chunked, a
file cut here, the same file uploaded, and the same audio streamed to a live session give the
same utterances, with the same sample offsets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from mooer.asr.vad import SpeechEnded, StreamingVad, VadConfig, VadModel


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


def _ended(events: list) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]
