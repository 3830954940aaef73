from __future__ import annotations

import pytest

from mooer.asr.encoder import EncoderConfig
from mooer.errors import ConfigError
from mooer.train.config import LORA_TARGETS, config_from_dict, load_config

MINIMAL = {
    "data": {"train": ["train.jsonl"]},
    "model": {"encoder": {"output_size": 32, "num_blocks": 2}, "llm": "llm"},
    "optim": {"max_steps": 10},
}


def _with(section: str, **values) -> dict:
    raw = {key: dict(value) for key, value in MINIMAL.items()}
    raw[section] = {**raw.get(section, {}), **values}
    return raw


def test_yaml_file_with_defaults_and_nested_encoder(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "output_dir: runs/x\n"
        "data: {train: a.jsonl, max_frames_in_batch: 3000}\n"
        "model:\n  encoder: {output_size: 64, num_blocks: 3}\n  llm_scratch: {hidden_size: 64}\n"
        "optim: {lr: 1e-3, betas: [0.9, 0.98], max_steps: 100}\n"
    )
    cfg = load_config(path)
    assert cfg.output_dir == "runs/x"
    assert cfg.data.train == ["a.jsonl"]  # a single path becomes a list
    assert cfg.data.max_frames_in_batch == 3000
    assert cfg.model.encoder == EncoderConfig(output_size=64, num_blocks=3)
    assert cfg.model.llm_scratch.hidden_size == 64 and cfg.model.llm_scratch.num_layers == 4
    assert cfg.optim.lr == pytest.approx(1e-3)  # YAML 1.1 reads "1e-3" as a string
    assert cfg.optim.betas == (0.9, 0.98)
    # the release's LoRA unless told otherwise
    assert (cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout) == (64, 16, 0.05)
    assert tuple(cfg.model.lora_targets) == LORA_TARGETS
    assert cfg.model.train_encoder is False


def test_overrides_apply_before_validation(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: {train: a.jsonl}\nmodel: {encoder: {}, llm: x}\noptim: {max_steps: 5}\n")
    cfg = load_config(path, overrides=["optim.lr=0.5", "model.full_llm=true"])
    assert cfg.optim.lr == 0.5 and cfg.model.full_llm is True
    with pytest.raises(ConfigError, match="optim.lr: expected a positive number, got -1"):
        load_config(path, overrides=["optim.lr=-1"])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_with("optim", lr=-1), "optim.lr: expected a positive number, got -1"),
        (_with("optim", lrate=1), "optim.lrate: unknown key"),
        (_with("optim", grad_accum=1.5), "optim.grad_accum=1.5: expected an integer$"),
        (_with("optim", schedule="step"), "optim.schedule: expected one of cosine, linear"),
        (_with("optim", betas=[0.9]), "optim.betas: expected 2 values"),
        (_with("optim", bf16="yes"), "optim.bf16: expected true or false, got 'yes'"),
        (_with("model", lora_dropout=1.0), "model.lora_dropout: expected a number in \\[0, 1\\)"),
        (_with("model", lora_targets=["qkv"]), "model.lora_targets: expected names among"),
        (_with("model", encoder={"output_size": 30}), "model.encoder: .*not divisible"),
        (_with("model", encoder={"blocks": 3}), "model.encoder.blocks: unknown key"),
        (
            _with("data", max_frames_in_batch="many"),
            "data.max_frames_in_batch='many': expected an integer$",
        ),
        (_with("data", min_duration=30), "data.min_duration: expected less than"),
        (_with("optim", max_steps=None), "optim.max_steps: set max_steps or max_epochs"),
        (
            _with("optim", max_steps=None, max_epochs=1),
            "optim.max_steps: required by schedule 'cosine'",
        ),
        ({**MINIMAL, "data": {}}, "data.train: expected at least one"),
        ({**MINIMAL, "model": {"llm": "x"}}, "model.checkpoint: give a checkpoint folder"),
        ({**MINIMAL, "logging": 1}, "logging: unknown key"),
        (
            {**MINIMAL, "deepspeed": {"gradient_accumulation_steps": 4}},
            "deepspeed.gradient_accumulation_steps: set by the trainer from optim.grad_accum",
        ),
        (
            {**MINIMAL, "deepspeed": {"bf16": {"enabled": True}}},
            r"deepspeed.bf16: set by the trainer from optim.bf16 \(autocast\)",
        ),
        (
            {**MINIMAL, "deepspeed": {"zero_optimization": {"stage": 3}}},
            "deepspeed.zero_optimization.stage: expected 0, 1 or 2 .*got 3",
        ),
        ({**MINIMAL, "deepspeed": {"zero_optimization": 2}}, "deepspeed.zero_optimization: exp"),
    ],
)
def test_bad_values_name_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_epochs_alone_need_a_constant_schedule():
    raw = _with("optim", max_steps=None, max_epochs=2, schedule="constant")
    assert config_from_dict(raw).optim.max_epochs == 2


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("data: {train: a.jsonl}\nmodel: {encoder: {}, llm: x}\noptim: {max_steps: 5}\n")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(good, overrides=["lr"])


def test_a_deepspeed_file_like_the_release_keeps_zero_and_drops_what_optim_sets(
    release_zero2, tmp_path
):
    with pytest.warns(UserWarning) as caught:
        cfg = config_from_dict({**MINIMAL, "deepspeed": str(release_zero2)})
    dropped = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
               "scheduler", "fp16", "bf16")  # fmt: skip
    assert all(key in str(caught[0].message) for key in dropped)
    assert "gradient_accumulation_steps by optim.grad_accum" in str(caught[0].message)
    assert set(cfg.deepspeed) == {
        "steps_per_print",
        "zero_optimization",
        "activation_checkpointing",
    }
    assert cfg.deepspeed["zero_optimization"]["overlap_comm"] is True
    assert cfg.optim.grad_accum == 1  # the file's 2 is not adopted

    for text, message in (("{", "not valid JSON"), ("[1, 2]", "expected a JSON object")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=f"deepspeed: .*bad.json.*{message}"):
            config_from_dict({**MINIMAL, "deepspeed": str(bad)})
    with pytest.raises(ConfigError, match="DeepSpeed config file not found: .*nope.json"):
        config_from_dict({**MINIMAL, "deepspeed": str(tmp_path / "nope.json")})
    stage3 = tmp_path / "zero3.json"
    stage3.write_text('{"zero_optimization": {"stage": 3}}')
    with pytest.raises(ConfigError, match="stage: expected 0, 1 or 2"):
        config_from_dict({**MINIMAL, "deepspeed": str(stage3)})
