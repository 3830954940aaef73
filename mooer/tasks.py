"""The task recipe: which released prompts a task runs, and how their answers are read.

Every path that decodes speech for a task (offline files, live partials and finals, spoken
translation, evaluation) takes its prompts and reads its answers here, from audio that is
already encoded: an utterance is encoded once, whatever is asked of it.

========  ======================================  =========================================
task      prompts run                             gives
========  ======================================  =========================================
asr       ``asr``                                 the transcript
ast       ``ast``                                 the translation (an MTL model answers
                                                  ``"{transcript}\\n{translation}"``)
mtl       ``ast`` on an MTL model, else ``asr``   the transcript and the translation
          then ``ast``
========  ======================================  =========================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mooer.errors import ConfigError
from mooer.llm.backend import LLMBackend, Waiting, run_blocking, waiting
from mooer.llm.decoding import OFFLINE, DecodingOptions
from mooer.llm.prompts import build_prompt, split_mtl
from mooer.text import join_texts

if TYPE_CHECKING:
    from mooer.model import SpeechLLM

TASKS = ("asr", "ast", "mtl")


@dataclass(frozen=True)
class Texts:
    """What a task gives for one utterance; None where the task does not ask for it."""

    transcript: str | None = None
    translation: str | None = None

    @staticmethod
    def join(parts: Sequence[Texts]) -> Texts:
        """The texts of consecutive pieces of one recording as one."""

        def joined(name: str) -> str | None:
            values = [getattr(p, name) for p in parts]
            return None if all(v is None for v in values) else join_texts(v or "" for v in values)

        return Texts(joined("transcript"), joined("translation"))


def check_task(model: SpeechLLM, task: str) -> None:
    """Refuse a task that is unknown, or that the loaded checkpoint variant cannot do."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if task == "mtl" and model.paths is not None and model.paths.layout == "mtl":
        if not model.is_mtl:
            raise ConfigError("task mtl needs the asr_ast_mtl variant of an MTL checkpoint")


def prompt_tasks(model: SpeechLLM, task: str) -> tuple[str, ...]:
    """The released prompts that ``task`` runs on ``model``, in order (see the module table)."""
    if task == "asr":
        return ("asr",)
    if task == "ast" or model.is_mtl:
        return ("ast",)
    return ("asr", "ast")


def read_answers(model: SpeechLLM, task: str, answers: Sequence[str]) -> Texts:
    """The task's texts from the answers to ``prompt_tasks(model, task)``, one each."""
    transcript = translation = ""
    for prompt, answer in zip(prompt_tasks(model, task), answers, strict=True):
        if prompt == "asr":
            transcript = answer
        elif model.is_mtl:
            transcript, translation = split_mtl(answer)
        else:
            translation = answer
    return Texts(
        transcript if task in ("asr", "mtl") else None,
        translation if task in ("ast", "mtl") else None,
    )


@torch.inference_mode()
def decode(
    model: SpeechLLM,
    embeds: Tensor,
    lengths: Tensor,
    task: str,
    options: DecodingOptions = OFFLINE,
    *,
    step_by_step: bool = False,
) -> list[Texts]:
    """The task's texts for each encoded utterance: ``embeds`` (B, Ta, H), ``lengths`` (B,).

    ``step_by_step``: decode each item with the token loop (greedy or sampled, one beam), far
    cheaper on a CPU than ``generate()`` for one short utterance: the live partials.
    """
    return run_blocking(decode_waiting(model, embeds, lengths, task, options, step_by_step))


def decode_waiting(
    model: SpeechLLM,
    embeds: Tensor,
    lengths: Tensor,
    task: str,
    options: DecodingOptions = OFFLINE,
    step_by_step: bool = False,
    should_stop: Callable[[], bool] | None = None,
    translation_from: str = "",
    backend: LLMBackend | None = None,
) -> Waiting[list[Texts]]:
    """``decode`` as engine work: every prompt of every item is asked of the model's LLM
    backend at once, then each answer not ready yet is yielded as a future to wait for (the
    engine runs other clients' work meanwhile; the hf backend's answers are ready at once).

    ``should_stop``: see ``LLMBackend.answers``. ``translation_from``: words of the
    translation already sent to a client (a live utterance's committed English): the ``ast``
    answer is made to go on from them, so it never contradicts them (not on an MTL variant,
    whose translation follows its transcript in one answer). ``backend``: who answers
    (default: the model's LLM backend; a live session's engine passes its batching one).
    """
    check_task(model, task)
    tasks = prompt_tasks(model, task)
    forced = {p: _forced(model, p, translation_from) for p in tasks}
    backend = backend or model.llm_backend
    with torch.inference_mode():
        asked = [
            backend.answers(
                model,
                embeds,
                lengths,
                build_prompt(p) + forced[p],
                options,
                step_by_step,
                should_stop,
            )
            for p in tasks
        ]
    flat = yield from waiting([future for futures in asked for future in futures])
    count = len(embeds)
    answers = [  # per prompt
        [join_texts([forced[p], a]) for a in flat[i * count : (i + 1) * count]]
        for i, p in enumerate(tasks)
    ]
    return [read_answers(model, task, item) for item in zip(*answers)]


def _forced(model: SpeechLLM, prompt_task: str, translation_from: str) -> str:
    """The start of the answer to ``prompt_task`` that is given rather than decoded."""
    if prompt_task != "ast" or model.is_mtl:
        return ""
    return translation_from.strip()
