from __future__ import annotations

import dataclasses

import pytest
import torch

from mooer.asr.encoder import (
    EncoderConfig,
    SANMEncoder,
    config_from_state_dict,
    load_encoder,
    sinusoidal_positions,
)
from mooer.errors import CheckpointError, ConfigError

TINY = EncoderConfig(
    input_size=40, output_size=32, attention_heads=4, linear_units=64, num_blocks=3
)


def funasr_encoder(cfg: EncoderConfig) -> torch.nn.Module:
    from funasr.models.sanm.encoder import SANMEncoder as Reference

    return Reference(
        input_size=cfg.input_size,
        output_size=cfg.output_size,
        attention_heads=cfg.attention_heads,
        linear_units=cfg.linear_units,
        num_blocks=cfg.num_blocks,
        input_layer="pe",
        normalize_before=True,
        kernel_size=cfg.kernel_size,
        sanm_shfit=cfg.sanm_shift,
        selfattention_layer_type="sanm",
    ).eval()


def tiny_pair(cfg: EncoderConfig = TINY) -> tuple[SANMEncoder, torch.nn.Module]:
    """Our encoder and FunASR's with the same (non-default, so norms matter) random weights."""
    torch.manual_seed(0)
    reference = funasr_encoder(cfg)
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.3)
    ours = SANMEncoder(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours, reference


@pytest.mark.parametrize("sanm_shift", [0, 2])
def test_matches_funasr_on_a_padded_batch(sanm_shift):
    ours, reference = tiny_pair(dataclasses.replace(TINY, sanm_shift=sanm_shift))
    xs, lengths = torch.randn(3, 30, 40), torch.tensor([30, 17, 5])
    with torch.no_grad():
        expected, expected_lengths, _ = reference(xs, lengths)
        ys, ys_lengths = ours(xs, lengths)
    assert ys.shape == (3, 30, 32)
    assert ys_lengths.tolist() == expected_lengths.tolist() == [30, 17, 5]
    for i, n in enumerate(lengths):
        torch.testing.assert_close(ys[i, :n], expected[i, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_frames", [1, 167, 3000])
def test_positions_equal_funasr_bit_for_bit(num_frames):
    from funasr.models.transformer.embedding import SinusoidalPositionEncoder

    positions = torch.arange(1, num_frames + 1)[None]
    expected = SinusoidalPositionEncoder().encode(positions, 560, torch.float32)[0]
    assert torch.equal(sinusoidal_positions(num_frames, 560), expected)


def test_padding_does_not_change_valid_frames():
    ours, _ = tiny_pair()
    xs = torch.randn(2, 25, 40)
    lengths = torch.tensor([25, 11])
    with torch.no_grad():
        batched, _ = ours(xs, lengths)
        alone, _ = ours(xs[1:, :11], lengths[1:])
        xs[1, 11:] = 1e3  # different garbage in the padding
        regarbaged, _ = ours(xs, lengths)
    torch.testing.assert_close(batched[1, :11], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(regarbaged[1, :11], alone[0], atol=1e-5, rtol=1e-5)


def test_trains_with_dropout_and_gradients():
    cfg = dataclasses.replace(TINY, dropout=0.5)
    model = SANMEncoder(cfg).train()
    xs, lengths = torch.randn(2, 12, 40), torch.tensor([12, 9])
    first, _ = model(xs, lengths)
    second, _ = model(xs, lengths)
    assert not torch.allclose(first, second)  # dropout is active in training
    first[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(xs, lengths)[0], model(xs, lengths)[0])


def test_released_key_names():
    keys = set(SANMEncoder(TINY).state_dict())
    block = {
        "self_attn.linear_q_k_v.weight",
        "self_attn.linear_q_k_v.bias",
        "self_attn.linear_out.weight",
        "self_attn.linear_out.bias",
        "self_attn.fsmn_block.weight",
        "feed_forward.w_1.weight",
        "feed_forward.w_1.bias",
        "feed_forward.w_2.weight",
        "feed_forward.w_2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    }
    prefixes = ["encoders0.0.", "encoders.0.", "encoders.1."]
    expected = {p + k for p in prefixes for k in block} | {"after_norm.weight", "after_norm.bias"}
    assert keys == expected


def test_paraformer_large_has_157_97_m_parameters():
    with torch.device("meta"):
        model = SANMEncoder(EncoderConfig())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(157.97e6, rel=1e-3)


def test_config_from_state_dict_reads_shapes():
    cfg = EncoderConfig(input_size=48, output_size=24, linear_units=40, num_blocks=4, kernel_size=7)
    with torch.device("meta"):
        state_dict = SANMEncoder(cfg).state_dict()
    assert config_from_state_dict(state_dict, attention_heads=cfg.attention_heads) == cfg


@pytest.fixture
def saved_tiny(tmp_path):
    model = SANMEncoder(TINY).eval()
    path = tmp_path / "paraformer-encoder.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_load_encoder_round_trips(saved_tiny):
    model, path = saved_tiny
    loaded = load_encoder(path)
    assert loaded.cfg == TINY and not loaded.training
    xs, lengths = torch.randn(1, 9, 40), torch.tensor([9])
    with torch.no_grad():
        torch.testing.assert_close(loaded(xs, lengths)[0], model(xs, lengths)[0])


def test_load_encoder_strips_gradient_checkpointing_segments(saved_tiny, tmp_path):
    model, path = saved_tiny
    state_dict = torch.load(path)
    wrapped = {k.replace("encoders.1.", "encoders.1.module_fn."): v for k, v in state_dict.items()}
    assert "encoders.1.module_fn.norm1.weight" in wrapped
    wrapped_path = tmp_path / "wrapped.pth"
    torch.save(wrapped, wrapped_path)
    loaded = load_encoder(wrapped_path)
    torch.testing.assert_close(loaded.encoders[1].norm1.weight, model.encoders[1].norm1.weight)


def test_fp16_checkpoint_loads_as_fp32(saved_tiny, tmp_path):
    _, path = saved_tiny
    half = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in torch.load(path).items()}, half)
    assert all(p.dtype == torch.float32 for p in load_encoder(half).parameters())


def edit_and_save(path, tmp_path, edit) -> str:
    state_dict = torch.load(path)
    edit(state_dict)
    out = tmp_path / "edited.pth"
    torch.save(state_dict, out)
    return str(out)


def test_missing_and_unexpected_keys_are_named(saved_tiny, tmp_path):
    _, path = saved_tiny

    def rename(sd):
        sd["encoders.1.feed_forward.w_9.weight"] = sd.pop("encoders.1.feed_forward.w_1.weight")

    edited = edit_and_save(path, tmp_path, rename)
    with pytest.raises(CheckpointError) as err:
        load_encoder(edited)
    message = str(err.value)
    assert edited in message
    assert "missing keys encoders.1.feed_forward.w_1.weight" in message
    assert "unexpected keys encoders.1.feed_forward.w_9.weight" in message


def test_many_missing_keys_are_counted(saved_tiny, tmp_path):
    _, path = saved_tiny

    def drop_block(sd):
        for k in [k for k in sd if k.startswith("encoders.1.")][:-1]:
            del sd[k]

    with pytest.raises(CheckpointError, match=r"missing keys .* \.\.\. \(12 in all\)"):
        load_encoder(edit_and_save(path, tmp_path, drop_block))


def test_wrong_shapes_are_named(saved_tiny, tmp_path):
    _, path = saved_tiny

    def widen(sd):
        sd["encoders.0.norm2.weight"] = torch.ones(33)

    with pytest.raises(
        CheckpointError, match=r"encoders.0.norm2.weight \(33,\) \(expected \(32,\)\)"
    ):
        load_encoder(edit_and_save(path, tmp_path, widen))


def test_not_an_encoder(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"linear.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="other.pth.*not a SAN-M encoder"):
        load_encoder(path)


def test_truncated_file(saved_tiny, tmp_path):
    _, path = saved_tiny
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_encoder(truncated)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nowhere.pth"):
        load_encoder(tmp_path / "nowhere.pth")


def test_heads_that_do_not_divide_the_width(saved_tiny):
    _, path = saved_tiny
    with pytest.raises(CheckpointError, match="not divisible by attention_heads 5"):
        load_encoder(path, attention_heads=5)


@pytest.mark.parametrize(
    ("xs", "lengths", "message"),
    [
        (torch.zeros(1, 5, 41), torch.tensor([5]), r"expected \(B, T, 40\)"),
        (torch.zeros(2, 5, 40), torch.tensor([5]), r"expected \(2,\)"),
        (torch.zeros(1, 5, 40), torch.tensor([6]), r"must lie in \[1, 5\]"),
        (torch.zeros(1, 5, 40), torch.tensor([0]), r"must lie in \[1, 5\]"),
    ],
)
def test_bad_inputs(xs, lengths, message):
    with pytest.raises(ConfigError, match=message):
        SANMEncoder(TINY)(xs, lengths)


@pytest.mark.parametrize(
    "changes",
    [{"num_blocks": 0}, {"input_size": 41}, {"kernel_size": 11, "sanm_shift": 6}, {"dropout": 1.0}],
)
def test_bad_configs(changes):
    with pytest.raises(ConfigError):
        dataclasses.replace(TINY, **changes)
