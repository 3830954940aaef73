"""The released MooER prompts, and how to read the LLM's answers back.

The strings are part of the checkpoints' contract: the LoRA was trained on exactly these bytes,
trailing spaces included, so they must never be reformatted.
"""

from __future__ import annotations

from mooer.errors import ConfigError

TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)

TASK_PROMPTS = {
    "asr": "Transcribe speech to text. ",
    "ast": "Translate speech to english text. ",  # the MTL model answers "{asr}\n{ast}"
    "s2s_trans": "Translate speech to english speech. ",
    "s2s_chat": "Answer my question with speech. ",
}

AUDIO_START = "<|audio_start|>"  # speech models: audio tokens <A_n> follow it
IM_END = "<|im_end|>"  # end of a turn; the generation's eos
PAD = "<|endoftext|>"  # pad id of a left-padded batch


def build_prompt(task: str) -> str:
    """The templated prompt of a released task; the audio goes before it, not inside it."""
    if task not in TASK_PROMPTS:
        raise ConfigError(f"unknown task {task!r}: expected one of {', '.join(TASK_PROMPTS)}")
    return TEMPLATE.format(TASK_PROMPTS[task])


def build_prompt_text(instruction: str) -> str:
    """A free instruction in the same template (models fine-tuned on other instructions)."""
    if not isinstance(instruction, str):
        raise ConfigError(f"instruction must be a string, got {type(instruction).__name__}")
    return TEMPLATE.format(instruction)


def split_mtl(text: str) -> tuple[str, str]:
    """Split the multi-task answer ``"{asr}\\n{ast}"`` into (transcript, translation).

    Without a newline the whole answer is the transcript and the translation is empty.
    """
    transcript, _, translation = text.strip().partition("\n")
    return transcript.strip(), translation.strip()
