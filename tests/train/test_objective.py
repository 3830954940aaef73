from __future__ import annotations

import pytest
import torch

from mooer.asr.adapter import LinearAdapter
from mooer.asr.encoder import EncoderConfig, SANMEncoder
from mooer.asr.frontend import Cmvn
from mooer.errors import ConfigError
from mooer.llm.conversation import REPLY_START, SYSTEM_TURN, history_prefix, question_suffix
from mooer.llm.fabricate import write_tiny_llm
from mooer.llm.prompts import build_prompt
from mooer.llm.qwen import load_llm
from mooer.train.ctc import CtcVocab
from mooer.train.data import Batch
from mooer.train.objective import (
    IGNORE,
    SpeechObjective,
    answer_loss,
    build_inputs,
    prompt_prefix,
    training_prompt,
)

ANSWERS = ["hello world", "今天星期三\ntoday is wednesday", "four"]
TASKS = ["asr", "mtl", "chat"]
HISTORIES = [[], [], [("two plus two", "four")]]
PROMPTS = [training_prompt(t, h) for t, h in zip(TASKS, HISTORIES)]
PREFIXES = [prompt_prefix(t, h) for t, h in zip(TASKS, HISTORIES)]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    model, tokenizer = load_llm(write_tiny_llm(tmp_path_factory.mktemp("llm"), seed=0))
    return model, tokenizer


def test_chat_items_follow_the_live_sessions_layout():
    history = [("what is two plus two", "four"), ("and plus one", "five")]
    assert (
        prompt_prefix("chat", history)
        == history_prefix(history)
        == (
            SYSTEM_TURN + "<|im_start|>user\nwhat is two plus two<|im_end|>\n"
            "<|im_start|>assistant\nfour<|im_end|>\n<|im_start|>user\nand plus one<|im_end|>\n"
            "<|im_start|>assistant\nfive<|im_end|>\n"
        )
    )
    assert training_prompt("chat", history) == question_suffix()
    assert prompt_prefix("chat", []) == SYSTEM_TURN
    assert prompt_prefix("asr") == prompt_prefix("mtl") == ""  # released tasks: audio first


def test_text_chat_items_put_the_question_where_its_audio_would_be(llm):
    model, tokenizer = llm
    history = [("what is two plus two", "four")]
    question = "and plus one"
    prefix = prompt_prefix("chat_text", history, question)
    assert prefix == history_prefix(history) + question
    assert training_prompt("chat_text", history) == question_suffix()
    assert prompt_prefix("chat", history, question) == history_prefix(history)  # audio says it
    no_audio = torch.zeros(1, 0, model.config.hidden_size)  # (B, 0, H): text-only batch
    inputs = build_inputs(
        model, tokenizer, no_audio, torch.tensor([0]), [question_suffix()], ["five"], [prefix]
    )
    ids = tokenizer(prefix + question_suffix() + "five<|im_end|>", add_special_tokens=False)
    table = model.get_input_embeddings()
    assert torch.equal(inputs.inputs_embeds[0], table(torch.tensor(ids["input_ids"])))
    answer = tokenizer("five<|im_end|>", add_special_tokens=False)["input_ids"]
    assert inputs.labels[0][inputs.labels[0] != IGNORE].tolist() == answer


def test_openings_answer_the_system_turn_as_a_conversation_does(llm):
    """An opening item's text is what ``Conversation.respond`` reads when the assistant speaks
    first: the system turn (and prior turns), then the assistant's turn."""
    model, tokenizer = llm
    history = [("what is two plus two", "four")]
    for turns in ([], history):
        layout = prompt_prefix("opening", turns) + training_prompt("opening", turns)
        assert layout == history_prefix(turns) + REPLY_START
    no_audio = torch.zeros(1, 0, model.config.hidden_size)  # (B, 0, H)
    prefix, prompt = prompt_prefix("opening"), training_prompt("opening")
    inputs = build_inputs(model, tokenizer, no_audio, torch.tensor([0]), [prompt], ["hi"], [prefix])
    ids = tokenizer(SYSTEM_TURN + REPLY_START + "hi<|im_end|>", add_special_tokens=False)
    table = model.get_input_embeddings()
    assert torch.equal(inputs.inputs_embeds[0], table(torch.tensor(ids["input_ids"])))
    answer = tokenizer("hi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert inputs.labels[0][inputs.labels[0] != IGNORE].tolist() == answer


def test_chat_after_the_greeting_reads_as_the_conversation_where_the_assistant_spoke_first(llm):
    """A chat item whose history begins with the assistant's turn (no question: it greeted) holds
    exactly the token ids a live conversation feeds its LLM: the greeting its ``respond`` made,
    a turn after it, then the audio of the question and the user suffix."""
    from types import SimpleNamespace

    from mooer.llm.conversation import Conversation

    model, tokenizer = llm
    conversation = Conversation(SimpleNamespace(llm=model, tokenizer=tokenizer))
    reply = conversation.respond()  # the assistant speaks first (a random LLM: any words)
    for _ in reply:
        pass
    conversation.append("what is two plus two", "four")
    greeting = conversation.messages[0].text
    history = [(None, greeting), ("what is two plus two", "four")]
    assert conversation.prompt_text() == prompt_prefix("chat", history)
    audio = torch.randn(1, 4, model.config.hidden_size)  # (B, Ta, H)
    prefix, prompt = prompt_prefix("chat", history), training_prompt("chat", history)
    inputs = build_inputs(model, tokenizer, audio, torch.tensor([4]), [prompt], ["x"], [prefix])
    live = conversation._system_ids + sum(conversation._message_ids, [])  # what sync() feeds
    assert tokenizer(prefix, add_special_tokens=False)["input_ids"] == live
    cached = model.get_input_embeddings()(torch.tensor(live))[None]  # (1, F, H)
    read = torch.cat([cached, conversation.question_inputs(audio[0])], 1)  # (1, F + Ta + S, H)
    assert torch.equal(inputs.inputs_embeds[:, : read.shape[1]], read)
    answer = tokenizer("x<|im_end|>", add_special_tokens=False)["input_ids"]
    assert inputs.labels[0, read.shape[1] :].tolist() == answer  # what follows is the answer


def test_text_chat_reads_as_the_conversation_answering_a_typed_question(llm):
    """A ``chat_text`` item after the greeting and a turn holds exactly the token ids a live
    conversation feeds its LLM when a typed question (a user message, then a reply) comes
    next: the cached prefix without the question, then its words and the user suffix."""
    from types import SimpleNamespace

    from mooer.llm.conversation import Conversation, Message

    model, tokenizer = llm
    conversation = Conversation(SimpleNamespace(llm=model, tokenizer=tokenizer))
    conversation.respond().stop()  # the assistant spoke first (cut short: any words)
    conversation.append("what is two plus two", "four")
    question = "what is seven plus eight"
    conversation.add(Message("user", question))
    history = [(None, conversation.messages[0].text), ("what is two plus two", "four")]
    prefix = prompt_prefix("chat_text", history, question)
    prompt = training_prompt("chat_text", history)
    live = conversation._system_ids + sum(conversation._message_ids[:-1], [])  # for sync()
    reply = conversation.respond()
    fed, cached = reply.input_tokens, reply.cached_tokens
    reply.stop()
    trained = tokenizer(prefix + prompt, add_special_tokens=False)["input_ids"]
    own = tokenizer(question + question_suffix(), add_special_tokens=False)["input_ids"]
    assert trained == live + own and (cached, fed) == (len(live), len(trained))
    no_audio = torch.zeros(1, 0, model.config.hidden_size)  # (B, 0, H): text-only batch
    inputs = build_inputs(model, tokenizer, no_audio, torch.tensor([0]), [prompt], ["x"], [prefix])
    table = model.get_input_embeddings()
    assert torch.equal(inputs.inputs_embeds[0, :fed], table(torch.tensor(trained)))
    answer = tokenizer("x<|im_end|>", add_special_tokens=False)["input_ids"]
    assert inputs.labels[0, fed:].tolist() == answer  # what follows is the answer


def test_openings_a_client_asks_for_read_as_the_conversation_lays_them_out(llm):
    """An opening told what to do (the reply's own instructions), after a context a client sent
    as one user message, holds the token ids ``Conversation.respond`` feeds its LLM."""
    from types import SimpleNamespace

    from mooer.llm.conversation import Conversation, Message
    from mooer.train.demo import context_message

    model, tokenizer = llm
    conversation = Conversation(SimpleNamespace(llm=model, tokenizer=tokenizer))
    context = context_message([("what is two plus two", "four")])
    conversation.add(Message("user", context))
    told = "You are a helpful assistant.\nGreet."
    reply = conversation.respond(instructions=told, remember=False)
    fed = reply.input_tokens  # the cached prefix and what followed it, as the LLM read them
    reply.stop()
    history = [(context, None)]
    prefix, prompt = prompt_prefix("opening", history, told), training_prompt("opening", history)
    live = conversation._system_ids + sum(conversation._message_ids, [])
    text = f"<|im_start|>system\n{told}<|im_end|>\n" + REPLY_START  # Conversation.start's
    own = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer(prefix + prompt, add_special_tokens=False)["input_ids"] == live + own
    assert fed == len(live + own)
    assert prompt_prefix("opening", history) + prompt == conversation.prompt_text() + REPLY_START


def test_tasks_use_the_released_prompts():
    assert training_prompt("asr") == build_prompt("asr")
    assert training_prompt("ast") == training_prompt("mtl") == build_prompt("ast")
    with pytest.raises(ConfigError, match="unknown training task 'tts'"):
        training_prompt("tts")


def test_labels_count_exactly_the_answer_and_its_end_token(llm):
    model, tokenizer = llm
    audio = torch.randn(3, 5, model.config.hidden_size)
    lengths = torch.tensor([5, 2, 3])
    inputs = build_inputs(model, tokenizer, audio, lengths, PROMPTS, ANSWERS, PREFIXES)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    table = model.get_input_embeddings()
    for b, (prefix, prompt, answer) in enumerate(zip(PREFIXES, PROMPTS, ANSWERS)):
        n = int(lengths[b])
        f = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos]
        row = inputs.labels[b]
        start = len(f) + n + len(p)  # the answer's first position
        assert int((row != IGNORE).sum()) == len(a)
        assert row[start : start + len(a)].tolist() == a
        used = start + len(a)
        assert inputs.attention_mask[b].tolist() == [1] * used + [0] * (row.numel() - used)
        got = inputs.inputs_embeds[b]
        if f:
            assert torch.equal(got[: len(f)], table(torch.tensor(f)))  # chat: history first
        assert torch.equal(got[len(f) : len(f) + n], audio[b, :n])  # then the audio
        assert torch.equal(got[len(f) + n : used], table(torch.tensor(p + a)))
        padding = table(torch.tensor([pad])).expand(row.numel() - used, -1)
        assert torch.equal(got[used:], padding)  # right padding with <|endoftext|>


def test_right_padding_does_not_change_an_items_logits(llm):
    model, tokenizer = llm
    audio = torch.randn(3, 5, model.config.hidden_size)
    lengths = torch.tensor([5, 2, 3])
    batch = build_inputs(model, tokenizer, audio, lengths, PROMPTS, ANSWERS, PREFIXES)
    with torch.no_grad():
        together = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask)
        for b in range(3):
            alone = build_inputs(
                model, tokenizer, audio[b : b + 1], lengths[b : b + 1], PROMPTS[b : b + 1],
                ANSWERS[b : b + 1], PREFIXES[b : b + 1],
            )  # fmt: skip
            logits = model(inputs_embeds=alone.inputs_embeds).logits[0]
            width = logits.shape[0]
            assert torch.allclose(together.logits[b, :width], logits, atol=1e-4)


def test_answer_loss_and_accuracy():
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, IGNORE], [IGNORE, 2, 2, IGNORE, IGNORE]])
    logits = torch.zeros(2, 5, 4)
    for b, t in (labels[:, 1:] != IGNORE).nonzero().tolist():
        logits[b, t, labels[b, t + 1]] = 30.0  # position t predicts label t + 1
    loss, accuracy, count = answer_loss(logits, labels)
    assert count == 4 and accuracy.item() == 1.0 and loss.item() < 1e-6
    logits[0, 1] = torch.tensor([0.0, 0.0, 0.0, -30.0])  # now the 3 is missed
    loss, accuracy, _ = answer_loss(logits, labels)
    assert accuracy.item() == 0.75 and loss.item() > 1.0


def _objective(llm, ctc_weight: float = 0.0) -> SpeechObjective:
    model, tokenizer = llm
    torch.manual_seed(0)
    encoder = SANMEncoder(
        EncoderConfig(output_size=32, attention_heads=4, linear_units=64, num_blocks=2)
    )
    adapter = LinearAdapter(32, model.config.hidden_size, downsample=2, hidden=64)
    vocab = CtcVocab.build(ANSWERS)
    return SpeechObjective(
        Cmvn.identity(), encoder, adapter, model, tokenizer, ctc_vocab=vocab, ctc_weight=ctc_weight
    )


def _batch(feats: torch.Tensor, lengths: torch.Tensor) -> Batch:
    return Batch(
        ids=["a", "b", "c"],
        tasks=TASKS,
        texts=ANSWERS,
        targets=ANSWERS,
        histories=HISTORIES,
        feats=feats,
        feat_lengths=lengths,
    )


def test_frozen_encoder_gets_no_gradient_and_cached_outputs_give_the_same_loss(llm):
    objective = _objective(llm).train()
    assert not objective.encoder.training  # frozen: eval mode even in a training loop
    feats, lengths = torch.randn(3, 12, 560), torch.tensor([12, 7, 9])
    loss, stats = objective(_batch(feats, lengths))
    loss.backward()
    assert all(p.grad is None for p in objective.encoder.parameters())
    assert objective.adapter.linear1.weight.grad is not None
    assert stats["tokens"] > 0 and 0.0 <= stats["acc"] <= 1.0
    with torch.no_grad():
        cached, cached_lengths = objective.encoder(feats, lengths)
    batch = _batch(None, lengths)
    batch.encoder_out, batch.encoder_lengths = cached, cached_lengths
    assert objective(batch)[0].item() == pytest.approx(loss.item(), rel=1e-6)


def test_ctc_weight_mixes_the_losses(llm):
    feats, lengths = torch.randn(3, 12, 560), torch.tensor([12, 7, 9])
    _, answer = _objective(llm, 0.0)(_batch(feats, lengths))
    loss, mixed = _objective(llm, 0.25)(_batch(feats, lengths))
    assert "ctc" in mixed and "ctc" not in answer
    assert loss.item() == pytest.approx(0.25 * mixed["ctc"] + 0.75 * mixed["answer"], rel=1e-5)
    assert mixed["answer"] == pytest.approx(answer["answer"], rel=1e-5)


def test_text_chat_rows_skip_the_encoder_and_match_the_cached_path(llm):
    """The manifest pipeline (features with empty rows) trains as the demo's encoded cache does."""
    objective = _objective(llm, 0.25).train()
    feats, lengths = torch.randn(3, 12, 560), torch.tensor([12, 0, 9])
    feats[1] = 0  # a chat_text row: no audio
    batch = _batch(feats, lengths)
    batch.tasks = ["asr", "chat_text", "chat"]
    hidden, hidden_lengths = objective.encode(batch)
    alone, alone_lengths = objective.encoder(feats[[0, 2]], lengths[[0, 2]])
    assert hidden_lengths.tolist() == [alone_lengths[0], 0, alone_lengths[1]]
    assert torch.equal(hidden[[0, 2]], alone) and not hidden[1].any()
    loss, stats = objective(batch)
    cached = _batch(None, lengths)
    cached.tasks, cached.encoder_out, cached.encoder_lengths = batch.tasks, hidden, hidden_lengths
    assert objective(cached)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.isfinite(loss) and stats["ctc"] > 0  # CTC over the two spoken rows only
    text_only = _batch(torch.zeros(3, 0, 560), torch.zeros(3, dtype=torch.long))
    text_only.tasks = ["chat_text"] * 3
    loss, stats = objective(text_only)
    assert torch.isfinite(loss) and "ctc" not in stats and stats["tokens"] > 0
