from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mooer.errors import CheckpointError, ConfigError
from mooer.tts.hifigan import (
    HifiganConfig,
    HifiganGenerator,
    fold_weight_norm,
    load_generator,
    save_generator,
    weight_normed_layers,
)

# Same time structure as the release (hop 1024, same receptive field), tiny channels.
TINY = HifiganConfig(input_channels=12, initial_channels=16, speaker_channels=6)


def tiny_generator(seed: int = 0) -> HifiganGenerator:
    torch.manual_seed(seed)
    return HifiganGenerator(TINY).eval()


def release_state(gen: HifiganGenerator, parametrize: bool = False) -> dict[str, torch.Tensor]:
    """A state dict spelled like a training checkpoint, with weight norm on the usual layers.

    The norm gains are scaled away from 1 so that folding them is not a no-op.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        for module in weight_normed_layers(gen).values():
            if parametrize:
                nn.utils.parametrizations.weight_norm(module)
                gain = module.parametrizations.weight.original0
            else:
                nn.utils.weight_norm(module)
                gain = module.weight_g
            with torch.no_grad():
                gain.mul_(torch.rand_like(gain) + 0.5)
    return gen.state_dict()


def test_release_config_shapes_and_parameter_count_on_meta():
    with torch.device("meta"):
        gen = HifiganGenerator(HifiganConfig())
    state = gen.state_dict()
    # 26,993,249 parameters after weight norm is folded; conv_pre alone holds 12.85 M.
    assert sum(p.numel() for p in gen.parameters()) == 26_993_249
    assert len(state) == 166
    assert state["conv_pre.weight"].shape == (512, 3584, 7)
    assert state["cond_layer.weight"].shape == (512, 512, 1)
    assert state["ups.0.weight"].shape == (512, 256, 16)
    assert state["ups.3.weight"].shape == (64, 32, 4)
    assert state["conds.3.weight"].shape == (32, 512, 1)
    assert state["resblocks.11.convs1.2.weight"].shape == (32, 32, 11)
    assert state["resblocks.0.convs2.0.weight"].shape == (256, 256, 3)
    assert state["conv_post.weight"].shape == (1, 32, 7)
    assert "conv_post.bias" in state
    assert len(gen.resblocks) == 12 and len(gen.ups) == len(gen.conds) == 4


def test_release_checkpoint_layout_on_meta():
    """The released g_* file: 78 weight-normed layers add a gain each -> 244 tensors, 27.0 M numbers."""
    with torch.device("meta"):
        gen = HifiganGenerator(HifiganConfig())
        state = release_state(gen)
    assert len(state) == 244
    assert sum(v.numel() for v in state.values()) == 27_003_362
    assert state["conv_pre.weight_g"].shape == (512, 1, 1)
    assert state["ups.0.weight_g"].shape == (512, 1, 1)  # dim 0 of a transposed conv: inputs
    assert "cond_layer.weight" in state and "conds.0.weight_g" not in state


def test_hop_and_context_of_release_config():
    cfg = HifiganConfig()
    assert cfg.hop == 1024
    assert cfg.sample_rate == 22050
    assert cfg.context_frames == 4


def test_output_shape_range_and_batch_independence():
    gen = tiny_generator()
    latents = torch.randn(2, 7, TINY.input_channels)
    speaker = torch.randn(2, TINY.speaker_channels, 1)
    with torch.no_grad():
        wav = gen(latents, speaker)
        first = gen(latents[:1], speaker[:1])
    assert wav.shape == (2, 7 * 1024)
    assert wav.abs().max() <= 1.0
    assert wav.std() > 1e-4
    torch.testing.assert_close(wav[:1], first, atol=1e-5, rtol=0)


def test_speaker_vector_changes_the_audio():
    gen = tiny_generator()
    latents = torch.randn(1, 5, TINY.input_channels)
    with torch.no_grad():
        a = gen(latents, torch.randn(1, TINY.speaker_channels, 1))
        b = gen(latents, torch.randn(1, TINY.speaker_channels, 1))
    assert (a - b).abs().max() > 1e-3


def test_receptive_field_is_context_frames():
    """A latent frame reaches exactly context_frames frames of audio on each side, no further."""
    gen = tiny_generator()
    ctx, hop, k = TINY.context_frames, TINY.hop, 12
    latents = torch.randn(1, 24, TINY.input_channels)
    speaker = torch.randn(1, TINY.speaker_channels, 1)
    bumped = latents.clone()
    bumped[0, k] += 1.0
    with torch.no_grad():
        diff = (gen(latents, speaker) - gen(bumped, speaker)).abs()[0]
    changed_frames = torch.nonzero(diff > 0).squeeze(1) // hop
    assert changed_frames.min().item() == k - ctx
    assert changed_frames.max().item() == k + ctx


@pytest.mark.parametrize("parametrize", [False, True], ids=["weight_g_v", "parametrizations"])
def test_load_folds_weight_norm_and_matches_training_model(tmp_path, parametrize):
    trained = tiny_generator(seed=3)
    state = release_state(trained, parametrize=parametrize)
    path = tmp_path / "g_00000001"
    torch.save({"generator": state}, path)
    latents = torch.randn(1, 6, TINY.input_channels)
    speaker = torch.randn(1, TINY.speaker_channels, 1)

    loaded = load_generator(path, TINY)

    assert not loaded.training
    assert not any("weight_g" in k or "original" in k for k in loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(latents, speaker), trained(latents, speaker), atol=1e-5, rtol=0
        )


def test_save_and_load_round_trip_keeps_config(tmp_path):
    gen = tiny_generator(seed=1)
    path = tmp_path / "g.pt"
    save_generator(gen, path)
    loaded = load_generator(path)  # no cfg: the stored one
    assert loaded.cfg == TINY
    latents = torch.randn(1, 3, TINY.input_channels)
    speaker = torch.randn(1, TINY.speaker_channels, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(latents, speaker), gen(latents, speaker))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = release_state(tiny_generator())
    del state["conds.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "g"
    torch.save({"generator": state}, path)
    with pytest.raises(
        CheckpointError, match=r"missing keys conds\.2\.bias; unexpected keys extra\.weight"
    ):
        load_generator(path, TINY)


def test_wrong_input_width_is_a_shape_error(tmp_path):
    path = tmp_path / "g"
    torch.save({"generator": release_state(tiny_generator())}, path)
    wider = HifiganConfig(input_channels=16, initial_channels=16, speaker_channels=6)
    with pytest.raises(
        CheckpointError, match=r"conv_pre\.weight \(16, 12, 7\) \(expected \(16, 16, 7\)\)"
    ):
        load_generator(path, wider)


def test_input_width_comes_from_the_checkpoint(tmp_path):
    """A release-shaped head for another LLM size loads without a config (here 8-d latents)."""
    torch.manual_seed(0)
    gen = HifiganGenerator(HifiganConfig(input_channels=8))
    path = tmp_path / "g_00050000"
    torch.save({"generator": gen.state_dict()}, path)
    assert load_generator(path).cfg == HifiganConfig(input_channels=8)


def test_release_config_rejects_a_tiny_checkpoint(tmp_path):
    path = tmp_path / "g"
    torch.save({"generator": release_state(tiny_generator())}, path)  # no stored config
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_generator(path)


def test_unpaired_weight_norm_tensor(tmp_path):
    state = release_state(tiny_generator())
    del state["ups.1.weight_v"]
    path = tmp_path / "g"
    torch.save({"generator": state}, path)
    with pytest.raises(CheckpointError, match=r"ups\.1\.weight_g has no matching ups\.1\.weight_v"):
        load_generator(path, TINY)


def test_fold_weight_norm_formula():
    v = torch.tensor([[[3.0, 4.0]], [[0.0, 2.0]]])  # (out 2, in 1, k 2)
    g = torch.tensor([[[10.0]], [[1.0]]])
    folded = fold_weight_norm({"c.weight_g": g, "c.weight_v": v, "c.bias": torch.ones(2)})
    assert set(folded) == {"c.weight", "c.bias"}
    torch.testing.assert_close(folded["c.weight"], torch.tensor([[[6.0, 8.0]], [[0.0, 1.0]]]))


def test_file_without_generator_entry(tmp_path):
    path = tmp_path / "g"
    torch.save({"model": {}}, path)
    with pytest.raises(CheckpointError, match=r"no 'generator' entry \(found \['model'\]\)"):
        load_generator(path, TINY)


def test_corrupt_and_missing_files(tmp_path):
    path = tmp_path / "g"
    torch.save({"generator": tiny_generator().state_dict()}, path)
    path.write_bytes(path.read_bytes()[:300])  # truncated
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_generator(path, TINY)
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "absent", TINY)


@pytest.mark.parametrize(
    "bad",
    [
        {"upsample_rates": (8, 8, 2)},
        {"upsample_kernels": (16, 15, 4, 4)},
        {"resblock_kernels": (3, 8, 11)},
        {"initial_channels": 24},
        {"input_channels": 0},
    ],
)
def test_invalid_config(bad):
    with pytest.raises(ConfigError):
        HifiganConfig(**bad)
