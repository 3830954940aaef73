from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import AutoModelForCausalLM, Qwen2Config

from mooer.errors import CheckpointError
from mooer.llm.fabricate import write_lora
from mooer.llm.qwen import LORA_TARGETS, attach_lora, load_llm, release_lora_config

TOKENS = torch.tensor([[151644, 872, 198, 3167, 3114, 8806, 311]])


def logits(model, ids: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def linked_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> Path:
    """A folder of symlinks to ``src``'s files, leaving out ``skip``."""
    dst.mkdir()
    for path in src.iterdir():
        if path.name not in skip:
            (dst / path.name).symlink_to(path)
    return dst


def config_only_llm(llm_dir: Path, dst: Path, **changes) -> Path:
    """Just a changed config.json: all that write_lora reads to size an adapter."""
    dst.mkdir()
    config = json.loads((llm_dir / "config.json").read_text())
    config.pop("layer_types", None)  # one entry per layer: rebuilt from num_hidden_layers
    (dst / "config.json").write_text(json.dumps({**config, **changes}))
    return dst


def test_release_lora_on_qwen2_7b_has_the_released_size_and_keys() -> None:
    config = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    )
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    state = get_peft_model_state_dict(attach_lora(base, release_lora_config()))
    params = sum(value.numel() for value in state.values())
    assert params == pytest.approx(161.48e6, rel=1e-3)  # 646 MB adapter_model.bin in fp32
    expected = {
        f"base_model.model.model.layers.{i}.{block}.{proj}.lora_{ab}.weight"
        for i in range(28)
        for block, projs in (("self_attn", "qkvo"), ("mlp", ("up", "gate", "down")))
        for proj in (f"{p}_proj" for p in projs)
        for ab in "AB"
    }
    assert set(state) == expected
    assert state["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].shape == (
        512,
        64,
    )


def test_release_lora_config_fields() -> None:
    config = release_lora_config()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (64, 16, 0.05)
    assert set(config.target_modules) == set(LORA_TARGETS)
    assert (config.bias, config.task_type) == ("none", "CAUSAL_LM")


def test_loaded_tokenizer_pads_left_with_endoftext(base_llm) -> None:
    model, tokenizer = base_llm
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (151643, 151645)
    assert tokenizer.padding_side == "left"
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT 0.21 on transformers 5
def test_lora_merge_changes_outputs_and_equals_the_unmerged_peft_forward(
    llm_dir: Path, lora_dir: Path, base_llm, merged_llm
) -> None:
    merged = logits(merged_llm[0])
    assert (merged - logits(base_llm[0])).abs().max() > 0.1
    assert type(merged_llm[0]).__name__ == "Qwen2ForCausalLM"  # merged and unwrapped
    unmerged = PeftModel.from_pretrained(load_llm(llm_dir)[0], lora_dir).eval()
    torch.testing.assert_close(merged, logits(unmerged), atol=1e-4, rtol=1e-4)


def test_safetensors_lora_loads_like_the_bin(tmp_path: Path, llm_dir: Path, merged_llm) -> None:
    lora = write_lora(tmp_path / "lora", llm_dir, weights_format="safetensors")
    assert not (lora / "adapter_model.bin").exists()
    torch.testing.assert_close(logits(load_llm(llm_dir, lora)[0]), logits(merged_llm[0]))


def test_lora_config_from_peft_050_loads_without_its_base_model_path(
    tmp_path: Path, llm_dir: Path, lora_dir: Path, merged_llm, caplog
) -> None:
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    assert not Path(config["base_model_name_or_path"]).exists()
    lora = linked_copy(lora_dir, tmp_path / "lora", skip=("adapter_config.json",))
    config["field_from_the_future"] = 1
    (lora / "adapter_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="mooer.llm.qwen"):
        model, _ = load_llm(llm_dir, lora)
    assert "field_from_the_future" in caplog.text
    torch.testing.assert_close(logits(model), logits(merged_llm[0]))


@pytest.mark.parametrize(
    ("skip", "message"),
    [
        ("config.json", "has no config.json"),
        ("model.safetensors", "has no weights"),
        ("tokenizer.json", "has no tokenizer files"),
    ],
)
def test_incomplete_llm_dir_is_named(tmp_path: Path, llm_dir: Path, skip: str, message: str):
    broken = linked_copy(llm_dir, tmp_path / "llm", skip=(skip,))
    with pytest.raises(CheckpointError, match=message):
        load_llm(broken)


def test_missing_llm_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere.*does not exist"):
        load_llm(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("skip", "message"),
    [("adapter_config.json", "has no adapter_config.json"), ("adapter_model.bin", "has none of")],
)
def test_incomplete_lora_dir_is_named(
    tmp_path: Path, llm_dir: Path, lora_dir: Path, skip: str, message: str
) -> None:
    broken = linked_copy(lora_dir, tmp_path / "lora", skip=(skip,))
    with pytest.raises(CheckpointError, match=message):
        load_llm(llm_dir, broken)


def test_truncated_lora_weights(tmp_path: Path, llm_dir: Path, lora_dir: Path) -> None:
    broken = linked_copy(lora_dir, tmp_path / "lora", skip=("adapter_model.bin",))
    data = (lora_dir / "adapter_model.bin").read_bytes()
    (broken / "adapter_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read LoRA weights .*adapter_model.bin"):
        load_llm(llm_dir, broken)


def test_lora_for_a_deeper_llm_names_keys_that_match_nothing(tmp_path: Path, llm_dir: Path):
    deeper = config_only_llm(llm_dir, tmp_path / "deeper", num_hidden_layers=3)
    lora = write_lora(tmp_path / "lora", deeper)
    with pytest.raises(CheckpointError, match=r"match no module.*model\.layers\.2\."):
        load_llm(llm_dir, lora)


def test_lora_for_a_wider_llm_names_the_shapes(tmp_path: Path, llm_dir: Path) -> None:
    wider = config_only_llm(llm_dir, tmp_path / "wider", hidden_size=64)
    lora = write_lora(tmp_path / "lora", wider)
    with pytest.raises(CheckpointError, match=r"do not fit.*lora_A\.weight \(8, 64\).*\(8, 32\)"):
        load_llm(llm_dir, lora)


def test_lora_targeting_absent_modules(tmp_path: Path, llm_dir: Path, lora_dir: Path) -> None:
    lora = linked_copy(lora_dir, tmp_path / "lora", skip=("adapter_config.json",))
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn"]  # a GPT-2 name
    (lora / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit the LLM"):
        load_llm(llm_dir, lora)


def test_lora_missing_some_keys(tmp_path: Path, llm_dir: Path, lora_dir: Path) -> None:
    lora = linked_copy(lora_dir, tmp_path / "lora", skip=("adapter_model.bin",))
    weights = torch.load(lora_dir / "adapter_model.bin", weights_only=True)
    del weights["base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"]
    torch.save(weights, lora / "adapter_model.bin")
    with pytest.raises(CheckpointError, match=r"1 LoRA keys are missing.*layers\.1\.mlp\.up_proj"):
        load_llm(llm_dir, lora)


def test_tokenizer_without_the_turn_tokens(tmp_path: Path, llm_dir: Path) -> None:
    broken = linked_copy(
        llm_dir, tmp_path / "llm", skip=("tokenizer.json", "tokenizer_config.json")
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        text = (llm_dir / name).read_text()
        (broken / name).write_text(text.replace("<|im_end|>", "<|im_stop|>"))
    with pytest.raises(CheckpointError, match="lacks <\\|im_end\\|>"):
        load_llm(broken)
