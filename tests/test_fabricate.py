"""The fabricated omni speech head is written as released: weight-norm pairs in ``g_*`` and
trained-looking batch-norm statistics in ``spk_*``, so the loaders' folding and batch-norm paths
are exercised by every test that uses it."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from mooer.fabricate import STEP
from mooer.tts.hifigan import HifiganGenerator, load_generator, weight_normed_layers
from mooer.tts.speaker_encoder import load_speaker_encoder, speaker_embedding_from_file


def _raw(path, entry: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)[entry]


def test_generator_file_loads_strictly_into_a_weight_norm_training_model(fabricated):
    """What MooER's reference loader does: weight norm on, then a strict load of the file."""
    path = fabricated("omni") / f"g_{STEP}"
    state = _raw(path, "generator")
    model = HifiganGenerator(load_generator(path).cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
        for module in weight_normed_layers(model).values():
            nn.utils.weight_norm(module)
    model.load_state_dict(state, strict=True)
    assert sum(k.endswith(".weight_g") for k in state) == 78
    assert list(state) == list(model.state_dict())  # same keys in the same order
    assert state["ups.0.weight_g"].shape == (512, 1, 1)  # dim 0 of a transposed conv: inputs
    assert "cond_layer.weight" in state and "conv_pre.weight" not in state


def test_folded_generator_equals_the_weight_norm_reference(fabricated):
    path = fabricated("omni") / f"g_{STEP}"
    state = _raw(path, "generator")
    folded = load_generator(path)
    reference = HifiganGenerator(folded.cfg).eval()
    layers = weight_normed_layers(reference)
    for module in layers.values():
        nn.utils.parametrizations.weight_norm(module)
    renamed = {
        k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): v
        for k, v in state.items()
    }
    reference.load_state_dict(renamed, strict=True)

    folded_state = folded.state_dict()
    for name, module in layers.items():
        torch.testing.assert_close(folded_state[f"{name}.weight"], module.weight)
        # v alone is not the weight: a fold that ignored g would be caught.
        assert not torch.allclose(state[f"{name}.weight_v"], module.weight)
    torch.manual_seed(0)
    latents = torch.randn(1, 3, folded.cfg.input_channels)
    speaker = torch.nn.functional.normalize(torch.randn(1, 512, 1), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(folded(latents, speaker), reference(latents, speaker))


def test_speaker_encoder_output_depends_on_its_batch_norm_statistics(fabricated):
    root = fabricated("omni")
    state = _raw(root / f"spk_{STEP}", "speaker_encoder")
    assert state["bn1.running_mean"].abs().max() > 0.05
    assert (state["layer3.0.bn2.running_var"] - 1).abs().max() > 0.1
    encoder = load_speaker_encoder(root / f"spk_{STEP}")
    trained = speaker_embedding_from_file(encoder, root / "prompt.wav")
    for bn in encoder.modules():
        if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            bn.reset_running_stats()
    fresh = speaker_embedding_from_file(encoder, root / "prompt.wav")
    assert torch.nn.functional.cosine_similarity(trained, fresh, dim=1).item() < 0.9
