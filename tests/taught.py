"""Teaching a fabricated LLM fixed answers, so that its speech head really speaks in tests.

Random weights never choose ``<|audio_start|>`` or audio tokens by themselves; a few Adam steps
with teacher forcing make the tiny LLM answer given inputs with given tokens.
"""

from __future__ import annotations

import torch

from mooer.llm.conversation import SYSTEM_TURN, question_suffix
from mooer.llm.generation import embed_ids
from mooer.llm.prompts import AUDIO_START, IM_END, build_prompt
from mooer.llm.speech import SPEECH_CHAT_INSTRUCTION

SAMPLED = 0.9  # every answer token this likely: sampling with top_p 0.85 keeps only it


Part = torch.Tensor | list[int]  # audio embeddings (1, Ta, H), or token ids


def teach(
    llm,
    lessons: list[tuple[list[Part], list[int]]],
    confidence: float = SAMPLED,
    steps: int = 100,
) -> None:
    """Train ``llm`` in place to answer each ``(parts, answer ids)`` with the answer.

    ``parts`` are the inputs in order: fixed audio embeddings, or token ids, embedded anew at
    each step (their embeddings train too). The answer ends with ``<|im_end|>`` to teach its end.
    Training stops when every answer token has at least probability ``confidence`` (above 0.5:
    greedy decoding gives the answer); fails the test if it never does.
    """
    torch.manual_seed(0)
    llm.requires_grad_(True)
    optimizer = torch.optim.Adam(llm.parameters(), lr=2e-2)
    worst = 0.0  # the least likely answer token's probability
    for _ in range(steps):
        losses, least = [], []
        for parts, answer in lessons:
            inputs = [
                p.detach() if isinstance(p, torch.Tensor) else embed_ids(llm, p) for p in parts
            ]
            forced = embed_ids(llm, answer[:-1])  # (1, A - 1, H): teacher forcing
            sequence = torch.cat([*inputs, forced], dim=1)  # (1, P + A - 1, H)
            # the last prompt position and the forced ones predict the answer
            logits = llm(inputs_embeds=sequence, logits_to_keep=len(answer)).logits[0]  # (A, V)
            target = torch.tensor(answer)
            losses.append(torch.nn.functional.cross_entropy(logits, target))
            least.append(logits.detach().softmax(-1)[torch.arange(len(answer)), target].min())
        worst = min(p.item() for p in least)
        if worst >= confidence:
            break
        optimizer.zero_grad()
        torch.stack(losses).sum().backward()
        optimizer.step()
    llm.requires_grad_(False)
    assert worst >= confidence, f"the tiny LLM did not learn its answers (p >= {worst:.3f})"


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


CHAT_REPLY = "fine thanks"  # what a taught omni model says (and speaks) to the taught question
TRANSLATION = "hello there"  # and its translation of it


def spoken(text: str, audio_tokens: int) -> str:
    """An omni answer: ``text``, then ``audio_tokens`` audio tokens for the head, then the end."""
    return text + AUDIO_START + "".join(f"<A_{i % 16}>" for i in range(audio_tokens)) + IM_END


def teach_to_speak(model, audio: torch.Tensor) -> None:
    """Teach an omni model to answer the question ``audio`` (1, Ta, H) aloud in a spoken chat
    (``s2s_chat`` after the system turn) with CHAT_REPLY, and to translate it (``s2s_trans``)
    with TRANSLATION, each followed by audio tokens."""
    tok = model.tokenizer
    suffix = question_suffix(SPEECH_CHAT_INSTRUCTION)
    chat = [token_ids(tok, SYSTEM_TURN), audio, token_ids(tok, suffix)]
    translate = [audio, token_ids(tok, build_prompt("s2s_trans"))]
    teach(
        model.llm,
        [
            (chat, token_ids(tok, spoken(CHAT_REPLY, 24))),
            (translate, token_ids(tok, spoken(TRANSLATION, 20))),
        ],
    )
