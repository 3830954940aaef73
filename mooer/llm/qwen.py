"""Loading the Qwen2 LLM and merging a released LoRA into it.

The released LoRA folders were written by PEFT 0.5.0. Rather than trusting PEFT to load them
(it stays silent on keys it cannot place and may look up the training machine's
``base_model_name_or_path``), the adapter is read here, checked key by key and shape by shape
against the local base model, and only then merged, so that a wrong pairing of LoRA and LLM
fails with a message instead of producing a quietly unchanged model.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import torch
from peft import (
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mooer.errors import CheckpointError, read_json_file
from mooer.llm.prompts import IM_END, PAD

log = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj")
LORA_CONFIG_FILE = "adapter_config.json"
LORA_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin")
_MAX_NAMED_KEYS = 5


def release_lora_config(r: int = 64, alpha: int = 16, dropout: float = 0.05) -> LoraConfig:
    """The LoRA the MooER models were trained with (r=64 for MTL-5K, r=128 for MTL-80K)."""
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )


def load_llm(
    llm_dir: str | Path,
    lora_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A Qwen2 model dir (plus an optional PEFT LoRA dir, merged), in eval mode, and its tokenizer.

    Only local files are read. The tokenizer pads with ``<|endoftext|>`` on the left and ends
    turns with ``<|im_end|>``.
    """
    llm_dir = Path(llm_dir)
    _check_llm_dir(llm_dir)
    lora = None
    if lora_dir is not None:  # read first: a bad LoRA fails before a 15 GB model is loaded
        lora_dir = Path(lora_dir)
        lora = (lora_dir, read_lora_config(lora_dir), read_lora_weights(lora_dir))
    tokenizer = _load_tokenizer(llm_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot load the LLM from {llm_dir}: {exc}") from exc
    vocab_size = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"the tokenizer in {llm_dir} has {len(tokenizer)} tokens but the model's "
            f"embedding has only {vocab_size} rows"
        )
    model.to(device)
    if lora:
        model = _merge(model, *lora)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def attach_lora(
    model: PreTrainedModel, config: LoraConfig, low_cpu_mem_usage: bool = False
) -> PeftModel:
    """``peft.get_peft_model`` without the deprecation noise PEFT 0.21 makes on transformers 5."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config, low_cpu_mem_usage=low_cpu_mem_usage)


def _merge(
    model: PreTrainedModel, lora_dir: Path, config: LoraConfig, weights: dict[str, torch.Tensor]
) -> PreTrainedModel:
    try:
        peft_model = attach_lora(model, config, low_cpu_mem_usage=True)
    except ValueError as exc:  # PEFT's "target modules ... not found in the base model"
        raise CheckpointError(f"the LoRA in {lora_dir} does not fit the LLM: {exc}") from exc
    _check_lora_weights(weights, get_peft_model_state_dict(peft_model), lora_dir)
    device = next(model.parameters()).device
    weights = {key: value.to(device) for key, value in weights.items()}
    set_peft_model_state_dict(peft_model, weights, low_cpu_mem_usage=True)
    return peft_model.merge_and_unload()


def read_lora_config(lora_dir: str | Path) -> LoraConfig:
    """The LoRA config of a PEFT dir; keys the installed PEFT does not know are dropped."""
    lora_dir = Path(lora_dir)
    path = lora_dir / LORA_CONFIG_FILE
    if not lora_dir.is_dir():
        raise CheckpointError(f"LoRA dir {lora_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"LoRA dir {lora_dir} has no {LORA_CONFIG_FILE}")
    raw = read_json_file(path, CheckpointError)
    if raw.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {raw['peft_type']!r}, expected 'LORA'")
    known = {field.name for field in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        log.warning("%s: ignoring keys this PEFT version does not know: %s", path, unknown)
    fields = {key: value for key, value in raw.items() if key in known}
    # The training machine's base model path means nothing here: the base is the local LLM.
    fields["base_model_name_or_path"] = None
    fields["inference_mode"] = True
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a usable LoRA config: {exc}") from exc


def read_lora_weights(lora_dir: str | Path) -> dict[str, torch.Tensor]:
    """The adapter tensors of a PEFT dir (safetensors, or the torch pickle PEFT 0.5.0 wrote)."""
    lora_dir = Path(lora_dir)
    for name in LORA_WEIGHT_FILES:
        path = lora_dir / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                return load_file(path)
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign files fail in many library-specific ways
            raise CheckpointError(f"cannot read LoRA weights {path}: {exc}") from exc
        if not isinstance(weights, dict):
            raise CheckpointError(f"{path} holds a {type(weights).__name__}, not a state dict")
        return weights
    raise CheckpointError(f"LoRA dir {lora_dir} has none of {', '.join(LORA_WEIGHT_FILES)}")


def _check_lora_weights(
    weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lora_dir: Path
) -> None:
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{len(unexpected)} LoRA keys in {lora_dir} match no module of the LLM, "
            f"e.g. {_some(unexpected)}"
        )
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(
            f"{len(missing)} LoRA keys are missing from {lora_dir}, e.g. {_some(missing)}"
        )
    wrong = [
        f"{key} {tuple(weights[key].shape)} (the LLM needs {tuple(expected[key].shape)})"
        for key in sorted(weights)
        if weights[key].shape != expected[key].shape
    ]
    if wrong:
        raise CheckpointError(
            f"{len(wrong)} LoRA weights in {lora_dir} do not fit the LLM: {_some(wrong)}"
        )


def _check_llm_dir(llm_dir: Path) -> None:
    if not llm_dir.is_dir():
        raise CheckpointError(f"LLM dir {llm_dir} does not exist")
    if not (llm_dir / "config.json").is_file():
        raise CheckpointError(f"LLM dir {llm_dir} has no config.json")
    if not any(any(llm_dir.glob(pattern)) for pattern in _WEIGHT_GLOBS):
        raise CheckpointError(
            f"LLM dir {llm_dir} has no weights (*.safetensors or pytorch_model*.bin)"
        )
    has_fast = (llm_dir / "tokenizer.json").is_file()
    has_bpe = (llm_dir / "vocab.json").is_file() and (llm_dir / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        raise CheckpointError(
            f"LLM dir {llm_dir} has no tokenizer files (tokenizer.json, or vocab.json and "
            "merges.txt)"
        )


def _load_tokenizer(llm_dir: Path) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(llm_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer from {llm_dir}: {exc}") from exc
    vocab = tokenizer.get_vocab()
    absent = [token for token in (IM_END, PAD) if token not in vocab]
    if absent:
        raise CheckpointError(f"the tokenizer in {llm_dir} lacks {', '.join(absent)}")
    tokenizer.pad_token = PAD
    tokenizer.eos_token = IM_END
    tokenizer.padding_side = "left"
    return tokenizer


def _some(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_NAMED_KEYS])
    return shown if len(items) <= _MAX_NAMED_KEYS else f"{shown}, ..."
