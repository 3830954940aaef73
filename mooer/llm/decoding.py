"""Audio splicing and text generation with the LLM.

Each item's audio embeddings are placed before its templated prompt (no delimiter tokens, no
BOS) and a batch is left-padded, so that every item's answer starts right after its own last
prompt token. Positions come from the attention mask, which makes a padded batch decode exactly
like its items one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from mooer.errors import CheckpointError, ConfigError, check_number
from mooer.llm.biasing import HotwordBias, Hotwords
from mooer.llm.prompts import IM_END, PAD


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode; override a preset with ``dataclasses.replace(OFFLINE, num_beams=1)``."""

    num_beams: int = 1
    max_new_tokens: int = 200
    length_penalty: float = 1.0  # beam search: < 1 favours shorter answers
    do_sample: bool = False
    top_p: float = 1.0  # sampling: nucleus mass kept
    temperature: float = 1.0  # sampling only
    repetition_penalty: float = 1.0  # 1 = off
    eos_bias: float = 0.0  # added to the <|im_end|> score; < 0 delays the end of the answer
    hotwords: Hotwords | None = None  # words favoured by context biasing (mooer.llm.biasing)

    def __post_init__(self) -> None:
        for name in ("num_beams", "max_new_tokens"):
            check_number(getattr(self, name), f"DecodingOptions.{name}", low=1, integer=True)
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"DecodingOptions.do_sample must be a bool, got {self.do_sample!r}")
        for name in ("length_penalty", "eos_bias"):
            check_number(getattr(self, name), f"DecodingOptions.{name}")
        check_number(self.top_p, "DecodingOptions.top_p", high=1.0, above=0.0)
        for name in ("temperature", "repetition_penalty"):
            check_number(getattr(self, name), f"DecodingOptions.{name}", above=0.0)
        if self.hotwords is not None and not isinstance(self.hotwords, Hotwords):
            raise ConfigError(f"DecodingOptions.hotwords must be Hotwords, got {self.hotwords!r}")


OFFLINE = DecodingOptions(num_beams=4, max_new_tokens=200, length_penalty=0.8, eos_bias=-0.2)
STREAMING = DecodingOptions(num_beams=1, max_new_tokens=500)
SPEECH = DecodingOptions(do_sample=True, top_p=0.85, max_new_tokens=2000)


class EosBias(LogitsProcessor):
    """Adds a constant to the end-of-turn score at every step."""

    def __init__(self, eos_id: int, bias: float) -> None:
        self.eos_id = eos_id
        self.bias = bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bias = torch.zeros_like(scores[0])
        bias[self.eos_id] = self.bias
        return scores + bias  # (B * beams, V)


class AskedToStop(StoppingCriteria):
    """Ends the whole search (every beam) at the step where ``should_stop()`` answers True."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_) -> Tensor:
        return torch.full(
            (len(input_ids),), self.should_stop(), device=input_ids.device
        )  # (B * beams,)


def token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of a token that must be a single entry of the vocabulary."""
    # Round trip instead of get_vocab(): that builds a 150k-entry dict on every call.
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or tokenizer.convert_ids_to_tokens(int(found)) != token:
        raise CheckpointError(f"the tokenizer has no {token} token")
    return int(found)


def splice(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    audio_embeds: Tensor,
    audio_lengths: Tensor,
    prompts: list[str],
) -> tuple[Tensor, Tensor]:
    """Audio embeddings followed by prompt embeddings, left-padded with the pad embedding.

    audio_embeds (B, Ta, H) with the first ``audio_lengths[b]`` frames valid, prompts B strings
    -> inputs_embeds (B, L, H), attention_mask (B, L) long, L = max(len_b + prompt tokens_b).
    """
    embed = model.get_input_embeddings()
    hidden = embed.embedding_dim
    if audio_embeds.ndim != 3:
        raise ConfigError(f"audio_embeds must be (B, T, H), got shape {tuple(audio_embeds.shape)}")
    batch, frames, width = audio_embeds.shape
    if width != hidden:
        raise CheckpointError(
            f"audio embeddings are {width}-d but the LLM's hidden size is {hidden}: "
            "the adapter was trained for another LLM"
        )
    if tuple(audio_lengths.shape) != (batch,) or len(prompts) != batch:
        raise ConfigError(
            f"{batch} audio items, {tuple(audio_lengths.shape)} lengths and {len(prompts)} "
            "prompts: expected one length and one prompt per item"
        )
    lengths = audio_lengths.tolist()
    if any(n < 0 or n > frames for n in lengths):
        raise ConfigError(f"audio_lengths {lengths} must lie within 0..{frames}")

    weight = embed.weight
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    items = [
        torch.cat(
            [
                audio_embeds[b, : lengths[b]].to(weight.device, weight.dtype),  # (Ta_b, H)
                embed(torch.tensor(ids, device=weight.device)),  # (P_b, H)
            ]
        )
        for b, ids in enumerate(prompt_ids)
    ]
    width = max(item.shape[0] for item in items)
    pad = embed(torch.tensor([token_id(tokenizer, PAD)], device=weight.device))  # (1, H)
    inputs_embeds = pad.expand(batch, width, hidden).clone()  # (B, L, H)
    attention_mask = torch.zeros(batch, width, dtype=torch.long, device=weight.device)
    for b, item in enumerate(items):
        inputs_embeds[b, width - item.shape[0] :] = item
        attention_mask[b, width - item.shape[0] :] = 1
    return inputs_embeds, attention_mask


def generate_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    audio_embeds: Tensor,
    audio_lengths: Tensor,
    prompts: list[str],
    options: DecodingOptions = OFFLINE,
    streamer: BaseStreamer | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[list[int]]:
    """The answer token ids of each item, up to (not including) ``<|im_end|>``.

    ``streamer`` receives tokens as they are chosen (greedy or sampling, one item only).
    ``should_stop``, asked at each step: True ends every answer where it is.
    """
    if streamer is not None and (options.num_beams > 1 or len(prompts) != 1):
        raise ConfigError("a streamer needs one item and num_beams 1")
    inputs_embeds, attention_mask = splice(model, tokenizer, audio_embeds, audio_lengths, prompts)
    eos_id = token_id(tokenizer, IM_END)
    pad_id = token_id(tokenizer, PAD)
    processors = LogitsProcessorList()
    if options.eos_bias:
        processors.append(EosBias(eos_id, options.eos_bias))
    if options.hotwords is not None:
        processors.append(HotwordBias(tokenizer, options.hotwords))
    with torch.inference_mode():
        # generate() derives positions from the attention mask: each item counts from 0
        # at its first real token, so left padding does not shift them.
        output = model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList(
                [AskedToStop(should_stop)] if should_stop else []
            ),
            streamer=streamer,
            **_generation_kwargs(options, eos_id, pad_id),
        )  # (B, N) new tokens only: no input ids were given
    return [answer_ids(row, eos_id, pad_id) for row in output.tolist()]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    audio_embeds: Tensor,
    audio_lengths: Tensor,
    prompts: list[str],
    options: DecodingOptions = OFFLINE,
) -> list[str]:
    """The answer text of each item, special tokens skipped, whitespace stripped."""
    ids = generate_ids(model, tokenizer, audio_embeds, audio_lengths, prompts, options)
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def _generation_kwargs(options: DecodingOptions, eos_id: int, pad_id: int) -> dict:
    # Every knob the chosen mode reads is set, so that the model dir's generation_config.json
    # (Qwen2-Instruct's samples with top_k 20, top_p 0.8, repetition_penalty 1.05) cannot leak in.
    # Passed as keywords, not a GenerationConfig, so transformers knows which values are ours and
    # does not warn about the sampling values it inherits for a greedy search.
    knobs = {}
    if options.num_beams > 1:
        knobs["length_penalty"] = options.length_penalty
    if options.do_sample:
        knobs.update(top_p=options.top_p, temperature=options.temperature, top_k=0)
    return {
        "num_beams": options.num_beams,
        "max_new_tokens": options.max_new_tokens,
        "do_sample": options.do_sample,
        "repetition_penalty": options.repetition_penalty,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        **knobs,
    }


def answer_ids(row: list[int], eos_id: int, pad_id: int) -> list[int]:
    """The generated ids up to (not including) the first ``eos_id``, ``pad_id`` dropped."""
    if eos_id in row:
        row = row[: row.index(eos_id)]
    return [token for token in row if token != pad_id]
