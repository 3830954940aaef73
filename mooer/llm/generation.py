"""Token-by-token generation after a KV cache: the loop that partials, chat and speech share.

``transformers``' ``generate()`` cannot pause between tokens or stop at once; a live session needs
both (other sessions run between tokens, a barge-in stops the answer), and on a CPU a step of
this loop costs far less than one of ``generate()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from mooer.errors import ConfigError
from mooer.llm.biasing import HotwordBias
from mooer.llm.decoding import DecodingOptions, EosBias, token_id
from mooer.llm.prompts import IM_END


@functools.lru_cache(maxsize=8)
def turn_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of ``<|im_end|>``, looked up once per tokenizer (``token_id`` reads the whole
    vocabulary: about 0.1 s for Qwen's)."""
    return token_id(tokenizer, IM_END)


def require_single_beam(options: DecodingOptions) -> None:
    if options.num_beams != 1:
        raise ConfigError(
            f"token-by-token generation needs num_beams 1, got num_beams={options.num_beams}"
        )


def embed_ids(llm: PreTrainedModel, ids: list[int]) -> Tensor:
    """Token ids -> their input embeddings (1, N, H)."""
    embed = llm.get_input_embeddings()
    return embed(torch.tensor([ids], device=embed.weight.device))


def forward_cached(llm: PreTrainedModel, cache: DynamicCache, inputs_embeds: Tensor) -> Tensor:
    """Run (1, N, H) after the tokens ``cache`` holds, extending it; logits (V,) of the last."""
    start = cache.get_seq_length()
    positions = torch.arange(start, start + inputs_embeds.shape[1], device=inputs_embeds.device)
    out = llm(
        inputs_embeds=inputs_embeds,
        position_ids=positions[None],  # (1, N)
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[0, -1]  # (V,)


class Generation:
    """Tokens generated one LLM step at a time after what ``cache`` holds (default: nothing).

    Each ``next()`` runs one step and gives ``(token id, text delta)``: the first runs
    ``inputs_embeds`` (1, N, H), each later one the previous token. It ends at ``<|im_end|>``,
    after ``max_new_tokens`` or at ``stop()``. Unlike ``generate()`` it can be paused between
    tokens and stopped at once, and it costs far less per token on a CPU.
    """

    def __init__(
        self,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        inputs_embeds: Tensor,
        options: DecodingOptions,
        cache: DynamicCache | None = None,
    ) -> None:
        require_single_beam(options)
        self.llm = llm
        self.options = options
        self.cache = cache if cache is not None else DynamicCache(config=llm.config)
        self.ids: list[int] = []
        self.ended = False
        self.interrupted = False  # ended by stop()
        self._eos = turn_end_id(tokenizer)
        self._pending = inputs_embeds  # (1, N, H) not yet run
        self._choose = TokenChooser(options, self._eos, tokenizer)
        self._text = TextStream(tokenizer)

    @property
    def text(self) -> str:
        """The answer so far: the concatenation of the deltas given."""
        return self._text.text

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return self

    @torch.inference_mode()
    def __next__(self) -> tuple[int, str]:
        if self.ended:
            raise StopIteration
        if len(self.ids) >= self.options.max_new_tokens:
            self._end(interrupted=False)
            raise StopIteration
        logits = forward_cached(self.llm, self.cache, self._pending)  # (V,)
        token = self._choose(logits, self.ids)
        if token == self._eos:
            self._end(interrupted=False)
            raise StopIteration
        self.ids.append(token)
        self._pending = embed_ids(self.llm, [token])  # (1, 1, H)
        return token, self._text.push(token)

    def stop(self) -> None:
        """End now (barge-in); a no-op once ended."""
        if not self.ended:
            self._end(interrupted=True)

    def _end(self, interrupted: bool) -> None:
        self.ended, self.interrupted = True, interrupted


class TokenChooser:
    """Picks the next token from the LLM's scores as ``DecodingOptions`` say (greedy or sampled).

    ``tokenizer`` spells the tokens for ``options.hotwords`` (needed only with hotwords).
    """

    def __init__(
        self,
        options: DecodingOptions,
        eos_id: int,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        self.sample = options.do_sample
        self.processors = LogitsProcessorList()
        if options.repetition_penalty != 1.0:
            self.processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
        if options.eos_bias:
            self.processors.append(EosBias(eos_id, options.eos_bias))
        if options.hotwords is not None:
            if tokenizer is None:
                raise ConfigError("decoding with hotwords needs the tokenizer")
            self.processors.append(HotwordBias(tokenizer, options.hotwords))
        if options.do_sample and options.temperature != 1.0:
            self.processors.append(TemperatureLogitsWarper(options.temperature))
        if options.do_sample and options.top_p < 1.0:
            self.processors.append(TopPLogitsWarper(options.top_p))

    def __call__(self, logits: Tensor, generated: list[int]) -> int:
        """logits (V,), the answer's tokens so far -> the next token id."""
        previous = torch.tensor([generated], dtype=torch.long, device=logits.device)  # (1, n)
        scores = self.processors(previous, logits.float()[None])  # (1, V)
        if self.sample:
            return int(torch.multinomial(scores.softmax(-1), 1)[0, 0])
        return int(scores[0].argmax())


class TextStream:
    """Token ids -> text deltas that never need taking back; they concatenate to ``text``.

    Text is held back while it ends in an incomplete UTF-8 character (a byte-level token can
    split one) or in whitespace (the answer is stripped); leading whitespace is dropped.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # given out so far

    def push(self, token: int) -> str:
        """The text that ``token`` adds (often "", while a character or word is incomplete)."""
        self.ids.append(token)
        decoded = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        decoded = decoded.rstrip("\ufffd").strip()
        if not decoded.startswith(self.text):
            return ""  # the tokenizer rewrote earlier text; keep what was given
        delta = decoded[len(self.text) :]
        self.text = decoded
        return delta


@dataclass(frozen=True)
class Row:
    """One answer of a batched greedy decode: its prompt ``inputs_embeds`` (1, L, H), how to
    decode it (``options.do_sample`` False), and ``should_stop`` (see ``LLMBackend.answers``)."""

    inputs_embeds: Tensor
    options: DecodingOptions
    should_stop: Callable[[], bool] | None = None


@torch.inference_mode()
def greedy_together(
    llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[Row]
) -> list[str]:
    """The answer text of each row, as ``Generation`` would give it alone, from one forward per
    token for all the rows: on a CPU a small LLM's forward for a few sequences costs about what
    one costs. The prompts are left-padded (masked, each row's positions from 0 at its first
    token); a row that ends (``<|im_end|>``, ``max_new_tokens``, ``should_stop``) leaves the
    batch and its cache lines."""
    for row in rows:
        require_single_beam(row.options)
        if row.options.do_sample:
            raise ConfigError("a batched decode is greedy: do_sample must be False")
    eos = turn_end_id(tokenizer)
    count = len(rows)
    width = max(row.inputs_embeds.shape[1] for row in rows)
    first = rows[0].inputs_embeds
    pending = first.new_zeros(count, width, first.shape[2])  # (B, L, H)
    mask = torch.zeros(count, width, dtype=torch.long, device=first.device)  # (B, L)
    for b, row in enumerate(rows):
        length = row.inputs_embeds.shape[1]
        pending[b, width - length :] = row.inputs_embeds[0]
        mask[b, width - length :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): each row counts from its start
    cache = DynamicCache(config=llm.config)
    choosers = [TokenChooser(row.options, eos, tokenizer) for row in rows]
    texts = [TextStream(tokenizer) for _ in rows]
    ids: list[list[int]] = [[] for _ in rows]
    live = list(range(count))  # the rows still in the batch (max_new_tokens is at least 1)
    while live:
        out = llm(
            inputs_embeds=pending,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]  # (B', V)
        keep: list[int] = []  # lines of the batch that go on
        for line, b in enumerate(live):
            token = choosers[b](logits[line], ids[b])
            if token == eos:
                continue
            ids[b].append(token)
            texts[b].push(token)
            stop = rows[b].should_stop
            if (stop is None or not stop()) and len(ids[b]) < rows[b].options.max_new_tokens:
                keep.append(line)
        if len(keep) < len(live):
            if not keep:
                break
            lines = torch.tensor(keep, dtype=torch.long, device=mask.device)
            cache.batch_select_indices(lines)
            mask, positions = mask[lines], positions[lines]
            live = [live[line] for line in keep]
        tokens = [ids[b][-1] for b in live]
        pending = llm.get_input_embeddings()(
            torch.tensor(tokens, device=mask.device)[:, None]
        )  # (B', 1, H)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)  # (B', L + n)
        positions = positions[:, -1:] + 1  # (B', 1)
    return [text.text for text in texts]
