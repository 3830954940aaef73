"""Fixtures shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def release_zero2(tmp_path) -> Path:
    """A DeepSpeed file shaped like the release's ``deepspeed_config_zero2.json``: its own
    batch sizes, accumulation, Adam, warmup-decay schedule and bf16 weights beside the ZeRO-2
    and activation-checkpointing settings."""
    path = tmp_path / "deepspeed_config_zero2.json"
    settings = {
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 2,
        "steps_per_print": 100,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-4}},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {"total_num_steps": 1000000, "warmup_max_lr": 1e-4, "warmup_num_steps": 1000},
        },
        "fp16": {"enabled": False, "loss_scale": 0, "initial_scale_power": 16},
        "bf16": {"enabled": True},
        "zero_optimization": {
            "stage": 2,
            "allgather_partitions": True,
            "allgather_bucket_size": 2e8,
            "overlap_comm": True,
            "reduce_scatter": True,
            "reduce_bucket_size": 2e8,
            "contiguous_gradients": True,
        },
        "activation_checkpointing": {"partition_activations": True, "cpu_checkpointing": True},
    }
    path.write_text(json.dumps(settings, indent=2))
    return path


@pytest.fixture()
def loaded_variants(monkeypatch) -> list[str | None]:
    """The variant folder of every model a command loads (the real loader, watched)."""
    import mooer.model

    variants: list[str | None] = []
    real = mooer.model.load_model

    def watched(*args, **kwargs):
        model = real(*args, **kwargs)
        variants.append(model.paths.variant)
        return model

    monkeypatch.setattr(mooer.model, "load_model", watched)
    return variants
