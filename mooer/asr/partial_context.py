"""Audio embeddings for live partials at a cost that does not grow with the utterance.

A partial every 480 ms that re-encodes its whole utterance so far costs, per second of speech,
time proportional to the utterance's length. Here each partial encodes only a bounded window:
the audio new since the last partial, ``left_ms`` of audio before it (context, its outputs
thrown away) and nothing after; the embeddings of the tokens before the window are the ones
earlier partials made, kept. The SAN-M encoder is full-context, so a token encoded with little
context differs from the whole utterance's: ``bench/bench_partials.py`` measures how much that
changes the partial text; finals still encode the whole utterance.

Windows start on a token boundary (1920 samples, 120 ms): the fbank, LFR and adapter frames
of the window are then those of the whole utterance, shifted by whole tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mooer.asr.frontend import num_frames
from mooer.audio import ADAPTER_DOWNSAMPLE, SAMPLES_PER_TOKEN, TOKEN_MS
from mooer.errors import check_number

Embed = Callable[[Sequence[np.ndarray]], tuple[torch.Tensor, torch.Tensor]]  # SpeechLLM.embed


@dataclass(frozen=True)
class PartialContext:
    """How a live partial encodes its audio.

    ``left_ms``: audio before the new part encoded again as its left context; ``redo_ms``: the
    end of each window, encoded without right context, is encoded again by the next partial
    (its tokens are not kept). Both are rounded down to whole 120 ms tokens.
    """

    left_ms: int = 480
    redo_ms: int = 960

    def __post_init__(self) -> None:
        for name in ("left_ms", "redo_ms"):
            check_number(getattr(self, name), f"PartialContext.{name}", 0, 60_000, integer=True)

    @property
    def left_tokens(self) -> int:
        return self.left_ms // TOKEN_MS

    @property
    def redo_tokens(self) -> int:
        return self.redo_ms // TOKEN_MS


def token_count(num_samples: int) -> int:
    """LLM audio tokens that ``num_samples`` of audio give (as the adapter drops odd frames)."""
    return num_frames(num_samples) // ADAPTER_DOWNSAMPLE


class PartialEmbeds:
    """One utterance's partial embeddings: the tokens kept from earlier partials, per session."""

    def __init__(self, context: PartialContext) -> None:
        self.context = context
        self.reset()

    def reset(self) -> None:
        self.kept = torch.zeros(0)  # (Tk, H) embeddings of the utterance's first Tk tokens
        self.samples_seen = 0  # length of the audio the last partial had
        self.encoded_samples = 0  # audio samples encoded since the reset (the work done)

    def embed(self, embed: Embed, audio: np.ndarray) -> torch.Tensor:
        """(N,) float32 samples of the utterance so far -> its embeddings (T, H).

        ``audio`` must extend the audio of the previous call (the same utterance, grown); a
        shorter one starts again from nothing.
        """
        if audio.size < self.samples_seen:
            self.reset()
        self.samples_seen = audio.size
        kept = len(self.kept)
        start = max(0, kept - self.context.left_tokens)  # the window's first token
        window = audio[start * SAMPLES_PER_TOKEN :]
        embeds, lengths = embed([window])  # (1, Tw, H), (1,)
        self.encoded_samples += window.size
        # the tokens of the whole utterance this audio gives; an embed padding a short window
        # must not add any
        total = min(token_count(audio.size), start + int(lengths[0]))
        new = embeds[0, kept - start : total - start]  # (T - Tk, H)
        out = torch.cat([self.kept.to(new), new]) if kept else new  # (T, H)
        self.kept = out[: max(kept, total - self.context.redo_tokens)]
        return out
