"""Speech generation on the fabricated omni LLM, taught in a few steps to answer one prompt with
text, ``<|audio_start|>`` and audio tokens (random weights never choose those by themselves).

The reference for the latents is MooER's own method: one full forward pass over the prompt and
every generated token (``<|im_end|>`` included), hidden states at ``[audio_start, L - 6)``.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from mooer.llm.conversation import CHAT, SYSTEM_TURN, Conversation, Turn, question_suffix
from mooer.llm.decoding import SPEECH, STREAMING, token_id
from mooer.llm.generation import Generation, embed_ids
from mooer.llm.prompts import AUDIO_START, IM_END, build_prompt
from mooer.llm.qwen import load_llm
from mooer.llm.speech import (
    SPEECH_CHAT_INSTRUCTION,
    TAIL_DROP,
    SpeechGeneration,
    SpeechReply,
    spoken_reply,
)
from tests.taught import teach, token_ids

AUDIO = "".join(f"<A_{i}>" for i in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7))
ANSWER = f"hello there{AUDIO_START}{AUDIO}{IM_END}"
CHAT_AUDIO = "".join(f"<A_{i}>" for i in (2, 7, 1, 8, 2, 8, 1, 8, 2, 8))
CHAT_ANSWER = f"fine thanks{AUDIO_START}{CHAT_AUDIO}{IM_END}"
QUESTION = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(5))  # 'audio' (1, Ta, H)


@pytest.fixture(scope="module")
def taught(fabricated):
    """(llm, tokenizer) answering the s2s_trans prompt with ANSWER (each token p > 0.9, so
    sampling with top_p 0.85 keeps only it)."""
    root = fabricated("omni")
    llm, tokenizer = load_llm(root / "llm", root / "lora")
    chat = [_ids(tokenizer, SYSTEM_TURN), QUESTION, _ids(tokenizer, _chat_suffix())]
    teach(
        llm,
        [
            ([_ids(tokenizer, build_prompt("s2s_trans"))], _ids(tokenizer, ANSWER)),
            (chat, _ids(tokenizer, CHAT_ANSWER)),
        ],
    )
    return llm, tokenizer


def _chat_suffix() -> str:
    return question_suffix(SPEECH_CHAT_INSTRUCTION)


_ids = token_ids


def _prompt(llm, tokenizer, task: str = "s2s_trans") -> torch.Tensor:
    return embed_ids(llm, _ids(tokenizer, build_prompt(task)))  # (1, P, H)


@torch.inference_mode()
def _reference_latents(
    llm, prompt: torch.Tensor, generated: list[int], audio_start: int
) -> torch.Tensor:
    """MooER's method: a full forward pass over prompt + generated, states [audio_start, -6)."""
    tokens = embed_ids(llm, generated)  # (1, G, H)
    out = llm(inputs_embeds=torch.cat([prompt, tokens], dim=1), output_hidden_states=True)
    start = prompt.shape[1] + generated.index(audio_start)
    return out.hidden_states[-1][0, start:-6].float()  # (T, H)


def _run(generation: SpeechGeneration) -> list:
    return list(generation)


def test_latents_equal_a_second_full_forward(taught):
    llm, tokenizer = taught
    prompt = _prompt(llm, tokenizer)
    torch.manual_seed(1)
    generation = SpeechGeneration(llm, tokenizer, prompt, SPEECH)  # sampling, top_p 0.85
    steps = _run(generation)
    eos = token_id(tokenizer, IM_END)
    assert generation.ids + [eos] == _ids(tokenizer, ANSWER)  # ended by itself, as taught
    assert generation.text == "hello there" and not generation.interrupted
    assert [s.token for s in steps] == generation.ids + [eos]
    assert "".join(s.text for s in steps) == "hello there"

    reference = _reference_latents(llm, prompt, generation.ids + [eos], generation.audio_start)
    # The generation saw <|audio_start|> and every audio token fed back: 1 + audio_tokens states,
    # TAIL_DROP more than the reference keeps.
    assert generation.audio_tokens == 14
    assert reference.shape == (1 + generation.audio_tokens - TAIL_DROP, llm.config.hidden_size)
    torch.testing.assert_close(generation.latents, reference, rtol=1e-4, atol=1e-5)
    streamed = torch.cat([s.latents for s in steps])  # what a streaming consumer received
    torch.testing.assert_close(streamed, generation.latents, rtol=0, atol=0)


def test_a_latent_is_released_when_the_token_six_positions_later_is_chosen(taught):
    llm, tokenizer = taught
    generation = SpeechGeneration(llm, tokenizer, _prompt(llm, tokenizer), STREAMING)
    start = None  # answer index of <|audio_start|>
    released = 0
    for k, step in enumerate(generation):  # step k chooses the token at answer index k
        if step.token == generation.audio_start:
            start = k
        released += step.latents.shape[0]
        # latent i sits at answer index start + i; it is final once index start + i + 6 exists
        expected = 0 if start is None else max(0, k - start - TAIL_DROP)
        assert released == expected, f"step {k}"
    assert released == generation.latents.shape[0] > 0


def test_an_answer_cut_by_max_new_tokens_matches_the_reference(taught):
    llm, tokenizer = taught
    prompt = _prompt(llm, tokenizer)
    options = replace(STREAMING, max_new_tokens=12)  # text (2), <|audio_start|>, 9 audio tokens
    generation = SpeechGeneration(llm, tokenizer, prompt, options)
    _run(generation)
    assert len(generation.ids) == 12 and not generation.interrupted
    # no <|im_end|> in the sequence; the last audio token was never fed back
    reference = _reference_latents(llm, prompt, generation.ids, generation.audio_start)
    assert reference.shape[0] == generation.audio_tokens - TAIL_DROP == 4
    torch.testing.assert_close(generation.latents, reference, rtol=1e-4, atol=1e-5)


def test_should_stop_interrupts_and_drops_the_held_latents(taught):
    llm, tokenizer = taught
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 9  # nine steps run: up to the 6th audio token

    generation = SpeechGeneration(
        llm, tokenizer, _prompt(llm, tokenizer), STREAMING, should_stop=stop
    )
    steps = _run(generation)
    assert len(steps) == 9 and generation.interrupted and generation.ended
    assert generation.audio_tokens == 6
    # states of <|audio_start|> and 5 audio tokens were collected; all but TAIL_DROP released
    assert generation.latents.shape[0] == 1
    assert list(generation) == []


@pytest.mark.parametrize("options", [replace(STREAMING, max_new_tokens=15), SPEECH])
def test_tokens_are_those_of_the_text_generation(taught, options):
    """On a prompt it was not taught (random text), greedy and sampled tokens are unchanged."""
    llm, tokenizer = taught
    prompt = _prompt(llm, tokenizer, "asr")
    options = replace(options, max_new_tokens=15)
    torch.manual_seed(2)
    speech = SpeechGeneration(llm, tokenizer, prompt, options)
    _run(speech)
    torch.manual_seed(2)
    text = Generation(llm, tokenizer, prompt, options)
    list(text)
    assert speech.ids == text.ids and speech.text == text.text
    assert not speech.speaking and speech.latents.shape == (0, llm.config.hidden_size)


# --- spoken chat on a conversation's cache ----------------------------------------------------


def _conversation(taught) -> Conversation:
    llm, tokenizer = taught
    return Conversation(SimpleNamespace(llm=llm, tokenizer=tokenizer))  # the parts it reads


def test_a_spoken_chat_reply_speaks_and_is_remembered_as_text(taught):
    llm, tokenizer = taught
    conversation = _conversation(taught)
    torch.manual_seed(3)
    reply = spoken_reply(conversation, QUESTION[0], question="how are you", audio_options=SPEECH)
    steps = _run(reply)
    eos = token_id(tokenizer, IM_END)
    assert isinstance(reply, SpeechReply) and not reply.interrupted
    assert reply.ids + [eos] == _ids(tokenizer, CHAT_ANSWER)  # greedy text, sampled audio
    assert reply.text == "fine thanks" and reply.audio_tokens == 10
    # The latents are MooER's, over the whole chat text: system turn, audio, s2s_chat suffix.
    system = embed_ids(llm, _ids(tokenizer, SYSTEM_TURN))  # (1, S, H)
    suffix = embed_ids(llm, _ids(tokenizer, _chat_suffix()))  # (1, U, H)
    prompt = torch.cat([system, QUESTION, suffix], dim=1)
    reference = _reference_latents(llm, prompt, reply.ids + [eos], reply.audio_start)
    torch.testing.assert_close(reply.latents, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([s.latents for s in steps]), reply.latents)
    # Remembered as the text said, the audio tokens cropped from the cache.
    assert conversation.turns == [Turn("how are you", "fine thanks")]
    assert reply.turn == conversation.turns[0]
    assert conversation.cached_tokens == len(_ids(tokenizer, SYSTEM_TURN))  # the turn comes next


def test_text_and_audio_tokens_have_their_own_limits(taught):
    llm, tokenizer = taught
    text_tokens = len(_ids(tokenizer, "fine thanks")) + 1  # and <|audio_start|>
    conversation = _conversation(taught)
    few = replace(STREAMING, max_new_tokens=4)
    reply = spoken_reply(
        conversation, QUESTION[0], question="q", options=replace(CHAT, max_new_tokens=text_tokens),
        audio_options=few,
    )  # fmt: skip
    _run(reply)
    assert reply.text == "fine thanks" and reply.audio_tokens == 4 and not reply.interrupted
    assert len(reply.ids) == text_tokens + 4
    # A text limit reached before <|audio_start|> ends the answer unspoken.
    cut = replace(CHAT, max_new_tokens=text_tokens - 1)
    reply = spoken_reply(conversation, QUESTION[0], question="q", options=cut, audio_options=few)
    _run(reply)
    assert not reply.speaking and len(reply.ids) == text_tokens - 1


def test_a_stopped_spoken_reply_is_remembered_as_interrupted(taught):
    conversation = _conversation(taught)
    asked = []
    reply = spoken_reply(
        conversation, QUESTION[0], question="q", audio_options=STREAMING,
        should_stop=lambda: asked.append(1) or len(asked) > 6,
    )  # fmt: skip
    _run(reply)
    assert reply.interrupted and reply.speaking and reply.audio_tokens == 3
    assert conversation.turns == [Turn("q", "fine thanks", interrupted=True)]
    assert conversation.cached_tokens == len(_ids(taught[1], SYSTEM_TURN))
