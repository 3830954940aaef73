"""A quantised model is never trained or exported: int8 layers have no gradients or fp32 weights."""

from __future__ import annotations

import pytest

from mooer.asr.quantize import quantize_int8
from mooer.errors import ConfigError
from mooer.model import load_model
from mooer.train.export import export_model
from mooer.train.objective import SpeechObjective


def _objective(model) -> SpeechObjective:
    return SpeechObjective(
        model.frontend.cmvn, model.encoder, model.adapter, model.llm, model.tokenizer
    )


def test_a_quantised_model_is_refused_for_training():
    model = load_model(device="cpu", quantize="int8")
    with pytest.raises(ConfigError, match="training needs the fp32 model.*without quantize"):
        _objective(model)


def test_a_quantised_model_is_refused_for_export(tmp_path):
    objective = _objective(load_model(device="cpu"))
    export_model(objective, tmp_path / "fp32")  # the fp32 model exports
    assert (tmp_path / "fp32" / "adapter_project.pt").exists()
    quantize_int8(objective.adapter)
    with pytest.raises(ConfigError, match="export needs the fp32 model"):
        export_model(objective, tmp_path / "int8")
    assert not (tmp_path / "int8").exists()


def test_an_encoder_folded_for_inference_is_refused_for_export(tmp_path):
    objective = _objective(load_model(device="cpu"))
    objective.encoder.encoders[0].self_attn.fold_fsmn()  # its filters are no longer the released
    with pytest.raises(ConfigError, match="export needs the fp32 model"):
        export_model(objective, tmp_path / "folded")
