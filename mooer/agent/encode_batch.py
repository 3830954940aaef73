"""The speech front end batched across clients: the utterances queued at the same moment go
through the encoder and adapter as one padded forward.

A job on the engine's worker that needs audio encoded (a session's partial or final, an
upload's utterance) adds its waveforms here and is parked until its embeddings are ready. The
worker runs the batch once every client that was waiting for a turn when the batch opened has
had its step (their utterances join it: at most one turn of the round later than alone), at
once when no other client is ready, and as soon as it reaches the bounds of
``EncodeBatchConfig``. Padding does not change an item's embeddings (the encoder masks it, the
front end and adapter work per item), so a batched utterance decodes as it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

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


@dataclass(eq=False)
class Asked:
    """One client's waveforms and the future of their embeddings."""

    waves: list[np.ndarray]
    future: Future[Embeddings]

    @property
    def longest_s(self) -> float:
        return max(len(w) for w in self.waves) / SAMPLE_RATE


class EncodeBatch:
    """The waveforms waiting for the next forward. ``add``, ``due`` and ``take`` run under the
    engine's lock; ``run`` on its worker, outside the lock."""

    def __init__(self, model: SpeechLLM, config: EncodeBatchConfig) -> None:
        if not isinstance(config, EncodeBatchConfig):
            raise TypeError(f"expected an EncodeBatchConfig, got {type(config).__name__}")
        self.model = model
        self.config = config
        self._asked: list[Asked] = []
        self._due_at = 0  # the engine's step count from which the open batch runs

    @property
    def pending(self) -> bool:
        return bool(self._asked)

    def add(self, waves: Sequence[np.ndarray], step: int, waiting: int) -> Future[Embeddings]:
        """Queue ``waves`` for the next forward; ``step``: the steps the engine has begun,
        ``waiting``: the clients waiting for a turn (a new batch runs after their steps)."""
        if not waves:
            raise ValueError("nothing to encode")
        if not self._asked:
            self._due_at = step + waiting
        asked = Asked(list(waves), Future())
        self._asked.append(asked)
        return asked.future

    def due(self, step: int, idle: bool) -> bool:
        """Whether the worker should run the batch now; ``idle``: no client is ready."""
        if not self._asked:
            return False
        return idle or step >= self._due_at or self._fits(self._asked) is not True

    def _fits(self, asked: Sequence[Asked]) -> bool | None:
        """True within the bounds, None exactly full, False beyond them."""
        items = sum(len(a.waves) for a in asked)
        padded_s = items * max(a.longest_s for a in asked)
        limits = (self.config.max_items, self.config.max_audio_s)
        if items > limits[0] or padded_s > limits[1]:
            return False
        return None if items == limits[0] else True

    def take(self) -> list[Asked]:
        """The requests of the next forward, oldest first and within the bounds (cancelled ones
        are dropped); the rest stay for the forward after."""
        taken: list[Asked] = []
        while self._asked:
            asked = self._asked[0]
            if taken and self._fits([*taken, asked]) is False:
                break
            self._asked.pop(0)
            if asked.future.set_running_or_notify_cancel():  # False: its job was dropped
                taken.append(asked)
        return taken

    @torch.inference_mode()
    def run(self, taken: Sequence[Asked]) -> int:
        """Encode ``taken`` as one padded batch and hand each its rows; the batch's item count.

        If the batch fails, each request is encoded alone, so that only a bad one fails."""
        if not taken:
            return 0
        try:
            embeds, lengths = self.model.embed([w for a in taken for w in a.waves])  # (B, Ta, H)
        except Exception as exc:
            if len(taken) == 1:
                taken[0].future.set_exception(exc)
                return 0
            return max(self.run([asked]) for asked in taken)
        start = 0
        for asked in taken:
            end = start + len(asked.waves)
            rows = lengths[start:end]  # (P,)
            longest = int(rows.max())
            asked.future.set_result((embeds[start:end, :longest], rows))  # (P, Ta_max, H)
            start = end
        return start
