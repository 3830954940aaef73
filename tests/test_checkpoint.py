from __future__ import annotations

import os
import shutil
import time

import pytest

from mooer import checkpoint
from mooer.errors import CheckpointError


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_mtl5k_variant_follows_task(fabricated):
    root = fabricated("mtl-5k")
    llm = root.parent / "llm"
    assert checkpoint.locate(root, llm=llm, task="asr").variant == "asr"
    assert checkpoint.locate(root, llm=llm, task="ast").variant == "ast"
    paths = checkpoint.locate(root, llm=llm, task="mtl")
    assert paths.variant == "asr_ast_mtl"
    assert paths.adapter == root / "asr_ast_mtl" / "adapter_project.pt"
    assert paths.lora == root / "asr_ast_mtl" / "lora_weights"
    assert paths.cmvn == root / "paraformer_encoder" / "am.mvn"
    assert checkpoint.locate(root, llm=llm, task="asr", variant="ast").variant == "ast"


def test_a_set_of_tasks_takes_the_variant_serving_them_all(fabricated, mtl_asr_ast):
    assert checkpoint.task_serving(["asr", "asr"]) == "asr"
    assert checkpoint.task_serving(["ast", "chat"]) == "ast"
    assert checkpoint.task_serving(["asr", "ast"]) == checkpoint.task_serving(["mtl"]) == "mtl"
    assert checkpoint.task_serving(["chat"]) == checkpoint.task_serving([]) == "asr"
    both = checkpoint.task_serving(["ast", "asr"])
    root = fabricated("mtl-5k")
    assert checkpoint.locate(root, llm=root.parent / "llm", task=both).variant == "asr_ast_mtl"
    with pytest.raises(CheckpointError, match="serves task 'mtl': it has asr, ast") as err:
        checkpoint.locate(mtl_asr_ast, llm=root.parent / "llm", task=both)
    assert str(mtl_asr_ast) in str(err.value) and "--variant" in str(err.value)


def test_mtl80k_has_asr_only(fabricated):
    root = fabricated("mtl-80k")
    llm = root.parent / "llm"
    assert checkpoint.locate(root, llm=llm).variant == "asr"
    with pytest.raises(CheckpointError, match="serves task 'ast'.*it has asr"):
        checkpoint.locate(root, llm=llm, task="ast")
    with pytest.raises(CheckpointError, match="variant 'ast' not in"):
        checkpoint.locate(root, llm=llm, variant="ast")


def test_mtl_without_llm_says_pass_llm(fabricated):
    with pytest.raises(CheckpointError, match="pass --llm"):
        checkpoint.locate(fabricated("mtl-5k"))


def test_flat_layout_finds_speech_head(fabricated):
    root = fabricated("omni")
    paths = checkpoint.locate(root)
    assert paths.layout == "flat"
    assert paths.llm == root / "llm" and paths.lora == root / "lora"
    assert paths.generator.name == "g_00112000" and paths.speaker_encoder.name == "spk_00112000"
    assert paths.prompt_wav == root / "prompt.wav" and paths.has_speech_head


@pytest.mark.parametrize(
    "remove, message",
    [
        ("am.mvn", "CMVN statistics"),
        ("paraformer-encoder.pth", "encoder weights"),
        ("adapter_project.pt", "adapter weights"),
        ("llm/config.json", "Qwen2 config"),
        ("lora/adapter_config.json", "LoRA config"),
    ],
)
def test_missing_piece_is_named(fabricated, tmp_path, remove, message):
    root = _copy(fabricated("omni"), tmp_path / "omni")
    os.remove(root / remove)
    with pytest.raises(CheckpointError, match=message) as err:
        checkpoint.locate(root)
    assert str(root / remove) in str(err.value)


def test_missing_mtl_lora_folder_is_named(fabricated, tmp_path):
    root = _copy(fabricated("mtl-5k"), tmp_path / "mtl")
    shutil.rmtree(root / "ast" / "lora_weights")
    with pytest.raises(CheckpointError, match="LoRA folder of ast/"):
        checkpoint.locate(root, llm=fabricated("mtl-5k").parent / "llm", task="ast")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is not a MooER checkpoint"):
        checkpoint.locate(tmp_path)
    with pytest.raises(CheckpointError, match="model directory not found"):
        checkpoint.locate(tmp_path / "nope")


def test_hub_id_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(CheckpointError, match="could not be downloaded") as err:
        checkpoint.locate("mtspeech/MooER-MTL-5K-not-here")
    assert "local path" in str(err.value)
    assert time.monotonic() - start < 120
