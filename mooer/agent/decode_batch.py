"""The live sessions' greedy decodes batched across clients: the answers asked at the same
moment (partials, mostly) run as one batched token loop on the hf backend
(``greedy_together``: one forward per token for all of them), which on a CPU costs about what
one answer alone costs for a small LLM. See ``mooer.agent.batching`` for when a batch runs.
Each answer equals what it would be alone; beam-search answers (the finals) are computed in
place as before, and other backends batch by themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mooer.agent.batching import Asked, Batch
from mooer.errors import check_number
from mooer.llm.backend import LLMBackend, one_by_one
from mooer.llm.decoding import DecodingOptions
from mooer.llm.generation import Row, greedy_together

if TYPE_CHECKING:
    from mooer.model import SpeechLLM


@dataclass(frozen=True)
class DecodeBatchConfig:
    """Bounds of one batched decode: at most ``max_items`` answers (1: every answer alone)."""

    max_items: int = 16

    def __post_init__(self) -> None:
        check_number(self.max_items, "decode_batch.max_items", low=1, integer=True)


class DecodeBatch(Batch[Row, str]):
    """The greedy answers waiting for the next batched decode, one request per answer."""

    def __init__(self, model: SpeechLLM, config: DecodeBatchConfig) -> None:
        if not isinstance(config, DecodeBatchConfig):
            raise TypeError(f"expected a DecodeBatchConfig, got {type(config).__name__}")
        super().__init__()
        self.model = model
        self.config = config

    def fits(self, asked: Sequence[Asked[Row, str]]) -> bool | None:
        items = sum(len(a.items) for a in asked)
        if items > self.config.max_items:
            return False
        return None if items == self.config.max_items else True

    def compute(self, taken: Sequence[Asked[Row, str]]) -> list[str]:
        rows = [row for asked in taken for row in asked.items]  # one each
        return greedy_together(self.model.llm, self.model.tokenizer, rows)


class BatchedBackend:
    """The model's LLM backend (whichever it holds at the call) as the engine's jobs use it: on
    the hf backend, greedy step-by-step answers wait for the worker's next batched decode
    (``add``); every other answer goes to the backend itself."""

    def __init__(self, model: SpeechLLM, add: Callable[[Row], Future[str]]) -> None:
        self.model = model
        self._add = add

    @property
    def name(self) -> str:
        return self.model.llm_backend.name

    def answers(
        self,
        model: SpeechLLM,
        embeds: Tensor,
        lengths: Tensor,
        prompt: str,
        options: DecodingOptions,
        step_by_step: bool,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[Future[str]]:
        backend: LLMBackend = model.llm_backend
        if backend.name != "hf" or not step_by_step or options.do_sample or options.num_beams != 1:
            return backend.answers(
                model, embeds, lengths, prompt, options, step_by_step, should_stop
            )
        with torch.inference_mode():
            inputs = list(one_by_one(model, embeds, lengths, prompt))  # (1, L_b, H) each
        return [self._add(Row(one, options, should_stop)) for one in inputs]

    def close(self) -> None:
        """Nothing to stop: the model's backend is the model's to close."""
