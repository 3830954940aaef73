from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mooer.errors import ConfigError
from mooer.llm.fabricate import qwen_tokenizer_dir
from mooer.llm.prompts import (
    TASK_PROMPTS,
    build_prompt,
    build_prompt_text,
    split_mtl,
)

RELEASED = {
    "asr": "Transcribe speech to text. ",
    "ast": "Translate speech to english text. ",
    "s2s_trans": "Translate speech to english speech. ",
    "s2s_chat": "Answer my question with speech. ",
}
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
# The asr prompt as Qwen's tokenizer encodes it; note 220, the trailing space, before <|im_end|>.
ASR_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198]
ASR_IDS += [3167, 3114, 8806, 311, 1467, 13, 220, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return AutoTokenizer.from_pretrained(qwen_tokenizer_dir(), local_files_only=True)


def test_task_strings_are_the_released_bytes() -> None:
    assert TASK_PROMPTS == RELEASED
    for task, text in RELEASED.items():
        assert build_prompt(task) == HEAD + text + TAIL


def test_free_instruction_uses_the_same_template() -> None:
    assert build_prompt_text("Summarise the speech. ") == HEAD + "Summarise the speech. " + TAIL


def test_unknown_task_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="'chat'.*asr, ast, s2s_trans, s2s_chat"):
        build_prompt("chat")


@pytest.mark.parametrize("task", sorted(RELEASED))
def test_prompt_round_trips_through_the_real_tokenizer(qwen_tokenizer, task: str) -> None:
    ids = qwen_tokenizer(build_prompt(task))["input_ids"]  # default add_special_tokens=True
    assert ids[0] == 151644  # <|im_start|>: no BOS in front
    assert ids.count(151644) == 3 and ids.count(151645) == 2
    assert qwen_tokenizer.decode(ids) == build_prompt(task)


def test_asr_prompt_ids_are_golden(qwen_tokenizer) -> None:
    assert qwen_tokenizer(build_prompt("asr"))["input_ids"] == ASR_IDS


def test_special_tokens_are_single_ids(qwen_tokenizer) -> None:
    ids = qwen_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [151643, 151644, 151645]
    assert qwen_tokenizer("<|im_end|>")["input_ids"] == [151645]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("你好世界\nHello world", ("你好世界", "Hello world")),
        ("  你好世界 \n\n  Hello world \n", ("你好世界", "Hello world")),
        ("你好世界", ("你好世界", "")),
        ("", ("", "")),
    ],
)
def test_split_mtl(answer: str, expected: tuple[str, str]) -> None:
    assert split_mtl(answer) == expected
