"""Trained model -> a folder in the released flat layout, loadable by ``mooer.model.load_model``.

::

    am.mvn                   CMVN (Kaldi nnet1 text)
    paraformer-encoder.pth   encoder state dict, no prefix
    adapter_project.pt       encoder_projector.linear{1,2}.{weight,bias}
    llm/                     Hugging Face Qwen2 dir + tokenizer (the base model under a LoRA)
    lora/                    PEFT LoRA dir (absent when the whole LLM was trained)
    mooer.json               provenance: the training config and the encoder's dims

Training-only parts (the CTC head) are left out. A CTC-only stage (no LLM) exports am.mvn, the
encoder and mooer.json: the next stage's ``model.cmvn`` and ``model.encoder_init``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mooer.asr.adapter import adapter_state_dict
from mooer.asr.quantize import refuse_quantized
from mooer.train.config import TrainConfig
from mooer.train.objective import SpeechObjective

MANIFEST = "mooer.json"
LORA_MARK = "lora_"
BASE_LAYER = ".base_layer."  # PEFT's name for the wrapped original weight


def export_model(
    objective: SpeechObjective,
    out_dir: str | Path,
    cfg: TrainConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``objective``'s inference parts to ``out_dir``; returns it."""
    refuse_quantized(objective, "export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    objective.cmvn.save(out / "am.mvn")
    torch.save(_cpu(objective.encoder.state_dict()), out / "paraformer-encoder.pth")
    if objective.adapter is not None:
        torch.save(_cpu(adapter_state_dict(objective.adapter)), out / "adapter_project.pt")
    if objective.llm is not None:
        _save_llm(objective.llm, out)
        objective.tokenizer.save_pretrained(out / "llm")
    info: dict[str, Any] = {
        "format": "mooer-flat",
        "encoder": dataclasses.asdict(objective.encoder.cfg),
        "config": cfg.to_dict() if cfg is not None else None,
        **(extra or {}),
    }
    (out / MANIFEST).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def _save_llm(llm: nn.Module, out: Path) -> None:
    """A plain model to ``llm/``; a PEFT model as its untouched base to ``llm/`` + ``lora/``."""
    from peft import PeftModel

    if not isinstance(llm, PeftModel):
        llm.save_pretrained(out / "llm")
        return
    base = llm.get_base_model()
    state = {
        name.replace(BASE_LAYER, "."): tensor
        for name, tensor in base.state_dict().items()
        if LORA_MARK not in name
    }  # the original weights, under their original names
    base.save_pretrained(out / "llm", state_dict=state)
    llm.save_pretrained(out / "lora")


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
