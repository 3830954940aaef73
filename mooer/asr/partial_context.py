"""Audio embeddings for live partials at a cost that does not grow with the utterance.

A partial every 480 ms that re-encodes its whole utterance so far costs, per second of speech,
time proportional to the utterance's length. Here each partial encodes only a bounded window:
the audio new since the last partial, ``left_ms`` of audio before it (context, its outputs
thrown away) and nothing after; the embeddings of the tokens before the window are the ones
earlier partials made, kept. The SAN-M encoder is full-context, so a token encoded with little
context differs from the whole utterance's: ``bench/bench_partials.py`` measures how much that
changes the partial text; finals still encode the whole utterance. A long utterance's partials
come further apart (``long_after_ms``, ``long_interval_ms``), so that the old audio each window
encodes again costs no more per second of speech than a short utterance's partials do.

Windows start on a token boundary (1920 samples, 120 ms): the fbank, LFR and adapter frames
of the window are then those of the whole utterance, shifted by whole tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mooer.asr.frontend import num_frames
from mooer.audio import ADAPTER_DOWNSAMPLE, SAMPLES_PER_TOKEN, TOKEN_MS, ms_to_samples
from mooer.errors import check_number

Embed = Callable[[Sequence[np.ndarray]], tuple[torch.Tensor, torch.Tensor]]  # SpeechLLM.embed


@dataclass(frozen=True)
class PartialContext:
    """How a live partial encodes its audio, and how often a long utterance gets one.

    ``left_ms``: audio before the new part encoded again as its left context; ``redo_ms``: the
    end of each window, encoded without right context, is encoded again by the next partial
    (its tokens are not kept). Both are rounded down to whole 120 ms tokens. Once an utterance
    is ``long_after_ms`` long, its partials come at least ``long_interval_ms`` apart: each window
    encodes ``left + redo`` ms of old audio again, and over fewer, longer steps that costs no
    more encoder time per second of speech than a short utterance's partials do
    (``long_interval_ms`` 0: the session's interval throughout).
    """

    left_ms: int = 480
    redo_ms: int = 960
    long_after_ms: int = 2880
    long_interval_ms: int = 1440

    def __post_init__(self) -> None:
        for name in ("left_ms", "redo_ms", "long_after_ms", "long_interval_ms"):
            check_number(getattr(self, name), f"PartialContext.{name}", 0, 60_000, integer=True)

    @property
    def left_tokens(self) -> int:
        return self.left_ms // TOKEN_MS

    @property
    def redo_tokens(self) -> int:
        return self.redo_ms // TOKEN_MS

    def interval_after(self, length: int, interval: int) -> int:
        """Samples from a partial of an utterance ``length`` samples long to its next one;
        ``interval``: the session's partial interval in samples."""
        if length < ms_to_samples(self.long_after_ms):
            return interval
        return max(interval, ms_to_samples(self.long_interval_ms))


def token_count(num_samples: int) -> int:
    """LLM audio tokens that ``num_samples`` of audio give (as the adapter drops odd frames)."""
    return num_frames(num_samples) // ADAPTER_DOWNSAMPLE


class PartialEmbeds:
    """One utterance's partial embeddings: the tokens kept from earlier partials, per session.

    A partial takes two calls around the encoder: ``window`` gives the audio to encode, ``join``
    takes its embeddings (so that a live session's windows go through the engine's encoder
    batch); ``embed`` does both with an encoder called directly.
    """

    def __init__(self, context: PartialContext) -> None:
        self.context = context
        self.reset()

    def reset(self) -> None:
        self.kept = torch.zeros(0)  # (Tk, H) embeddings of the utterance's first Tk tokens
        self.samples_seen = 0  # length of the audio the last partial had
        self.encoded_samples = 0  # audio samples encoded since the reset (the work done)

    def _start(self) -> int:
        """The next window's first token."""
        return max(0, len(self.kept) - self.context.left_tokens)

    def window(self, audio: np.ndarray) -> np.ndarray:
        """(N,) float32 samples of the utterance so far -> the part of them to encode (W,).

        ``audio`` must extend the audio of the previous partial (the same utterance, grown); a
        shorter one starts again from nothing.
        """
        if audio.size < self.samples_seen:
            self.reset()
        return audio[self._start() * SAMPLES_PER_TOKEN :]

    def join(self, num_samples: int, embeds: torch.Tensor, length: int) -> torch.Tensor:
        """The embeddings (T, H) of the utterance's first ``num_samples``, from those of its
        ``window`` (Tw, H), ``length`` of them valid."""
        kept, start = len(self.kept), self._start()
        self.samples_seen = num_samples
        self.encoded_samples += num_samples - start * SAMPLES_PER_TOKEN
        # the tokens of the whole utterance this audio gives; an embed padding a short window
        # must not add any
        total = min(token_count(num_samples), start + length)
        new = embeds[kept - start : total - start]  # (T - Tk, H)
        out = torch.cat([self.kept.to(new), new]) if kept else new  # (T, H)
        self.kept = out[: max(kept, total - self.context.redo_tokens)]
        return out

    def embed(self, embed: Embed, audio: np.ndarray) -> torch.Tensor:
        """(N,) float32 samples of the utterance so far -> its embeddings (T, H)."""
        embeds, lengths = embed([self.window(audio)])  # (1, Tw, H), (1,)
        return self.join(audio.size, embeds[0], int(lengths[0]))
