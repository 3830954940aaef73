"""Chat memory as a KV cache, on a fabricated omni model (random weights, real Qwen tokenizer).

The reference for every answer is greedy decoding by full forward passes without any cache, over
the whole chat text: reusing, cropping and extending the cache must give the same tokens.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from mooer.errors import ConfigError
from mooer.llm.conversation import (
    CHAT,
    CHAT_INSTRUCTION,
    REPLY_START,
    SYSTEM_TURN,
    Conversation,
    Message,
    history_prefix,
    message_text,
    question_suffix,
    system_turn,
    text_turn,
    typed_question,
)
from mooer.llm.decoding import STREAMING, generate_ids, splice, token_id
from mooer.llm.generation import Generation, TextStream
from mooer.llm.prompts import IM_END, build_prompt, build_prompt_text

SHORT = replace(CHAT, max_new_tokens=10)


@pytest.fixture(scope="module")
def model(omni_model):
    return omni_model


@pytest.fixture(scope="module")
def questions(model) -> list[torch.Tensor]:
    """Audio embeddings (Ta, H) of three different 'spoken questions' (noise of 0.6-1 s)."""
    rng = np.random.default_rng(1)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 9600, 12800)]
    embeds, lengths = model.embed(waves)
    return [embeds[i, : lengths[i]] for i in range(len(waves))]


@torch.inference_mode()
def _greedy_without_cache(
    model,
    history,
    audio,
    max_new_tokens: int,
    suffix: str = question_suffix(),
    instructions: str = "",
) -> list[int]:
    """Greedy answer ids from full forward passes over [history text; audio; suffix; answer]."""
    embed = model.llm.get_input_embeddings()

    def embed_text(text: str) -> torch.Tensor:
        return embed(torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"]))

    seq = torch.cat([embed_text(history_prefix(history, instructions)), audio, embed_text(suffix)])
    eos, answer = token_id(model.tokenizer, IM_END), []
    for _ in range(max_new_tokens):
        token = int(model.llm(inputs_embeds=seq[None], logits_to_keep=1).logits[0, -1].argmax())
        if token == eos:
            break
        answer.append(token)
        seq = torch.cat([seq, embed(torch.tensor([token]))])  # (L + 1, H)
    return answer


def _answer(conversation, audio, question, options=SHORT, should_stop=None):
    tokens: list[int] = []
    deltas: list[str] = []

    def on_token(token: int, delta: str) -> None:
        tokens.append(token)
        deltas.append(delta)

    turn = conversation.answer(audio, options, should_stop, on_token, question=question)
    return turn, tokens, deltas


def test_chat_format_extends_the_released_template(model):
    assert SYSTEM_TURN + question_suffix(CHAT_INSTRUCTION) == build_prompt_text(CHAT_INSTRUCTION)
    history = [("what is two plus two", "four"), ("你好吗", "我很好")]
    assert history_prefix(history) == SYSTEM_TURN + "".join(text_turn(q, a) for q, a in history)
    # The cache is filled turn by turn; tokenising turn by turn must equal tokenising the whole
    # prefix at once, as training does.
    tok = model.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    pieces = ids(SYSTEM_TURN) + sum((ids(text_turn(q, a)) for q, a in history), [])
    assert pieces == ids(history_prefix(history))


def test_first_answer_equals_decoding_without_cache(model, questions):
    conversation = Conversation(model)
    turn, tokens, deltas = _answer(conversation, questions[0], "q one")
    assert tokens == _greedy_without_cache(model, [], questions[0], SHORT.max_new_tokens)
    assert turn.question == "q one" and not turn.interrupted
    assert "".join(deltas) == turn.answer
    assert turn.answer == model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    assert conversation.turns == [turn]


def test_later_turns_reuse_the_cache_and_equal_recompute(model, questions):
    conversation = Conversation(model)
    history: list[tuple[str, str]] = []
    for i, audio in enumerate(questions):
        turn, tokens, _ = _answer(conversation, audio, f"question {i}")
        assert tokens == _greedy_without_cache(model, history, audio, SHORT.max_new_tokens)
        history.append((turn.question, turn.answer))
    assert conversation.prompt_text() == history_prefix(history)

    # Crop + append gives the cache that a rebuild from the text gives.
    rebuilt = Conversation(model)
    for question, answer in history:
        rebuilt.append(question, answer)
    conversation.sync()
    rebuilt.sync()
    assert conversation.cached_tokens == rebuilt.cached_tokens == conversation.context_tokens
    for kept, fresh in zip(conversation.cache.layers, rebuilt.cache.layers):
        torch.testing.assert_close(kept.keys, fresh.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(kept.values, fresh.values, atol=1e-5, rtol=1e-4)


def test_budget_drops_the_oldest_turns(model, questions):
    conversation = Conversation(model, max_context_tokens=128)
    answer = " ".join(["answer number"] * 3)
    for i in range(6):
        conversation.append(f"question number {i}", answer)
    per_turn = len(model.tokenizer(text_turn("question number 0", answer))["input_ids"])
    incoming = questions[0].shape[0] + 12 + SHORT.max_new_tokens
    conversation.sync(incoming=incoming)
    assert 0 < len(conversation.turns) < 6
    assert conversation.turns[-1].question == "question number 5"  # the newest are kept
    assert conversation.context_tokens + incoming <= 128
    assert conversation.context_tokens + incoming + per_turn > 128  # no more dropped than needed
    assert conversation.cached_tokens == conversation.context_tokens

    # Answering after a drop equals answering with only the kept turns.
    kept = [(t.question, t.answer) for t in conversation.turns]
    _, tokens, _ = _answer(conversation, questions[1], "next")
    assert conversation.turns[-1].question == "next"
    assert tokens == _greedy_without_cache(model, kept, questions[1], SHORT.max_new_tokens)


def test_a_question_longer_than_the_budget_still_runs_alone(model, questions):
    conversation = Conversation(model, max_context_tokens=64)
    conversation.append("old", "turn")
    turn, tokens, _ = _answer(conversation, questions[0], "long", replace(SHORT, max_new_tokens=60))
    assert [t.question for t in conversation.turns] == ["long"]
    assert tokens == _greedy_without_cache(model, [], questions[0], 60)


def test_an_interrupted_turn_is_kept_and_flagged(model, questions):
    conversation = Conversation(model)
    steps = iter(range(100))
    turn, tokens, deltas = _answer(
        conversation,
        questions[0],
        "stop me",
        replace(SHORT, max_new_tokens=50),
        should_stop=lambda: next(steps) >= 3,  # barge-in after three tokens
    )
    assert len(tokens) == 3 and turn.interrupted
    assert tokens == _greedy_without_cache(model, [], questions[0], 50)[:3]
    assert (
        turn.answer
        == "".join(deltas)
        == model.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    )
    assert conversation.turns == [turn]

    # The cache was cropped: the next turn sees the partial answer as remembered text.
    _, tokens2, _ = _answer(conversation, questions[1], "again")
    history = [("stop me", turn.answer)]
    assert tokens2 == _greedy_without_cache(model, history, questions[1], SHORT.max_new_tokens)


def test_a_reply_stepped_by_hand_and_stopped(model, questions):
    conversation = Conversation(model)
    reply = conversation.reply(
        questions[2], question="step", options=replace(SHORT, max_new_tokens=40)
    )
    first = [next(reply) for _ in range(2)]
    reply.stop()
    assert reply.turn is not None and reply.turn.interrupted
    assert next(reply, None) is None  # ended for good
    assert reply.turn.answer == "".join(d for _, d in first)
    # A new reply while one is active ends the active one first.
    active = conversation.reply(questions[0], question="a")
    next(active)
    conversation.reply(questions[1], question="b")
    assert active.turn is not None and active.turn.interrupted
    assert [t.question for t in conversation.turns] == ["step", "a"]


def test_a_typed_question_is_read_where_a_spoken_ones_audio_would_be(model, questions):
    """As the trainer lays out ``chat_text`` items: the words, then the user suffix; once
    answered, remembered as a user message like a spoken turn's transcript."""
    conversation = Conversation(model)
    _answer(conversation, questions[0], "spoken")
    history = [(t.question, t.answer) for t in conversation.turns]
    reply = conversation.reply_text("typed", SHORT)
    tokens = [token for token, _ in reply]
    no_audio = questions[0][:0]  # (0, H)
    expected = _greedy_without_cache(model, history, no_audio, 10, typed_question("typed"))
    assert tokens == expected
    assert tokens != _greedy_without_cache(model, history, no_audio, 10, question_suffix("typed"))
    assert conversation.turns[-1].question == "typed"
    # The cache was cropped to before the typed words: the next turn reads the memory as text.
    history.append(("typed", conversation.turns[-1].answer))
    _, after, _ = _answer(conversation, questions[1], "next")
    assert after == _greedy_without_cache(model, history, questions[1], SHORT.max_new_tokens)


def test_a_context_packed_into_one_message_is_answered_by_the_assistants_turn(model):
    """Several lines (a client's history sent as one message) are no question: the reply
    reads the assistant's opening right after them, as the trainer's client openings do."""
    conversation = Conversation(model)
    packed = "Our conversation so far:\n\nwhat is two plus two\nfour\n\nGo on from here."
    conversation.add(Message("user", packed))
    prefix = conversation.prompt_text()
    tokens = [token for token, _ in conversation.respond(SHORT)]
    assert tokens == _greedy_after_text(model, prefix, SHORT.max_new_tokens)


def test_a_generation_without_memory_equals_greedy_generate(model, questions):
    """The cheap token loop that live partials use decodes as ``generate()`` does."""
    audio = questions[1][None]  # (1, Ta, H)
    lengths = torch.tensor([audio.shape[1]])
    prompt = build_prompt("asr")
    greedy = replace(STREAMING, max_new_tokens=12)
    inputs, _ = splice(model.llm, model.tokenizer, audio, lengths, [prompt])
    generation = Generation(model.llm, model.tokenizer, inputs, greedy)
    tokens = [token for token, _ in generation]
    assert generation.ended and not generation.interrupted
    assert tokens == generate_ids(model.llm, model.tokenizer, audio, lengths, [prompt], greedy)[0]
    with pytest.raises(ConfigError, match="needs num_beams 1"):
        Generation(model.llm, model.tokenizer, inputs, replace(greedy, num_beams=2))


def test_reset_forgets_everything(model, questions):
    conversation = Conversation(model)
    _answer(conversation, questions[0], "one")
    conversation.reset()
    assert conversation.turns == [] and conversation.cached_tokens == 0
    _, tokens, _ = _answer(conversation, questions[1], "two")
    assert tokens == _greedy_without_cache(model, [], questions[1], SHORT.max_new_tokens)


def test_decoding_options_are_honoured(model, questions):
    conversation = Conversation(model)
    greedy = _answer(conversation, questions[0], "g", replace(SHORT, max_new_tokens=30))[1]
    # Nucleus sampling that keeps only the most likely token is greedy decoding.
    conversation.reset()
    narrow = replace(SHORT, max_new_tokens=30, do_sample=True, top_p=1e-6, temperature=0.7)
    assert _answer(conversation, questions[0], "s", narrow)[1] == greedy
    # A prohibitive repetition penalty never repeats a token (greedy decoding does).
    assert len(set(greedy)) < len(greedy)
    conversation.reset()
    tokens = _answer(conversation, questions[0], "r", replace(narrow, repetition_penalty=1e6))[1]
    assert len(tokens) == len(set(tokens)) > 0
    # A strong end-of-turn bias ends the answer at once.
    conversation.reset()
    turn, tokens, _ = _answer(conversation, questions[0], "e", replace(SHORT, eos_bias=1e6))
    assert tokens == [] and turn.answer == "" and not turn.interrupted


INSTRUCTIONS = "You are a pirate. Answer in one short sentence."


def test_without_instructions_the_system_turn_is_the_released_one(model, questions):
    assert system_turn() == system_turn("  \n") == SYSTEM_TURN
    assert SYSTEM_TURN == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert build_prompt("asr").startswith(SYSTEM_TURN)
    conversation = Conversation(model, instructions=" ")
    conversation.sync()
    assert conversation.cached_tokens == len(model.tokenizer(SYSTEM_TURN)["input_ids"])
    _, tokens, _ = _answer(conversation, questions[0], "q")
    assert tokens == _greedy_without_cache(model, [], questions[0], SHORT.max_new_tokens)


def test_instructions_are_the_system_turn_the_llm_reads(model, questions):
    assert system_turn(INSTRUCTIONS) == f"<|im_start|>system\n{INSTRUCTIONS}<|im_end|>\n"
    conversation = Conversation(model, instructions=INSTRUCTIONS)
    assert conversation.prompt_text() == system_turn(INSTRUCTIONS)
    conversation.sync()
    fed = len(model.tokenizer(system_turn(INSTRUCTIONS))["input_ids"])
    assert conversation.cached_tokens == conversation.context_tokens == fed
    _, tokens, _ = _answer(conversation, questions[0], "q")
    expected = _greedy_without_cache(
        model, [], questions[0], SHORT.max_new_tokens, instructions=INSTRUCTIONS
    )
    assert tokens == expected
    default = _greedy_without_cache(model, [], questions[0], SHORT.max_new_tokens)
    assert tokens != default  # the instructions reached the LLM


def test_new_instructions_keep_the_turns_and_rebuild_the_cache(model, questions):
    conversation = Conversation(model)
    turn, _, _ = _answer(conversation, questions[0], "first")
    cache = conversation.cache
    conversation.instructions = INSTRUCTIONS
    assert conversation.turns == [turn] and conversation.cached_tokens == 0
    _, tokens, _ = _answer(conversation, questions[1], "second")
    history = [("first", turn.answer)]
    expected = _greedy_without_cache(
        model, history, questions[1], SHORT.max_new_tokens, instructions=INSTRUCTIONS
    )
    assert tokens == expected and conversation.cache is not cache
    conversation.instructions = ""  # back to the released system turn
    assert conversation.prompt_text() == history_prefix(
        [(t.question, t.answer) for t in conversation.turns]
    )
    with pytest.raises(ConfigError, match="instructions must be a string"):
        conversation.instructions = None


def test_text_stream_holds_back_split_characters(model):
    tokenizer = model.tokenizer
    text = "龘 and 𠀋, done "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # the rare characters take several byte tokens
    stream = TextStream(tokenizer)
    deltas = [stream.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == stream.text == text.strip()


def test_bad_input_is_refused(model, questions):
    with pytest.raises(ConfigError, match="max_context_tokens"):
        Conversation(model, max_context_tokens=10)
    conversation = Conversation(model)
    with pytest.raises(ConfigError, match=r"audio_embeds must be \(Ta, 32\)"):
        conversation.reply(questions[0][None], question="x")
    with pytest.raises(ConfigError, match="needs num_beams 1"):
        conversation.reply(questions[0], question="x", options=replace(SHORT, num_beams=2))


def _greedy_after_text(
    model, prefix: str, max_new_tokens: int, opening: str = REPLY_START
) -> list[int]:
    """Greedy answer ids after ``prefix`` (the system turn and messages) and ``opening`` (the
    assistant's, or a typed question), from full forward passes."""
    assert prefix.startswith(SYSTEM_TURN)
    no_audio = torch.zeros(0, model.llm.config.hidden_size)  # (0, H)
    suffix = prefix.removeprefix(SYSTEM_TURN) + opening
    return _greedy_without_cache(model, [], no_audio, max_new_tokens, suffix)


def test_messages_added_removed_and_rewritten_keep_the_cache_true(model, questions):
    conversation = Conversation(model)
    turn, _, _ = _answer(conversation, questions[0], "spoken")
    conversation.add(Message("system", "Be brief."))
    conversation.add(Message("user", "typed", "u1"))
    conversation.add(Message("assistant", "an earlier answer", "a0"), index=0)
    conversation.sync()
    assert [m.role for m in conversation.messages] == [
        "assistant",
        "user",
        "assistant",
        "system",
        "user",
    ]
    expected = SYSTEM_TURN + "".join(
        message_text(role, text)
        for role, text in [
            ("assistant", "an earlier answer"),
            ("user", "spoken"),
            ("assistant", turn.answer),
            ("system", "Be brief."),
            ("user", "typed"),
        ]
    )
    assert conversation.prompt_text() == expected
    reply = conversation.respond(SHORT, answer_id="a1")
    tokens = [token for token, _ in reply]
    asked = expected.removesuffix(message_text("user", "typed"))
    assert tokens == _greedy_after_text(model, asked, SHORT.max_new_tokens, typed_question("typed"))
    assert conversation.messages[-1].id == "a1" and conversation.turns[-1].question == "typed"

    # Cutting the answer, dropping the typed question: the cache recomputes from the first
    # message changed, and equals a cache built from the text.
    assert conversation.rewrite("a1", "cut short") and conversation.remove("u1")
    assert not conversation.remove("nobody") and conversation.index_of("u1") is None
    assert conversation.messages[-1] == Message("assistant", "cut short", "a1", True)
    conversation.sync()
    rebuilt = Conversation(model)
    for message in conversation.messages:
        rebuilt.add(message)
    rebuilt.sync()
    assert conversation.prompt_text() == rebuilt.prompt_text()
    assert conversation.cached_tokens == rebuilt.cached_tokens == conversation.context_tokens
    for kept, fresh in zip(conversation.cache.layers, rebuilt.cache.layers):
        torch.testing.assert_close(kept.keys, fresh.keys, atol=1e-5, rtol=1e-4)


def test_an_out_of_band_answer_with_its_own_instructions_is_not_remembered(model):
    conversation = Conversation(model)
    conversation.add(Message("user", "hello"))
    before = conversation.prompt_text()
    reply = conversation.respond(SHORT, instructions="Say goodbye.", remember=False)
    tokens = [token for token, _ in reply]
    prefix = SYSTEM_TURN + message_text("system", "Say goodbye.")  # before the typed question
    hello = typed_question("hello")
    assert tokens == _greedy_after_text(model, prefix, SHORT.max_new_tokens, hello)
    assert tokens != _greedy_after_text(model, SYSTEM_TURN, SHORT.max_new_tokens, hello)
    assert conversation.prompt_text() == before and len(conversation.messages) == 1
    conversation.sync()
    assert conversation.cached_tokens == conversation.context_tokens
    with pytest.raises(ConfigError, match="role"):
        conversation.add(Message("tool", "x"))
