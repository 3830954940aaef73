"""int8 encoder, adapter and LLM on the CPU: close to fp32 on the demo model, refused where it
cannot run."""

from __future__ import annotations

import copy
import weakref
from pathlib import Path

import pytest
import torch
import torch.ao.nn.intrinsic.quantized.dynamic as intrinsic_dynamic

import mooer.asr.quantize as quantize
from mooer.asr.encoder import SANMAttention
from mooer.asr.quantize import check_quantize, is_quantized, quantize_int8, weight_count
from mooer.audio import load_audio
from mooer.errors import ConfigError
from mooer.llm.decoding import OFFLINE
from mooer.model import load_model
from mooer.transcribe import transcribe

EXAMPLES = sorted((Path(__file__).parents[2] / "examples" / "audio").glob("*.wav"))


@pytest.fixture(scope="module")
def fp32():
    return load_model(device="cpu")


@pytest.fixture(scope="module")
def int8():
    return load_model(device="cpu", quantize="int8")


def test_the_encoder_adapter_and_llm_are_quantised(fp32, int8):
    assert is_quantized(int8.encoder) and is_quantized(int8.adapter) and is_quantized(int8.llm)
    assert not is_quantized(fp32)
    block = int8.encoder.encoders[0]
    assert block.feed_forward.w_1.weight().dtype == torch.qint8
    # fewer operations per block: w_1 applies the ReLU, the FSMN conv pads and adds its input
    assert isinstance(block.feed_forward.w_1, intrinsic_dynamic.LinearReLU)
    assert type(block.feed_forward.activation) is torch.nn.Identity
    assert block.self_attn.fsmn_folded and not fp32.encoder.encoders[0].self_attn.fsmn_folded
    assert int8.llm.get_output_embeddings().weight().dtype == torch.qint8
    assert int8.llm.get_input_embeddings().weight.dtype == torch.float32  # a table, not a Linear
    assert int8.device == torch.device("cpu")
    # the int8 layers hold no parameters: the engine's thread default still counts their weights
    assert weight_count(int8) == pytest.approx(weight_count(fp32), rel=0.05)  # (tied head apart)
    assert sum(p.numel() for p in int8.parameters()) < weight_count(fp32) / 2


def test_an_llm_in_bf16_is_refused_with_the_alternative():
    with pytest.raises(ConfigError, match=r"from fp32 ones, but dtype is bfloat16.*--dtype out"):
        load_model(device="cpu", dtype="bf16", quantize="int8")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_int8_encoder_and_adapter_outputs_are_close_to_fp32(fp32, int8, path):
    """On the demo model: about 2 % relative difference, every frame pointing the same way."""
    wave = load_audio(path)
    feats, lengths = fp32.frontend.batch([wave])  # (1, T, 560)
    with torch.inference_mode():
        ref, _ = fp32.encoder(feats, lengths)  # (1, T, 192)
        out, _ = int8.encoder(feats, lengths)
        ref_embeds, _ = fp32.embed([wave])  # (1, T // 2, 256)
        embeds, _ = int8.embed([wave])
    assert (out - ref).norm() / ref.norm() < 0.04
    assert torch.nn.functional.cosine_similarity(out, ref, dim=-1).min() > 0.999
    assert (embeds - ref_embeds).norm() / ref_embeds.norm() < 0.04
    assert (out - ref).abs().max() > 0  # the int8 path really ran


def test_a_folded_fsmn_gives_the_encoders_output(fp32):
    """``fold_fsmn`` is the same sum in another order, padded batches included."""
    folded = copy.deepcopy(fp32.encoder)
    for module in folded.modules():
        if isinstance(module, SANMAttention):
            module.fold_fsmn()
    feats, lengths = fp32.frontend.batch([load_audio(p) for p in EXAMPLES])  # (B, T, 560)
    assert int(lengths.min()) < feats.shape[1]  # padding in the batch
    with torch.inference_mode():
        ref, _ = fp32.encoder(feats, lengths)
        out, _ = folded(feats, lengths)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[row, :n], ref[row, :n], atol=1e-4, rtol=1e-4)
    assert not torch.equal(folded.encoders[0].self_attn.fsmn_block.weight,
                           fp32.encoder.encoders[0].self_attn.fsmn_block.weight)  # fmt: skip


@pytest.mark.parametrize("task", ["asr", "ast"])
def test_transcripts_of_the_examples_are_unchanged(fp32, int8, task):
    expected = [r.text for r in transcribe(fp32, EXAMPLES, task=task, options=OFFLINE)]
    assert [r.text for r in transcribe(int8, EXAMPLES, task=task, options=OFFLINE)] == expected


def test_quantize_on_an_accelerator_names_the_alternative():
    for device in ("cuda", "cuda:1", "mps"):  # musa needs torch_musa to be named
        with pytest.raises(ConfigError, match=r"CPU only, not on .*--device cpu"):
            check_quantize("int8", torch.device(device))


def test_unknown_mode_is_named():
    with pytest.raises(ConfigError, match=r"quantize 'int4': expected one of int8"):
        check_quantize("int4", torch.device("cpu"))
    with pytest.raises(ConfigError, match="quantize 'int4'"):
        load_model(device="cpu", quantize="int4")


def test_a_build_without_int8_kernels_names_the_alternative(monkeypatch):
    monkeypatch.setattr(quantize, "_supported_engines", lambda: ["none"])
    with pytest.raises(ConfigError, match=r"no int8 CPU kernels.*leave --quantize out"):
        check_quantize("int8", torch.device("cpu"))
    with pytest.raises(ConfigError, match="no int8 CPU kernels"):
        load_model(device="cpu", quantize="int8")


def test_quantize_int8_keeps_a_module_usable_in_place():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 16)
    with torch.no_grad():
        ref = net(x)
        assert quantize_int8(net) is net
        out = net(x)
    assert is_quantized(net)
    assert (out - ref).norm() / ref.norm() < 0.05


def test_quantize_int8_lets_go_of_each_fp32_weight_at_once():
    """No fp32 weight outlives its int8 copy: peak memory stays at the fp32 model's."""
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    weights = [weakref.ref(net[0].weight), weakref.ref(net[2].weight)]
    quantize_int8(net)
    assert [w() for w in weights] == [None, None]  # freed by reference counting, no gc needed
