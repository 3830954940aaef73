"""The released "LinearAdapter": k encoder frames (60 ms each) -> one LLM input embedding.

k = 2 gives one audio token per 120 ms. The LLM width is read from the checkpoint, never assumed,
because the same layout serves Qwen2-7B (3584) and Qwen2-1.5B (1536).
"""

from __future__ import annotations

import importlib.util
import os

import torch
import torch.nn.functional as F
from torch import nn

from mooer.audio import ADAPTER_DOWNSAMPLE
from mooer.errors import CheckpointError, ConfigError
from mooer.state_dict import describe_keys, read_state_dict

PREFIX = "encoder_projector."  # the adapter's key prefix inside adapter_project.pt
ZERO_MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's per-rank module weights


class LinearAdapter(nn.Module):
    def __init__(
        self,
        encoder_dim: int = 512,
        llm_dim: int = 3584,
        downsample: int = ADAPTER_DOWNSAMPLE,
        hidden: int = 2048,
    ) -> None:
        super().__init__()
        for name, value in (
            ("encoder_dim", encoder_dim),
            ("llm_dim", llm_dim),
            ("downsample", downsample),
            ("hidden", hidden),
        ):
            if value < 1:
                raise ConfigError(f"LinearAdapter {name} must be >= 1, got {value}")
        self.encoder_dim = encoder_dim
        self.downsample = downsample
        self.linear1 = nn.Linear(encoder_dim * downsample, hidden)
        self.linear2 = nn.Linear(hidden, llm_dim)

    @property
    def llm_dim(self) -> int:
        return self.linear2.out_features

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, encoder_dim), lengths (B,) -> (y (B, T // k, llm_dim), lengths // k).

        The last T mod k frames are dropped, as in the release.
        """
        if x.dim() != 3 or x.shape[-1] != self.encoder_dim:
            raise ConfigError(
                f"adapter input has shape {tuple(x.shape)}: expected (B, T, {self.encoder_dim})"
            )
        b, t, d = x.shape
        k = self.downsample
        x = x[:, : t - t % k].reshape(b, t // k, d * k)  # (B, T, 512) -> (B, T // k, 512 * k)
        y = self.linear2(F.relu(self.linear1(x)))  # (B, T // k, llm_dim)
        return y, torch.div(lengths, k, rounding_mode="floor")


def adapter_state_dict(adapter: LinearAdapter) -> dict[str, torch.Tensor]:
    """The adapter's weights under the released key names, ready for ``adapter_project.pt``."""
    return {PREFIX + k: v for k, v in adapter.state_dict().items()}


def load_adapter(path: str | os.PathLike, encoder_dim: int = 512) -> LinearAdapter:
    """Load ``adapter_project.pt`` (or a DeepSpeed ZeRO checkpoint folder), in eval mode.

    k and the LLM width come from the weight shapes; other keys in the file are ignored.
    """
    path = os.fspath(path)
    state_dict = _read_zero_checkpoint(path) if os.path.isdir(path) else read_state_dict(path)
    names = ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias")
    if missing := [PREFIX + n for n in names if PREFIX + n not in state_dict]:
        raise CheckpointError(f"adapter checkpoint {path}: missing keys {describe_keys(missing)}")
    w1, b1, w2, b2 = (state_dict[PREFIX + n] for n in names)
    if w1.dim() != 2 or w2.dim() != 2:
        raise CheckpointError(
            f"adapter checkpoint {path}: linear weights must be 2-D, got linear1 "
            f"{tuple(w1.shape)} and linear2 {tuple(w2.shape)}"
        )
    (hidden, in_features), (llm_dim, hidden2) = w1.shape, w2.shape
    downsample, rest = divmod(in_features, encoder_dim)
    if downsample < 1 or rest:
        raise CheckpointError(
            f"adapter checkpoint {path}: linear1 takes {in_features} inputs, not a multiple "
            f"k >= 1 of the encoder width {encoder_dim}"
        )
    if hidden2 != hidden or b1.shape != (hidden,) or b2.shape != (llm_dim,):
        raise CheckpointError(
            f"adapter checkpoint {path}: inconsistent shapes linear1 {tuple(w1.shape)}/"
            f"{tuple(b1.shape)}, linear2 {tuple(w2.shape)}/{tuple(b2.shape)}"
        )
    adapter = LinearAdapter(encoder_dim, llm_dim, downsample, hidden)
    adapter.load_state_dict({n: state_dict[PREFIX + n].float() for n in names})
    return adapter.eval()


def _has_deepspeed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def _read_zero_checkpoint(folder: str) -> dict[str, torch.Tensor]:
    """Whole fp32 weights from a DeepSpeed ZeRO folder (``latest`` names the tag subfolder)."""
    if _has_deepspeed():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            return get_fp32_state_dict_from_zero_checkpoint(folder)
        except Exception as err:  # deepspeed raises ValueError/FileNotFoundError/... on bad folders
            raise CheckpointError(f"cannot read DeepSpeed checkpoint {folder}: {err}") from err
    latest = os.path.join(folder, "latest")
    try:
        with open(latest, encoding="utf-8") as f:
            tag = f.read().strip()
    except OSError as err:
        raise CheckpointError(
            f"{folder} is a folder but not a DeepSpeed checkpoint: cannot read {latest}"
        ) from err
    states = os.path.join(folder, tag, ZERO_MODEL_STATES)
    state_dict = read_state_dict(states, key="module")
    if empty := [k for k, v in state_dict.items() if k.startswith(PREFIX) and v.numel() == 0]:
        raise CheckpointError(
            f"{states} holds ZeRO-3 partitioned (empty) weights {describe_keys(empty)}: "
            "install deepspeed to consolidate them"
        )
    return state_dict
