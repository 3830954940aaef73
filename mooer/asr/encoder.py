"""Paraformer-large's SAN-M encoder, key-compatible with the released ``paraformer-encoder.pth``.

SAN-M = self-attention plus a memory block: a depthwise convolution over time (the FSMN) on the
values, added to the attention output. The first block maps 560 -> 512 dims, so it has no
attention residual. Numerically this is FunASR's ``SANMEncoder`` (input_layer "pe", pre-norm);
inference uses fused attention and skips masking when no frame is padding.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mooer.errors import CheckpointError, ConfigError
from mooer.state_dict import check_state_dict, describe_keys, read_state_dict

LAYER_NORM_EPS = 1e-12  # as trained; the torch default 1e-5 would shift every activation
CHECKPOINTING_SEGMENT = ".module_fn."  # inserted in keys by gradient-checkpointing wrappers


@dataclass(frozen=True)
class EncoderConfig:
    """Defaults are Paraformer-large, the encoder of every MooER release."""

    input_size: int = 560  # LFR feature dims
    output_size: int = 512
    attention_heads: int = 4
    linear_units: int = 2048  # feed-forward hidden size
    num_blocks: int = 50  # including the first, width-changing block
    kernel_size: int = 11  # FSMN memory span in frames (60 ms each)
    sanm_shift: int = 0  # extra look-back of the FSMN window (0 = centred)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in ("input_size", "output_size", "attention_heads", "linear_units", "num_blocks"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.input_size % 2:
            raise ConfigError(f"EncoderConfig.input_size must be even, got {self.input_size}")
        if self.output_size % self.attention_heads:
            raise ConfigError(
                f"EncoderConfig.output_size {self.output_size} is not divisible by "
                f"attention_heads {self.attention_heads}"
            )
        if self.kernel_size < 1 or not 0 <= self.sanm_shift <= self.kernel_size // 2:
            raise ConfigError(
                f"EncoderConfig kernel_size {self.kernel_size} / sanm_shift {self.sanm_shift}: "
                "need kernel_size >= 1 and 0 <= sanm_shift <= kernel_size // 2"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"EncoderConfig.dropout must be in [0, 1), got {self.dropout}")


def sinusoidal_positions(
    num_frames: int, dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """(T, dim) FunASR position encoding: positions from 1, all sines then all cosines.

    Computed in float32 with the same operations as the reference so outputs match bit for bit.
    """
    positions = torch.arange(1, num_frames + 1, dtype=torch.float32, device=device)
    increment = torch.log(torch.tensor(10000.0, device=device)) / (dim / 2 - 1)
    inv_timescales = torch.exp(
        torch.arange(dim // 2, dtype=torch.float32, device=device) * -increment
    )
    angles = positions[:, None] * inv_timescales[None, :]  # (T, dim / 2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)  # (T, dim)


class SANMAttention(nn.Module):
    """Multi-head self-attention plus an FSMN memory over the values."""

    def __init__(self, in_dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.dim = cfg.output_size
        self.heads = cfg.attention_heads
        self.linear_q_k_v = nn.Linear(in_dim, 3 * self.dim)
        self.linear_out = nn.Linear(self.dim, self.dim)
        self.fsmn_block = nn.Conv1d(
            self.dim, self.dim, cfg.kernel_size, groups=self.dim, bias=False
        )  # depthwise: one temporal filter per channel
        left = (cfg.kernel_size - 1) // 2 + cfg.sanm_shift
        self.fsmn_padding = (left, cfg.kernel_size - 1 - left)
        self.fsmn_folded = False  # see fold_fsmn

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, in_dim), valid (B, T) bool or None when nothing is padding -> (B, T, D)."""
        b, t, _ = x.shape
        q, k, v = self.linear_q_k_v(x).split(self.dim, dim=-1)  # 3 x (B, T, D)
        memory = self._memory(v, valid)
        q, k, v = (
            z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v)
        )  # (B, H, T, D/H)
        key_mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, T)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, H, T, D/H)
        context = context.transpose(1, 2).reshape(b, t, self.dim)  # (B, T, D)
        return self.linear_out(context) + memory

    def _memory(self, v: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """FSMN: (B, T, D) -> v + depthwise_conv(v), zero at padded frames."""
        if valid is not None:
            v = v * valid[..., None]  # padding must not leak into valid frames through the conv
        if self.fsmn_folded:  # the conv pads and adds v itself
            memory = self.fsmn_block(v.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        else:
            memory = self.fsmn_block(F.pad(v.transpose(1, 2), self.fsmn_padding))  # (B, D, T)
            memory = memory.transpose(1, 2) + v  # (B, T, D)
        return memory if valid is None else memory * valid[..., None]

    def fold_fsmn(self) -> None:
        """For inference: make the FSMN memory one operation, ``v`` added through the centre
        tap of each filter and the zero padding done by the conv (a centred window only; the
        filters then differ from the released ones, and sums round a little differently)."""
        left, right = self.fsmn_padding
        if self.fsmn_folded or left != right:
            return
        with torch.no_grad():
            self.fsmn_block.weight[:, 0, left] += 1.0  # (D, 1, K): the tap that reads frame t
        self.fsmn_block.padding = (left,)
        self.fsmn_folded = True


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.activation: nn.Module = nn.ReLU()  # Identity where w_1 applies it (int8)
        self.w_2 = nn.Linear(hidden, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(self.activation(self.w_1(x)), self.dropout, self.training)
        return self.w_2(hidden)


class SANMBlock(nn.Module):
    """Pre-norm block; a block that changes width (the first) has no attention residual."""

    def __init__(self, in_dim: int, cfg: EncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim, eps=LAYER_NORM_EPS)
        self.self_attn = SANMAttention(in_dim, cfg)
        self.norm2 = nn.LayerNorm(cfg.output_size, eps=LAYER_NORM_EPS)
        self.feed_forward = FeedForward(cfg.output_size, cfg.linear_units, cfg.dropout)
        self.residual = in_dim == cfg.output_size
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        attended = F.dropout(self.self_attn(self.norm1(x), valid), self.dropout, self.training)
        x = x + attended if self.residual else attended
        return x + F.dropout(self.feed_forward(self.norm2(x)), self.dropout, self.training)


class SANMEncoder(nn.Module):
    """(B, T, 560) normalised LFR features -> (B, T, 512), one output per 60 ms frame."""

    def __init__(self, cfg: EncoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or EncoderConfig()
        self.encoders0 = nn.ModuleList([SANMBlock(self.cfg.input_size, self.cfg)])
        self.encoders = nn.ModuleList(
            SANMBlock(self.cfg.output_size, self.cfg) for _ in range(self.cfg.num_blocks - 1)
        )
        self.after_norm = nn.LayerNorm(self.cfg.output_size, eps=LAYER_NORM_EPS)

    def forward(self, xs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """xs (B, T, input_size), lengths (B,) valid frames -> (ys (B, T, output_size), lengths).

        Outputs at valid frames do not depend on padding; outputs at padded frames are undefined.
        """
        self._check_inputs(xs, lengths)
        num_frames = xs.shape[1]
        valid = None  # (B, T) bool, only built when some frame is padding
        if bool((lengths < num_frames).any()):
            valid = (
                torch.arange(num_frames, device=xs.device)[None, :] < lengths.to(xs.device)[:, None]
            )
        positions = sinusoidal_positions(num_frames, self.cfg.input_size, xs.device)
        x = xs * math.sqrt(self.cfg.output_size) + positions.to(xs.dtype)  # (B, T, 560)
        for block in (*self.encoders0, *self.encoders):
            x = block(x, valid)  # the first block: (B, T, 560) -> (B, T, 512)
        return self.after_norm(x), lengths

    def _check_inputs(self, xs: torch.Tensor, lengths: torch.Tensor) -> None:
        if xs.dim() != 3 or xs.shape[-1] != self.cfg.input_size:
            raise ConfigError(
                f"encoder input has shape {tuple(xs.shape)}: expected (B, T, {self.cfg.input_size})"
            )
        if lengths.shape != (xs.shape[0],):
            raise ConfigError(
                f"encoder lengths have shape {tuple(lengths.shape)}: expected ({xs.shape[0]},)"
            )
        if xs.shape[1] == 0 or int(lengths.min()) < 1 or int(lengths.max()) > xs.shape[1]:
            raise ConfigError(
                f"encoder lengths {lengths.tolist()} must lie in [1, {xs.shape[1]}] (the frame count)"
            )


def config_from_state_dict(
    state_dict: dict[str, torch.Tensor], attention_heads: int = 4
) -> EncoderConfig:
    """Read dims and block count from tensor shapes; the head count is not stored, so pass it."""
    state_dict = _strip_checkpointing(state_dict)
    first = "encoders0.0."
    needed = [
        first + "self_attn.linear_q_k_v.weight",
        first + "self_attn.fsmn_block.weight",
        first + "feed_forward.w_1.weight",
    ]
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise CheckpointError(f"not a SAN-M encoder state dict: missing {describe_keys(missing)}")
    qkv, fsmn, w_1 = (state_dict[k] for k in needed)
    blocks = {int(m[1]) for k in state_dict if (m := re.match(r"encoders\.(\d+)\.", k))}
    if blocks != set(range(len(blocks))):
        raise CheckpointError(f"encoder blocks are not numbered 0..n-1: {sorted(blocks)}")
    try:
        return EncoderConfig(
            input_size=qkv.shape[1],
            output_size=qkv.shape[0] // 3,
            attention_heads=attention_heads,
            linear_units=w_1.shape[0],
            num_blocks=1 + len(blocks),
            kernel_size=fsmn.shape[-1],
        )
    except ConfigError as err:
        raise CheckpointError(f"encoder state dict gives an invalid config: {err}") from err


def load_encoder(
    path: str | os.PathLike, attention_heads: int = 4, mmap: bool = True
) -> SANMEncoder:
    """Load ``paraformer-encoder.pth`` strictly, in eval mode; ``CheckpointError`` says what is off.

    The weights are memory-mapped from the file unless ``mmap=False`` (see ``read_checkpoint``).
    """
    path = os.fspath(path)
    state_dict = _strip_checkpointing(read_state_dict(path, mmap=mmap))
    try:
        cfg = config_from_state_dict(state_dict, attention_heads)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from err
    with torch.device("meta"):  # no memory until the file's tensors are assigned
        model = SANMEncoder(cfg)
    check_state_dict(model.state_dict(), state_dict, f"encoder checkpoint {path}")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, assign=True)
    return model.eval()


def _strip_checkpointing(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(CHECKPOINTING_SEGMENT, "."): v for k, v in state_dict.items()}
