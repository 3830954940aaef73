"""Fabricated checkpoints: tiny random weights in the exact released layouts, file formats and keys.

The released MooER weights cannot be downloaded here, so the loaders are proven on these. They are
also handy for trying the command line without a model. Outputs are random text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from mooer.asr.adapter import LinearAdapter, adapter_state_dict
from mooer.asr.encoder import EncoderConfig, SANMEncoder
from mooer.asr.frontend import Cmvn
from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.llm.fabricate import write_lora, write_tiny_llm
from mooer.llm.prompts import AUDIO_START

LAYOUTS = {"mtl-5k": "MooER-MTL-5K", "mtl-80k": "MooER-MTL-80K", "omni": "MooER-omni-v1"}

TINY_ENCODER = EncoderConfig(output_size=32, attention_heads=4, linear_units=64, num_blocks=3)
TINY_LLM_HIDDEN = 32
# The LLM's shape by size: tiny for tests, or Qwen2-0.5B's (896 wide, 24 layers) for benchmarks.
LLM_SIZES = {
    "tiny": {"hidden_size": TINY_LLM_HIDDEN},
    "0.5b": {
        "hidden_size": 896,
        "num_layers": 24,
        "num_heads": 14,
        "num_kv_heads": 2,
        "intermediate_size": 4864,
    },
}
NUM_AUDIO_TOKENS = 16  # the omni tokenizer's <A_0>..<A_15> (the release has many more)
STEP = "00112000"  # omni-v1's step in g_/spk_ file names


def _write_encoder_and_cmvn(folder: Path, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dim = TINY_ENCODER.input_size
    shift = (-8.0 + rng.normal(0, 1, dim)).astype(np.float32)  # about minus the mean log-mel energy
    rescale = (0.25 + 0.05 * rng.random(dim)).astype(np.float32)
    Cmvn(shift=shift, rescale=rescale).save(folder / "am.mvn")
    torch.save(SANMEncoder(TINY_ENCODER).state_dict(), folder / "paraformer-encoder.pth")


def _write_adapter(path: Path, llm_hidden: int) -> None:
    adapter = LinearAdapter(
        encoder_dim=TINY_ENCODER.output_size, llm_dim=llm_hidden, downsample=2, hidden=64
    )
    state = adapter_state_dict(adapter)
    # The released file holds other non-LLM keys too; the loader must ignore them.
    state["encoder.after_norm.weight"] = torch.ones(TINY_ENCODER.output_size)
    torch.save(state, path)


def _write_speech_head(root: Path, llm_hidden: int, rng: np.random.Generator) -> None:
    from mooer.tts.hifigan import HifiganConfig, HifiganGenerator
    from mooer.tts.speaker_encoder import ResNetSpeakerEncoder, SpeakerEncoderConfig

    generator = HifiganGenerator(HifiganConfig(input_channels=llm_hidden))
    torch.save({"generator": weight_norm_state(generator, rng)}, root / f"g_{STEP}")
    speaker_encoder = ResNetSpeakerEncoder(SpeakerEncoderConfig())
    trained_batch_norm(speaker_encoder, rng)
    torch.save({"speaker_encoder": speaker_encoder.state_dict()}, root / f"spk_{STEP}")
    t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE  # a 2 s voiced-like prompt: harmonics + noise
    voice = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 6)) * 0.1
    voice += rng.normal(0, 0.01, t.shape)
    sf.write(root / "prompt.wav", voice.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")


def weight_norm_state(generator: nn.Module, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The generator's state dict spelled as released: ``weight_g``/``weight_v`` pairs.

    As ``torch.nn.utils.weight_norm`` (dim 0) leaves it: ``weight`` gone, ``weight_g`` (C0, 1, ..)
    and ``weight_v`` after the bias. ``v`` is the weight with each slice along dim 0 scaled by a
    random factor and ``g`` the weight's norm, so folding gives back the generator's weights
    while ``v`` alone does not.
    """
    from mooer.tts.hifigan import weight_normed_layers

    normed = set(weight_normed_layers(generator))
    out: dict[str, torch.Tensor] = {}
    for key, value in generator.state_dict().items():
        prefix, _, name = key.rpartition(".")
        if prefix not in normed:
            out[key] = value
        elif name == "bias":
            out[key] = value
            weight = generator.get_submodule(prefix).weight.detach()
            dims = tuple(range(1, weight.dim()))
            scale = torch.from_numpy(rng.uniform(0.5, 2.0, weight.shape[0])).to(weight.dtype)
            out[f"{prefix}.weight_g"] = weight.norm(dim=dims, keepdim=True)  # (C0, 1, 1)
            out[f"{prefix}.weight_v"] = weight * scale.view(-1, *(1,) * len(dims))
    return out


def trained_batch_norm(module: nn.Module, rng: np.random.Generator) -> None:
    """Give every batch norm in ``module`` statistics and an affine map like a trained one's, so
    that eval mode is not close to the identity and a misplaced batch norm shows."""
    for bn in module.modules():
        if isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = bn.num_features
            with torch.no_grad():
                bn.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.1, n)))
                bn.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, n)))
                bn.weight.copy_(torch.from_numpy(rng.uniform(0.9, 1.1, n)))
                bn.bias.copy_(torch.from_numpy(rng.normal(0.0, 0.05, n)))
                bn.num_batches_tracked.fill_(int(STEP))


def fabricate(
    out: str | Path, layout: str = "mtl-5k", seed: int = 0, llm_size: str = "tiny"
) -> Path:
    """Write a tiny checkpoint in ``layout`` under ``out``; returns the checkpoint root.

    ``llm_size``: one of ``LLM_SIZES`` (the encoder stays tiny).

    For the MTL layouts the Qwen2 base model is written beside it, at ``out/llm`` (pass it as ``--llm``),
    since the release ships it separately; the checkpoint itself is ``out/<release name>``.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if llm_size not in LLM_SIZES:
        raise ConfigError(f"unknown llm_size {llm_size!r}: expected one of {', '.join(LLM_SIZES)}")
    shape = LLM_SIZES[llm_size]
    hidden = shape["hidden_size"]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = Path(out)
    root = out / LAYOUTS[layout]
    root.mkdir(parents=True, exist_ok=True)

    if layout in ("mtl-5k", "mtl-80k"):
        llm_dir = write_tiny_llm(out / "llm", **shape, seed=seed)
        _write_encoder_and_cmvn(root / "paraformer_encoder", rng)
        variants = ("asr", "ast", "asr_ast_mtl") if layout == "mtl-5k" else ("asr",)
        for i, name in enumerate(variants):
            (root / name).mkdir(exist_ok=True)
            _write_adapter(root / name / "adapter_project.pt", hidden)
            write_lora(root / name / "lora_weights", llm_dir, r=8, seed=seed + i + 1)
        (root / "configuration.json").write_text(
            json.dumps({"framework": "pytorch", "task": "auto-speech-recognition"}, indent=2)
        )
    else:
        extra = (AUDIO_START, *(f"<A_{i}>" for i in range(NUM_AUDIO_TOKENS)))
        llm_dir = write_tiny_llm(root / "llm", **shape, extra_special_tokens=extra, seed=seed)
        _write_encoder_and_cmvn(root, rng)
        _write_adapter(root / "adapter_project.pt", hidden)
        write_lora(root / "lora", llm_dir, r=8, seed=seed + 1)
        _write_speech_head(root, hidden, rng)
    (root / "README.md").write_text(
        f"Fabricated {LAYOUTS[layout]} checkpoint written by `mooer fabricate` (random weights).\n"
    )
    return root
