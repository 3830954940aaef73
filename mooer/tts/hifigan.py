"""HiFi-GAN generator of the MooER speech head: LLM hidden states -> 22.05 kHz waveform.

The module and parameter names match the released ``g_*`` checkpoints (an XTTS-style generator
conditioned on a speaker vector), so they load strictly. Weight norm is a training device only:
the loader folds ``weight_g``/``weight_v`` into plain ``weight`` tensors, so this module holds
ordinary convolutions.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from mooer.errors import CheckpointError, ConfigError
from mooer.state_dict import load_strict, read_checkpoint, state_dict_of

SAMPLE_RATE = 22050  # Hz, the released head's output rate
LRELU_SLOPE = 0.1
POST_LRELU_SLOPE = 0.01  # the last activation, before conv_post


@dataclass(frozen=True)
class HifiganConfig:
    """The released generator's shape; only ``input_channels`` changes with the LLM size."""

    input_channels: int = 3584  # LLM hidden size (Qwen2-7B)
    input_upsample: int = 4  # linear interpolation in time before conv_pre
    initial_channels: int = 512  # conv_pre output; halved by every upsampling stage
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernels: tuple[int, ...] = (16, 16, 4, 4)
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    speaker_channels: int = 512
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the config stays hashable and comparable.
        object.__setattr__(self, "upsample_rates", tuple(self.upsample_rates))
        object.__setattr__(self, "upsample_kernels", tuple(self.upsample_kernels))
        object.__setattr__(self, "resblock_kernels", tuple(self.resblock_kernels))
        object.__setattr__(
            self, "resblock_dilations", tuple(tuple(d) for d in self.resblock_dilations)
        )
        for name in ("input_channels", "input_upsample", "initial_channels", "speaker_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"HifiganConfig.{name} must be positive, got {getattr(self, name)}"
                )
        if len(self.upsample_rates) != len(self.upsample_kernels):
            raise ConfigError(
                f"HifiganConfig: {len(self.upsample_rates)} upsample_rates but "
                f"{len(self.upsample_kernels)} upsample_kernels"
            )
        for u, k in zip(self.upsample_rates, self.upsample_kernels):
            if u < 1 or k < u or (k - u) % 2:
                raise ConfigError(
                    f"HifiganConfig: upsample kernel {k} with rate {u} does not upsample by "
                    "exactly the rate (need kernel >= rate and kernel - rate even)"
                )
        if len(self.resblock_kernels) != len(self.resblock_dilations):
            raise ConfigError(
                f"HifiganConfig: {len(self.resblock_kernels)} resblock_kernels but "
                f"{len(self.resblock_dilations)} resblock_dilations"
            )
        if any(k % 2 == 0 for k in self.resblock_kernels):
            raise ConfigError(
                f"HifiganConfig: resblock kernels must be odd, got {self.resblock_kernels}"
            )
        if self.initial_channels % 2 ** len(self.upsample_rates):
            raise ConfigError(
                f"HifiganConfig: initial_channels {self.initial_channels} cannot be halved "
                f"{len(self.upsample_rates)} times"
            )

    @property
    def hop(self) -> int:
        """Output samples per latent frame: 4 (interpolation) * 8*8*2*2 (transposed convs) = 1024."""
        return self.input_upsample * math.prod(self.upsample_rates)

    @property
    def context_frames(self) -> int:
        """Latent frames on each side that can reach a frame's audio (receptive-field radius).

        Vocoding a chunk with this much context on both sides reproduces whole-utterance audio.
        """
        radius = 1.0  # in latent frames; linear interpolation reads the neighbouring frame
        rate = self.input_upsample  # samples per latent frame at the current stage
        radius += 3 / rate  # conv_pre, kernel 7
        for u, k in zip(self.upsample_rates, self.upsample_kernels):
            radius += k / (2 * u) / rate  # a transposed conv reads k/u input samples, centred
            rate *= u
            reach = max(
                sum((k - 1) // 2 * (d + 1) for d in dil)  # dilated conv + plain conv per pair
                for k, dil in zip(self.resblock_kernels, self.resblock_dilations)
            )
            radius += reach / rate
        radius += 3 / rate  # conv_post, kernel 7
        # A latent sits at the centre of its own samples: frames more than radius - 1/2 away
        # cannot reach them.  Released config: radius 4.33 -> 4 frames (186 ms at 22.05 kHz).
        return math.floor(radius + 0.5)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> HifiganConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"HifiganConfig: unknown keys {unknown}")
        return cls(**values)


class ResBlock(nn.Module):
    """HiFi-GAN's ResBlock1: pairs of (dilated conv, plain conv), each pair residual."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel - 1) // 2 * d)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            h = c1(F.leaky_relu(x, LRELU_SLOPE))
            x = x + c2(F.leaky_relu(h, LRELU_SLOPE))
        return x


class HifiganGenerator(nn.Module):
    """Latents (B, T, C_in) and a speaker vector (B, 512, 1) -> waveform (B, T * 1024) in [-1, 1]."""

    def __init__(self, cfg: HifiganConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or HifiganConfig()
        self.cfg = cfg
        ch = cfg.initial_channels
        self.conv_pre = nn.Conv1d(cfg.input_channels, ch, 7, padding=3)
        self.cond_layer = nn.Conv1d(cfg.speaker_channels, ch, 1)
        self.ups = nn.ModuleList()
        self.conds = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernels):
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, k, u, padding=(k - u) // 2))
            ch //= 2
            self.conds.append(nn.Conv1d(cfg.speaker_channels, ch, 1))
            self.resblocks.extend(
                ResBlock(ch, k_res, dil)
                for k_res, dil in zip(cfg.resblock_kernels, cfg.resblock_dilations)
            )
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)

    def forward(self, latents: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        n_kernels = len(cfg.resblock_kernels)
        # Time resolution: x4 by interpolation, then x8, x8, x2, x2 by the transposed convs,
        # so each latent frame becomes 4 * 256 = 1024 output samples.
        x = latents.transpose(1, 2)  # (B, T, C_in) -> (B, C_in, T)
        x = F.interpolate(x, scale_factor=float(cfg.input_upsample), mode="linear")  # (B, C_in, 4T)
        x = self.conv_pre(x) + self.cond_layer(speaker)  # (B, 512, 4T)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))  # (B, C, L) -> (B, C/2, L * rate_i)
            x = x + self.conds[i](speaker)
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            x = sum(block(x) for block in blocks) / n_kernels
        x = self.conv_post(F.leaky_relu(x, POST_LRELU_SLOPE))  # (B, 32, 1024T) -> (B, 1, 1024T)
        return torch.tanh(x).squeeze(1)  # (B, 1024T)


# --- checkpoints --------------------------------------------------------------------------------


# Weight-norm spellings: torch.nn.utils.weight_norm (the release) and the parametrization API.
_WEIGHT_NORM_NAMES = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def weight_normed_layers(generator: HifiganGenerator) -> dict[str, nn.Module]:
    """The layers the release trains with weight norm, by state-dict prefix: every convolution but
    the speaker conditioning (``cond_layer``, ``conds``); 78 in the released generator."""
    return {
        name: module
        for name, module in generator.named_modules()
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d))
        and not name.startswith(("cond_layer", "conds."))
    }


def fold_weight_norm(state: dict[str, torch.Tensor], path: str | os.PathLike = "<state>") -> dict:
    """Replace each (g, v) weight-norm pair by ``weight = g * v / ||v||`` (norm over dims 1..)."""
    out = dict(state)
    for g_name, v_name in _WEIGHT_NORM_NAMES:
        for key in [k for k in state if k.endswith("." + g_name) or k == g_name]:
            prefix = key[: -len(g_name)]
            if prefix + v_name not in state:
                raise CheckpointError(f"{path}: {key} has no matching {prefix}{v_name}")
            g, v = out.pop(key), out.pop(prefix + v_name)
            dims = tuple(range(1, v.dim()))
            norm = v.float().norm(dim=dims, keepdim=True)
            out[prefix + "weight"] = (v.float() * (g.float() / norm)).to(v.dtype)
        orphans = [k for k in out if k.endswith("." + v_name) or k == v_name]
        if orphans:
            raise CheckpointError(f"{path}: {orphans[0]} has no matching {g_name}")
    return out


def load_generator(path: str | os.PathLike, cfg: HifiganConfig | None = None) -> HifiganGenerator:
    """Load ``torch.load(path)["generator"]`` strictly, folding weight norm, in eval mode.

    Without ``cfg``: the config stored by :func:`save_generator`, else the released one with the
    input width read from ``conv_pre`` (it is the LLM's hidden size, 3584 for Qwen2-7B).
    """
    blob = read_checkpoint(path)
    state = fold_weight_norm(state_dict_of(blob, path, "generator"), path)
    if cfg is None:
        cfg = _stored_config(blob.get("config"), state, path)
    generator = HifiganGenerator(cfg)
    load_strict(generator, state, f"generator checkpoint {path}")
    return generator.eval()


def save_generator(generator: HifiganGenerator, path: str | os.PathLike) -> None:
    """Write a checkpoint ``load_generator`` reads back (plain weights plus the config)."""
    torch.save({"generator": generator.state_dict(), "config": generator.cfg.to_dict()}, path)


def _stored_config(
    stored: dict | None, state: dict[str, torch.Tensor], path: str | os.PathLike
) -> HifiganConfig:
    if stored is None:
        conv_pre = state.get("conv_pre.weight")
        if conv_pre is None or conv_pre.dim() != 3:
            return HifiganConfig()  # the strict load names what is wrong
        return HifiganConfig(input_channels=conv_pre.shape[1])  # (512, C_in, 7)
    try:
        return HifiganConfig.from_dict(stored)
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: stored generator config is invalid: {exc}") from exc
