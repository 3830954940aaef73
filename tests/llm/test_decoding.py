from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from mooer.errors import CheckpointError, ConfigError
from mooer.llm.decoding import (
    OFFLINE,
    SPEECH,
    STREAMING,
    DecodingOptions,
    EosBias,
    generate,
    generate_ids,
    splice,
)
from mooer.llm.prompts import build_prompt

LENGTHS = [7, 3, 5]
GREEDY = dataclasses.replace(STREAMING, max_new_tokens=8)
BEAM = dataclasses.replace(OFFLINE, max_new_tokens=8)


@pytest.fixture(scope="module")
def batch(merged_llm):
    """Audio embeddings (3, 7, H) with 7, 3 and 5 valid frames, and three prompts."""
    hidden = merged_llm[0].config.hidden_size
    audio = torch.randn(3, 7, hidden, generator=torch.Generator().manual_seed(0))
    prompts = [build_prompt("asr"), build_prompt("ast"), build_prompt("s2s_chat")]
    return audio, torch.tensor(LENGTHS), prompts


def one_by_one(model, tokenizer, batch, options: DecodingOptions) -> list[list[int]]:
    audio, lengths, prompts = batch
    return [
        generate_ids(
            model, tokenizer, audio[i : i + 1], lengths[i : i + 1], prompts[i : i + 1], options
        )[0]
        for i in range(len(prompts))
    ]


def answer_logprob(model, tokenizer, batch, index: int, answer: list[int]) -> float:
    """log p(answer | audio, prompt) under the model, by one teacher-forced forward pass."""
    audio, lengths, prompts = batch
    embeds, mask = splice(
        model,
        tokenizer,
        audio[index : index + 1],
        lengths[index : index + 1],
        prompts[index : index + 1],
    )
    ids = torch.tensor([answer])
    embeds = torch.cat([embeds, model.get_input_embeddings()(ids)], dim=1)  # (1, L + N, H)
    with torch.no_grad():
        logits = model(inputs_embeds=embeds).logits[0, mask.shape[1] - 1 : -1]  # (N, V)
    return logits.log_softmax(-1).gather(1, ids.T).sum().item()


def test_presets_are_the_released_settings() -> None:
    assert (OFFLINE.num_beams, OFFLINE.max_new_tokens, OFFLINE.length_penalty) == (4, 200, 0.8)
    assert (OFFLINE.do_sample, OFFLINE.eos_bias) == (False, -0.2)
    assert (STREAMING.num_beams, STREAMING.max_new_tokens, STREAMING.do_sample) == (1, 500, False)
    assert (SPEECH.do_sample, SPEECH.top_p, SPEECH.max_new_tokens) == (True, 0.85, 2000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        OFFLINE.num_beams = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "change",
    [
        {"num_beams": 0},
        {"num_beams": 2.0},
        {"max_new_tokens": 0},
        {"max_new_tokens": True},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"temperature": 0.0},
        {"repetition_penalty": -1.0},
        {"eos_bias": math.nan},
        {"length_penalty": "0.8"},
        {"do_sample": 1},
    ],
)
def test_bad_options_name_the_field(change: dict) -> None:
    (name,) = change
    with pytest.raises(ConfigError, match=f"DecodingOptions.{name}"):
        dataclasses.replace(OFFLINE, **change)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) 0/1 mask of a left-padded batch -> (B, L) rotary positions from each item's first
    real token (padded slots 0), as generate() derives them."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def test_splice_puts_audio_before_the_prompt_and_pads_left(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    audio, lengths, prompts = batch
    embeds, mask = splice(model, tokenizer, audio, lengths, prompts)
    embed = model.get_input_embeddings()
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    sizes = [n + len(ids) for n, ids in zip(LENGTHS, prompt_ids)]
    assert embeds.shape == (3, max(sizes), model.config.hidden_size)
    assert mask.dtype == torch.long and mask.sum(1).tolist() == sizes
    pad = embed(torch.tensor([tokenizer.pad_token_id]))[0]
    with torch.no_grad():
        for b, (n, ids) in enumerate(zip(LENGTHS, prompt_ids)):
            start = max(sizes) - sizes[b]
            assert mask[b, :start].sum() == 0 and mask[b, start:].all()
            torch.testing.assert_close(embeds[b, :start], pad.expand(start, -1))
            torch.testing.assert_close(embeds[b, start : start + n], audio[b, :n])
            torch.testing.assert_close(embeds[b, start + n :], embed(torch.tensor(ids)))
    assert prompt_ids[0][0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS


def test_splice_accepts_an_item_without_audio(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    audio, _, prompts = batch
    embeds, mask = splice(model, tokenizer, audio[:1], torch.tensor([0]), prompts[:1])
    assert embeds.shape[1] == mask.sum() == len(tokenizer(prompts[0])["input_ids"])


def test_splice_rejects_mismatched_inputs(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    audio, lengths, prompts = batch
    with pytest.raises(CheckpointError, match="64-d but the LLM's hidden size is 32"):
        splice(model, tokenizer, torch.zeros(3, 7, 64), lengths, prompts)
    with pytest.raises(ConfigError, match="one length and one prompt per item"):
        splice(model, tokenizer, audio, lengths, prompts[:2])
    with pytest.raises(ConfigError, match=r"within 0\.\.7"):
        splice(model, tokenizer, audio, torch.tensor([8, 1, 1]), prompts)
    with pytest.raises(ConfigError, match=r"\(B, T, H\)"):
        splice(model, tokenizer, audio[0], lengths, prompts)


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_padded_batch_decodes_like_its_items_alone(merged_llm, batch, options) -> None:
    model, tokenizer = merged_llm
    together = generate_ids(model, tokenizer, *batch, options)
    assert together == one_by_one(model, tokenizer, batch, options)
    assert len({tuple(ids) for ids in together}) == 3  # the items really differ
    assert all(len(ids) == 8 for ids in together)


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_should_stop_ends_every_answer_at_the_step_it_answers_true(merged_llm, batch, options):
    # (an early final whose pause turned out not to end the sentence stops at once)
    model, tokenizer = merged_llm
    asked = []

    def after_three() -> bool:
        asked.append(None)
        return len(asked) >= 3

    stopped = generate_ids(model, tokenizer, *batch, options, should_stop=after_three)
    assert [len(ids) for ids in stopped] == [3, 3, 3] and len(asked) == 3  # answers run to 8
    whole = generate_ids(model, tokenizer, *batch, options)
    if options.num_beams == 1:  # greedy: the same tokens, cut there
        assert stopped == [ids[:3] for ids in whole]


def test_beam_search_finds_an_answer_at_least_as_likely_as_greedy(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    never_end = {"eos_bias": -1e4}  # equal lengths: the length penalty cannot reorder
    greedy = generate_ids(model, tokenizer, *batch, dataclasses.replace(GREEDY, **never_end))
    beam = generate_ids(model, tokenizer, *batch, dataclasses.replace(BEAM, **never_end))
    assert beam != greedy
    for i in range(3):
        assert answer_logprob(model, tokenizer, batch, i, beam[i]) >= answer_logprob(
            model, tokenizer, batch, i, greedy[i]
        )


def test_greedy_answer_is_the_argmax_of_a_forward_pass(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    first = [ids[0] for ids in generate_ids(model, tokenizer, *batch, GREEDY)]
    embeds, mask = splice(model, tokenizer, *batch)
    with torch.no_grad():
        logits = model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=_positions(mask)
        ).logits
    assert logits[:, -1].argmax(-1).tolist() == first


def test_eos_bias_shifts_only_the_eos_score() -> None:
    scores = torch.randn(2, 10)
    biased = EosBias(eos_id=3, bias=-0.2)(torch.zeros(2, 0, dtype=torch.long), scores)
    torch.testing.assert_close(biased[:, 3], scores[:, 3] - 0.2)
    torch.testing.assert_close(
        biased[:, [0, 1, 2, 4, 5, 6, 7, 8, 9]], scores[:, [0, 1, 2, 4, 5, 6, 7, 8, 9]]
    )


@pytest.mark.parametrize("options", [GREEDY, BEAM], ids=["greedy", "beam"])
def test_large_eos_bias_ends_every_answer_at_once(merged_llm, batch, options) -> None:
    model, tokenizer = merged_llm
    options = dataclasses.replace(options, eos_bias=1e4)
    assert generate_ids(model, tokenizer, *batch, options) == [[], [], []]
    assert generate(model, tokenizer, *batch, options) == ["", "", ""]


def test_generate_decodes_the_ids(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    texts = generate(model, tokenizer, *batch, GREEDY)
    ids = generate_ids(model, tokenizer, *batch, GREEDY)
    assert texts == [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
    assert all(texts)


def test_model_generation_config_does_not_leak_in(merged_llm, batch, monkeypatch) -> None:
    model, tokenizer = merged_llm
    expected = generate_ids(model, tokenizer, *batch, GREEDY)
    qwen_instruct = {"do_sample": True, "top_k": 20, "top_p": 0.8, "temperature": 0.7}
    for name, value in {**qwen_instruct, "repetition_penalty": 1.05}.items():
        monkeypatch.setattr(model.generation_config, name, value)
    torch.manual_seed(1)
    assert generate_ids(model, tokenizer, *batch, GREEDY) == expected


def test_sampling_is_seeded_and_a_tiny_nucleus_is_greedy(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    sample = dataclasses.replace(SPEECH, max_new_tokens=8)
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(generate_ids(model, tokenizer, *batch, sample))
    assert draws[0] == draws[1] != draws[2]
    nucleus = dataclasses.replace(sample, top_p=1e-6)
    assert generate_ids(model, tokenizer, *batch, nucleus) == generate_ids(
        model, tokenizer, *batch, GREEDY
    )


class Collect(BaseStreamer):
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.tokens += value.flatten().tolist()

    def end(self) -> None:
        self.ended = True


def test_streamer_sees_the_answer_as_it_is_generated(merged_llm, batch) -> None:
    model, tokenizer = merged_llm
    audio, lengths, prompts = batch
    streamer = Collect()
    ids = generate_ids(model, tokenizer, audio[:1], lengths[:1], prompts[:1], GREEDY, streamer)
    assert streamer.tokens == ids[0] and streamer.ended
    with pytest.raises(ConfigError, match="streamer"):
        generate_ids(model, tokenizer, audio, lengths, prompts, GREEDY, Collect())
