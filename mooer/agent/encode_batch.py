"""The speech front end batched across clients: the utterances queued at the same moment go
through the encoder and adapter as one padded forward (see ``mooer.agent.batching`` for when it
runs). Padding does not change an item's embeddings (the encoder masks it, the front end and
adapter work per item), so a batched utterance decodes as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from mooer.agent.batching import Asked, Batch
from mooer.audio import SAMPLE_RATE
from mooer.errors import check_number

if TYPE_CHECKING:
    from mooer.model import SpeechLLM

Embeddings = tuple[Tensor, Tensor]  # (B, Ta, H), (B,)


@dataclass(frozen=True)
class EncodeBatchConfig:
    """Bounds of one batched forward: at most ``max_items`` waveforms and ``max_audio_s``
    seconds of padded audio (items x the longest: what the encoder computes). One client's
    waveforms are never split; a request beyond the bounds alone runs alone."""

    max_items: int = 16
    max_audio_s: float = 240.0

    def __post_init__(self) -> None:
        check_number(self.max_items, "encode_batch.max_items", low=1, integer=True)
        check_number(self.max_audio_s, "encode_batch.max_audio_s", low=1.0)


def longest_s(asked: Asked[np.ndarray, Embeddings]) -> float:
    """The longest of a request's waveforms, in seconds."""
    return max(len(w) for w in asked.items) / SAMPLE_RATE


class EncodeBatch(Batch[np.ndarray, Embeddings]):
    """The waveforms waiting for the next encoder forward."""

    def __init__(self, model: SpeechLLM, config: EncodeBatchConfig) -> None:
        if not isinstance(config, EncodeBatchConfig):
            raise TypeError(f"expected an EncodeBatchConfig, got {type(config).__name__}")
        super().__init__()
        self.model = model
        self.config = config

    def fits(self, asked: Sequence[Asked[np.ndarray, Embeddings]]) -> bool | None:
        items = sum(len(a.items) for a in asked)
        padded_s = items * max(longest_s(a) for a in asked)
        limits = (self.config.max_items, self.config.max_audio_s)
        if items > limits[0] or padded_s > limits[1]:
            return False
        return None if items == limits[0] else True

    @torch.inference_mode()
    def compute(self, taken: Sequence[Asked[np.ndarray, Embeddings]]) -> list[Embeddings]:
        embeds, lengths = self.model.embed([w for a in taken for w in a.items])  # (B, Ta, H)
        results, start = [], 0
        for asked in taken:
            end = start + len(asked.items)
            rows = lengths[start:end]  # (P,)
            longest = int(rows.max())
            results.append((embeds[start:end, :longest], rows))  # (P, Ta_max, H)
            start = end
        return results
