"""Tiny fabricated LLM and LoRA folders shared by the LLM tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mooer.llm.fabricate import write_lora, write_tiny_llm
from mooer.llm.qwen import load_llm

SPEECH_TOKENS = ("<|audio_start|>", "<A_0>", "<A_1>")


@pytest.fixture(scope="session")
def speech_tokens() -> tuple[str, ...]:
    return SPEECH_TOKENS


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llm(tmp_path_factory.mktemp("llm"), extra_special_tokens=SPEECH_TOKENS)


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, llm_dir: Path) -> Path:
    return write_lora(tmp_path_factory.mktemp("lora"), llm_dir)


@pytest.fixture(scope="session")
def base_llm(llm_dir: Path):
    """(model, tokenizer) without LoRA; tests must not modify the model."""
    return load_llm(llm_dir)


@pytest.fixture(scope="session")
def merged_llm(llm_dir: Path, lora_dir: Path):
    """(model, tokenizer) with the LoRA merged; tests must not modify the model."""
    return load_llm(llm_dir, lora_dir)
