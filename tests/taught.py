"""Teaching a fabricated LLM fixed answers, so that its speech head really speaks in tests.

Random weights never choose ``<|audio_start|>`` or audio tokens by themselves; a few Adam steps
with teacher forcing make the tiny LLM answer given inputs with given tokens.
"""

from __future__ import annotations

import torch

from mooer.llm.conversation import embed_ids

MAX_LOSS = 0.005  # mean cross-entropy: every answer token p > 0.9, so top_p 0.85 keeps only it


Part = torch.Tensor | list[int]  # audio embeddings (1, Ta, H), or token ids


def teach(llm, lessons: list[tuple[list[Part], list[int]]], steps: int = 100) -> None:
    """Train ``llm`` in place to answer each ``(parts, answer ids)`` with the answer.

    ``parts`` are the inputs in order: fixed audio embeddings, or token ids, embedded anew at
    each step (their embeddings train too). The answer ends with ``<|im_end|>`` to teach its end.
    Fails the test if the LLM does not learn.
    """
    torch.manual_seed(0)
    llm.requires_grad_(True)
    optimizer = torch.optim.Adam(llm.parameters(), lr=2e-2)
    worst = float("inf")
    for _ in range(steps):
        losses = []
        for parts, answer in lessons:
            inputs = [
                p.detach() if isinstance(p, torch.Tensor) else embed_ids(llm, p) for p in parts
            ]
            prompt = sum(part.shape[1] for part in inputs)
            forced = embed_ids(llm, answer[:-1])  # (1, A - 1, H): teacher forcing
            sequence = torch.cat([*inputs, forced], dim=1)  # (1, P + A - 1, H)
            logits = llm(inputs_embeds=sequence).logits[0, prompt - 1 :]  # (A, V)
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(answer)))
        loss = torch.stack(losses).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        worst = max(item.item() for item in losses)
        if worst < MAX_LOSS:
            break
    llm.requires_grad_(False)
    assert worst < MAX_LOSS, f"the tiny LLM did not learn its answers (worst loss {worst:.4f})"


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]
