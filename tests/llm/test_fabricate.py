from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mooer.errors import ConfigError
from mooer.llm.fabricate import qwen_tokenizer_dir, write_lora

PEFT_050_FIELDS = {
    "auto_mapping",
    "base_model_name_or_path",
    "bias",
    "fan_in_fan_out",
    "inference_mode",
    "init_lora_weights",
    "layers_pattern",
    "layers_to_transform",
    "lora_alpha",
    "lora_dropout",
    "modules_to_save",
    "peft_type",
    "r",
    "revision",
    "target_modules",
    "task_type",
}


def test_qwen_tokenizer_dir_holds_the_bpe_files() -> None:
    names = {path.name for path in qwen_tokenizer_dir().iterdir()}
    assert {"tokenizer.json", "vocab.json", "merges.txt"} <= names


def test_tiny_llm_dir_is_a_small_qwen2_with_the_speech_tokens(
    llm_dir: Path, base_llm, speech_tokens: tuple[str, ...]
) -> None:
    model, tokenizer = base_llm
    config = json.loads((llm_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["tie_word_embeddings"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 2)
    assert config["vocab_size"] >= len(tokenizer) and config["vocab_size"] % 64 == 0
    assert sum(path.stat().st_size for path in llm_dir.iterdir()) < 40e6
    ids = tokenizer.convert_tokens_to_ids(list(speech_tokens))
    assert ids == [len(tokenizer) - 3, len(tokenizer) - 2, len(tokenizer) - 1]
    assert tokenizer("hi<|audio_start|><A_1>")["input_ids"][-2:] == ids[::2]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_lora_dir_is_laid_out_like_the_release(lora_dir: Path) -> None:
    assert {path.name for path in lora_dir.iterdir()} == {
        "adapter_config.json",
        "adapter_model.bin",
        "README.md",
    }
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    assert set(config) == PEFT_050_FIELDS
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (8, 16, "CAUSAL_LM")
    weights = torch.load(lora_dir / "adapter_model.bin", weights_only=True)
    assert len(weights) == 2 * 2 * 7  # layers x (A, B) x targets
    key = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"
    assert weights[key].shape == (16, 8)  # 1 kv head x 16 dims, r=8
    assert all(value.abs().sum() > 0 for value in weights.values())


def test_lora_seed_and_format(tmp_path: Path, llm_dir: Path, lora_dir: Path) -> None:
    other = write_lora(tmp_path / "other", llm_dir, seed=1, weights_format="safetensors")
    first = torch.load(lora_dir / "adapter_model.bin", weights_only=True)
    second = load_file(other / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert not any(torch.equal(first[key], second[key]) for key in first)


def test_lora_rejects_an_unknown_format(tmp_path: Path, llm_dir: Path) -> None:
    with pytest.raises(ConfigError, match="'pt'"):
        write_lora(tmp_path, llm_dir, weights_format="pt")
