"""The speaker encoder of the MooER speech head: a prompt voice -> the 512-d vector conditioning it.

A squeeze-excitation ResNet over log-mel frames with attentive statistics pooling, named like
the released ``spk_*`` checkpoints (Coqui TTS's ``ResNetSpeakerEncoder``) so they load strictly.
Its mel front end is written with ``torch.stft`` (no torchaudio) and reproduces
``torchaudio.transforms.MelSpectrogram`` as the release used it: the checkpoints store its
window and filterbank as buffers (``torch_spec.*``), so the module names follow it too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mooer.audio import SAMPLE_RATE, load_audio, to_mono_16k
from mooer.errors import AudioError, ConfigError
from mooer.state_dict import load_strict, read_state_dict

MIN_PROMPT_SECONDS = 0.5  # shorter prompts leave the pooling only a few frames
SILENCE_PEAK = 1e-3  # -60 dBFS: a prompt whose loudest sample is quieter carries no voice


@dataclass(frozen=True)
class SpeakerEncoderConfig:
    """The released encoder: 64 log-mels of 16 kHz audio -> 512-d speaker vector."""

    n_mels: int = 64
    layers: tuple[int, ...] = (3, 4, 6, 3)  # SE basic blocks per stage
    filters: tuple[int, ...] = (32, 64, 128, 256)  # channels per stage; stages 2-4 stride 2
    se_reduction: int = 8
    attention_channels: int = 128
    proj_dim: int = 512
    log_input: bool = True
    sample_rate: int = SAMPLE_RATE  # 16 kHz
    n_fft: int = 512
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    preemphasis: float = 0.97

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "filters", tuple(self.filters))
        if len(self.layers) != 4 or len(self.filters) != 4:
            raise ConfigError(
                f"SpeakerEncoderConfig: need 4 stages, got layers {self.layers}, filters {self.filters}"
            )
        if self.n_mels % 8:
            raise ConfigError(
                f"SpeakerEncoderConfig.n_mels must be a multiple of 8, got {self.n_mels}"
            )
        if self.win_length > self.n_fft:
            raise ConfigError(
                f"SpeakerEncoderConfig: win_length {self.win_length} exceeds n_fft {self.n_fft}"
            )


# --- mel front end ------------------------------------------------------------------------------


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular HTK-mel filters without area normalisation, (n_freqs, n_mels).

    Band edges are equally spaced on the mel scale between f_min and f_max (default Nyquist).
    """
    f_max = float(sample_rate // 2) if f_max is None else f_max

    def hz_to_mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    freqs = torch.linspace(0, sample_rate // 2, n_freqs)  # FFT bin centres
    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)  # (n_mels + 2,) Hz
    widths = edges[1:] - edges[:-1]  # (n_mels + 1,)
    offsets = edges.unsqueeze(0) - freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]  # from the lower edge up to the centre
    falling = offsets[:, 2:] / widths[1:]  # from the centre down to the upper edge
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class PreEmphasis(nn.Module):
    """y[n] = x[n] - c * x[n-1], with x[-1] taken as x[1] (reflection)."""

    def __init__(self, coefficient: float) -> None:
        super().__init__()
        self.register_buffer("filter", torch.tensor([[[-coefficient, 1.0]]]))  # (1, 1, 2)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = F.pad(wav.unsqueeze(1), (1, 0), mode="reflect")  # (B, N) -> (B, 1, N + 1)
        return F.conv1d(x, self.filter).squeeze(1)  # (B, N)


class PowerSpectrogram(nn.Module):
    """|STFT|^2 with centred, reflect-padded frames: (B, N) -> (B, n_fft/2 + 1, 1 + N // hop)."""

    def __init__(self, n_fft: int, win_length: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hamming_window(win_length))  # periodic

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wav,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return spec.abs().pow(2)


class MelScale(nn.Module):
    def __init__(self, n_freqs: int, n_mels: int, sample_rate: int) -> None:
        super().__init__()
        self.register_buffer("fb", mel_filterbank(n_freqs, n_mels, sample_rate))  # (F, M)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return torch.matmul(spec.transpose(-1, -2), self.fb).transpose(
            -1, -2
        )  # (B, F, T) -> (B, M, T)


class MelSpectrogram(nn.Module):
    """Power mel spectrogram: (B, N) -> (B, n_mels, 1 + N // hop)."""

    def __init__(self, cfg: SpeakerEncoderConfig) -> None:
        super().__init__()
        self.spectrogram = PowerSpectrogram(cfg.n_fft, cfg.win_length, cfg.hop_length)
        self.mel_scale = MelScale(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.mel_scale(self.spectrogram(wav))


# --- network ------------------------------------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """Rescales each channel by a gate computed from the channel means."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(),
            nn.Linear(channels // reduction, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))  # (B, C, H, W) -> (B, C)
        return x * gate[:, :, None, None]


class SEBasicBlock(nn.Module):
    """Two 3x3 convs (ReLU before BatchNorm, as trained) with SE gating and a residual path."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, reduction: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.se = SqueezeExcitation(out_ch, reduction)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(F.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return F.relu(out + residual)


class ResNetSpeakerEncoder(nn.Module):
    """16 kHz waveform (B, N) -> speaker vector (B, 512), not normalised."""

    def __init__(self, cfg: SpeakerEncoderConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or SpeakerEncoderConfig()
        self.cfg = cfg
        self.torch_spec = nn.Sequential(PreEmphasis(cfg.preemphasis), MelSpectrogram(cfg))
        self.instancenorm = nn.InstanceNorm1d(cfg.n_mels)
        self.conv1 = nn.Conv2d(1, cfg.filters[0], 3, padding=1)
        self.bn1 = nn.BatchNorm2d(cfg.filters[0])
        in_ch = cfg.filters[0]
        for i, (blocks, out_ch) in enumerate(zip(cfg.layers, cfg.filters)):
            stride = 1 if i == 0 else 2
            stage = [SEBasicBlock(in_ch, out_ch, stride, cfg.se_reduction)]
            stage += [SEBasicBlock(out_ch, out_ch, 1, cfg.se_reduction) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = out_ch
        pooled = cfg.filters[-1] * (cfg.n_mels // 8)  # channels x remaining mel rows
        self.attention = nn.Sequential(
            nn.Conv1d(pooled, cfg.attention_channels, 1),
            nn.ReLU(),
            nn.BatchNorm1d(cfg.attention_channels),
            nn.Conv1d(cfg.attention_channels, pooled, 1),
            nn.Softmax(dim=2),
        )
        self.fc = nn.Linear(2 * pooled, cfg.proj_dim)  # mean and std of each pooled feature

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        x = self.torch_spec(wav)  # (B, N) -> (B, 64, F) power mels, 10 ms frames
        if self.cfg.log_input:
            x = torch.log(x + 1e-6)
        x = self.instancenorm(x).unsqueeze(1)  # (B, 1, 64, F), per-utterance per-mel norm
        x = self.bn1(F.relu(self.conv1(x)))  # (B, 32, 64, F)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 256, 8, F/8)
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, 2048, F/8)
        w = self.attention(x)  # attention weights over time, summing to 1
        mean = torch.sum(x * w, dim=2)
        var = torch.sum(x * x * w, dim=2) - mean * mean
        std = torch.sqrt(var.clamp(min=1e-5))
        return self.fc(torch.cat([mean, std], dim=1))  # (B, 4096) -> (B, 512)


def load_speaker_encoder(
    path: str | os.PathLike, cfg: SpeakerEncoderConfig | None = None
) -> ResNetSpeakerEncoder:
    """Load ``torch.load(path)["speaker_encoder"]`` strictly, in eval mode."""
    state = read_state_dict(path, "speaker_encoder")
    encoder = ResNetSpeakerEncoder(cfg)
    load_strict(encoder, state, f"speaker encoder checkpoint {path}")
    return encoder.eval()


def speaker_embedding(
    encoder: ResNetSpeakerEncoder, samples: np.ndarray, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Prompt audio, (N,) or (N, C) at any rate -> L2-normalised speaker vector (1, 512, 1).

    Raises ``AudioError`` for audio the encoder cannot use: empty, NaN/inf, shorter than
    ``MIN_PROMPT_SECONDS`` or silent.
    """
    wav = to_mono_16k(samples, sample_rate)  # (N,) float32 16 kHz; rejects empty and NaN
    return _embed(encoder, wav, "prompt audio")


def speaker_embedding_from_file(
    encoder: ResNetSpeakerEncoder, path: str | os.PathLike
) -> torch.Tensor:
    """``speaker_embedding`` of an audio file such as a checkpoint's ``prompt.wav``."""
    return _embed(encoder, load_audio(path), os.fspath(path))


def _embed(encoder: ResNetSpeakerEncoder, wav: np.ndarray, name: str) -> torch.Tensor:
    seconds = len(wav) / SAMPLE_RATE
    if seconds < MIN_PROMPT_SECONDS:
        raise AudioError(
            f"{name} is {seconds:.2f} s long: the speaker encoder needs at least "
            f"{MIN_PROMPT_SECONDS} s of speech"
        )
    peak = float(np.abs(wav).max())
    if peak < SILENCE_PEAK:
        raise AudioError(f"{name} is silent (peak {peak:.1e}): it carries no voice")
    param = encoder.conv1.weight
    x = torch.from_numpy(wav).to(device=param.device, dtype=param.dtype).unsqueeze(0)  # (1, N)
    with torch.inference_mode():
        vec = encoder(x)  # (1, 512)
    return F.normalize(vec.float(), dim=1).unsqueeze(-1)  # (1, 512, 1)
