"""Latents -> audio with the HiFi-GAN head, for a whole utterance or streamed as the LLM speaks.

Streaming runs a mirror of the generator in which every layer keeps, between pushes, the few
input samples its kernel still needs (a convolution its last ``dilation * (kernel - 1)`` inputs,
a transposed convolution the overlap of its last outputs, the interpolation its last frame).
Each push then computes only the new samples, so streaming costs what whole-utterance vocoding
costs, and the output equals it up to float rounding. The generator is not causal: a sample is
final only once every input it reads has arrived, so the audio trails the latents by a fixed
lookahead (3770 samples for the released head: 3.7 latent frames, 171 ms at 22.05 kHz).
Audio is float32 in [-1, 1] at the generator's rate (22050 Hz), 1024 samples a frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mooer.errors import ConfigError
from mooer.tts.hifigan import LRELU_SLOPE, POST_LRELU_SLOPE, HifiganGenerator, ResBlock


def _as_latents(generator: HifiganGenerator, latents: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check (T, C_in) and move to the generator's device and dtype."""
    x = torch.as_tensor(latents)
    c_in = generator.cfg.input_channels
    if x.dim() != 2 or x.shape[1] != c_in:
        raise ConfigError(f"latents must have shape (T, {c_in}), got {tuple(x.shape)}")
    param = generator.conv_pre.weight
    return x.to(device=param.device, dtype=param.dtype)


def _as_speaker(generator: HifiganGenerator, speaker: torch.Tensor) -> torch.Tensor:
    dim = generator.cfg.speaker_channels
    if speaker.shape != (1, dim, 1):
        raise ConfigError(
            f"speaker vector must have shape (1, {dim}, 1), got {tuple(speaker.shape)}"
        )
    param = generator.conv_pre.weight
    return speaker.to(device=param.device, dtype=param.dtype)


def vocode(
    generator: HifiganGenerator, latents: torch.Tensor | np.ndarray, speaker: torch.Tensor
) -> np.ndarray:
    """Whole-utterance vocoding: latents (T, C_in), speaker (1, 512, 1) -> float32 (T * 1024,)."""
    x = _as_latents(generator, latents)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        wav = generator(x.unsqueeze(0), _as_speaker(generator, speaker))  # (1, T * hop)
    return wav[0].float().cpu().numpy()


# --- layers run on a growing signal ---------------------------------------------------------------
#
# Each takes (1, C_in, n) new input samples and returns (1, C_out, m) newly final output samples;
# ``flush`` takes the signal's last samples and returns every output still due. Of the
# ``rate * n`` outputs of n inputs, the last ``delay`` wait for inputs not yet seen.


# Below this many samples per call a plain matrix product beats torch's convolutions: oneDNN
# re-lays the weights out on every call, which for conv_pre (51 MB) costs several times the
# product itself, and the fallback kernels for small inputs loop in small pieces.
_SHORT = 32


def _empty(channels: int, like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(1, channels, 0)


class _Conv:
    """A same-padded Conv1d (optionally after a leaky ReLU) that keeps the inputs it still reads."""

    rate = 1

    def __init__(
        self, conv: nn.Conv1d, slope: float | None = None, extra_bias: torch.Tensor | None = None
    ) -> None:
        (kernel,), (dilation,), (pad,) = conv.kernel_size, conv.dilation, conv.padding
        self.weight, self.dilation, self.slope = conv.weight, dilation, slope
        self.matrix = conv.weight.reshape(conv.out_channels, -1)  # (C_out, C_in * kernel)
        self.bias = conv.bias if extra_bias is None else conv.bias + extra_bias  # (C_out,)
        self.span = dilation * (kernel - 1)  # inputs an output reads besides its own position
        self.pad = pad
        self.delay = self.span - pad
        self.reset()

    def reset(self) -> None:
        self.held = self.weight.new_zeros(1, self.weight.shape[1], self.pad)  # the left padding

    def push(self, x: torch.Tensor) -> torch.Tensor:
        if self.slope is not None:
            x = F.leaky_relu(x, self.slope)  # leaky_relu(0) = 0, so the padding needs none
        window = torch.cat([self.held, x], dim=-1)  # (1, C_in, held + n)
        if window.shape[-1] <= self.span:
            self.held = window
            return _empty(self.weight.shape[0], x)
        self.held = window[..., window.shape[-1] - self.span :]
        n_out = window.shape[-1] - self.span
        if n_out > _SHORT:
            return F.conv1d(window, self.weight, self.bias, dilation=self.dilation)  # (1, C_out, m)
        taps = window[0].unfold(-1, self.span + 1, 1)[..., :: self.dilation]  # (C_in, m, kernel)
        columns = taps.transpose(1, 2).reshape(-1, n_out)  # (C_in * kernel, m)
        return torch.addmm(self.bias[:, None], self.matrix, columns).unsqueeze(0)

    def flush(self, x: torch.Tensor) -> torch.Tensor:
        pad = x.new_zeros(1, x.shape[1], self.pad)
        return self.push(torch.cat([x, pad], dim=-1))  # one call: conv_pre's weights are 51 MB


class _ConvTranspose:
    """A ConvTranspose1d after a leaky ReLU, by overlap-add: each input's kernel-long stamp is
    final once the next inputs' stamps have been added, so only the overlap is carried."""

    def __init__(self, up: nn.ConvTranspose1d, slope: float, extra_bias: torch.Tensor) -> None:
        (kernel,), (stride,), (pad,) = up.kernel_size, up.stride, up.padding
        self.weight, self.slope, self.rate, self.pad = up.weight, slope, stride, pad
        self.kernel = kernel
        self.matrix = up.weight.reshape(up.in_channels, -1).T  # (C_out * kernel, C_in)
        self.bias = (up.bias + extra_bias)[:, None]  # (C_out, 1)
        self.overlap = kernel - stride  # outputs of an input that the next input also writes
        self.delay = pad
        self.reset()

    def reset(self) -> None:
        self.carry = self.weight.new_zeros(1, self.weight.shape[1], self.overlap)
        self.crop = self.pad  # outputs before the signal's start, which the padding removes

    def push(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        if n == 0:
            return _empty(self.weight.shape[1], x)
        x = F.leaky_relu(x, self.slope)
        if n > _SHORT:
            y = F.conv_transpose1d(x, self.weight, stride=self.rate)  # (1, C_out, n*rate + overlap)
        else:
            stamps = (self.matrix @ x[0]).unsqueeze(0)  # (1, C_out * kernel, n)
            length = n * self.rate + self.overlap
            y = F.fold(stamps, (1, length), (1, self.kernel), stride=(1, self.rate))[:, :, 0]
        y[..., : self.overlap] += self.carry
        self.carry = y[..., n * self.rate :]
        return self._cropped(y[..., : n * self.rate] + self.bias)

    def flush(self, x: torch.Tensor) -> torch.Tensor:
        out = self.push(x)
        rest = self._cropped(self.carry[..., : self.overlap - self.pad] + self.bias)
        return torch.cat([out, rest], dim=-1)

    def _cropped(self, out: torch.Tensor) -> torch.Tensor:
        cut = min(self.crop, out.shape[-1])
        self.crop -= cut
        return out[..., cut:]


class _Interpolate:
    """Linear interpolation by an integer factor (``align_corners=False``): an output reads the
    two frames around it, so the last frame is kept until the next one arrives."""

    def __init__(self, scale: int) -> None:
        self.rate = scale
        self.half = scale // 2  # outputs of a frame that lie before its centre
        self.delay = scale - self.half
        self.reset()

    def reset(self) -> None:
        self.last: torch.Tensor | None = None  # (1, C, 1)

    def push(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == 0:
            return x
        # At the start the edge is clamped exactly as in the whole utterance; later the window
        # opens with the kept frame, whose own first outputs were returned before.
        start = 0 if self.last is None else self.half
        window = x if self.last is None else torch.cat([self.last, x], dim=-1)  # (1, C, L)
        self.last = window[..., -1:]
        y = F.interpolate(window, scale_factor=float(self.rate), mode="linear")  # (1, C, L * s)
        return y[..., start : (window.shape[-1] - 1) * self.rate + self.half]

    def flush(self, x: torch.Tensor) -> torch.Tensor:
        out = self.push(x)
        if self.last is None:
            return out
        y = F.interpolate(self.last, scale_factor=float(self.rate), mode="linear")  # (1, C, s)
        return torch.cat([out, y[..., self.half :]], dim=-1)


class _Identity:
    rate, delay = 1, 0

    def reset(self) -> None:
        pass

    def push(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def flush(self, x: torch.Tensor) -> torch.Tensor:
        return x


_Layer = _Conv | _ConvTranspose | _Interpolate | _Identity


class _Chain:
    """Layers in sequence."""

    def __init__(self, layers: list[_Layer | _Chain | _Sum]) -> None:
        self.layers = layers
        self.rate, self.delay = 1, 0
        for layer in layers:
            self.rate *= layer.rate
            self.delay = self.delay * layer.rate + layer.delay

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def push(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.push(x)
        return x

    def flush(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.flush(x)
        return x


class _Sum:
    """Branches on the same input, summed (and divided): each branch's outputs wait in a queue
    until the slowest branch has produced the same samples."""

    def __init__(self, branches: list[_Layer | _Chain], divisor: int = 1) -> None:
        self.branches, self.divisor = branches, divisor
        self.rate = branches[0].rate
        self.delay = max(b.delay for b in branches)
        self.reset()

    def reset(self) -> None:
        self.queues: list[torch.Tensor | None] = [None] * len(self.branches)
        for branch in self.branches:
            branch.reset()

    def push(self, x: torch.Tensor) -> torch.Tensor:
        return self._added([b.push(x) for b in self.branches])

    def flush(self, x: torch.Tensor) -> torch.Tensor:
        return self._added([b.flush(x) for b in self.branches])

    def _added(self, outs: list[torch.Tensor]) -> torch.Tensor:
        self.queues = [
            o if q is None or q.shape[-1] == 0 else torch.cat([q, o], dim=-1)
            for q, o in zip(self.queues, outs)
        ]
        n = min(q.shape[-1] for q in self.queues)
        total = self.queues[0][..., :n]
        for q in self.queues[1:]:
            total = total + q[..., :n]
        self.queues = [q[..., n:] for q in self.queues]
        return total if self.divisor == 1 else total / self.divisor


def _resblock(block: ResBlock) -> _Chain:
    """x + conv2(lrelu(conv1(lrelu(x)))) per dilation, as ``ResBlock.forward``."""
    return _Chain(
        [
            _Sum([_Identity(), _Chain([_Conv(c1, LRELU_SLOPE), _Conv(c2, LRELU_SLOPE)])])
            for c1, c2 in zip(block.convs1, block.convs2)
        ]
    )


def _streaming_generator(generator: HifiganGenerator, speaker: torch.Tensor) -> _Chain:
    """The layers of ``HifiganGenerator.forward`` without the final tanh, the speaker
    conditioning folded into biases: (1, C_in, frames) -> (1, 1, frames * hop)."""
    cfg = generator.cfg
    n_kernels = len(cfg.resblock_kernels)
    with torch.inference_mode():
        layers: list[_Layer | _Chain | _Sum] = [
            _Interpolate(cfg.input_upsample),
            _Conv(generator.conv_pre, extra_bias=generator.cond_layer(speaker).flatten()),
        ]
        for i, up in enumerate(generator.ups):
            layers.append(_ConvTranspose(up, LRELU_SLOPE, generator.conds[i](speaker).flatten()))
            blocks = generator.resblocks[i * n_kernels : (i + 1) * n_kernels]
            layers.append(_Sum([_resblock(b) for b in blocks], divisor=n_kernels))
        layers.append(_Conv(generator.conv_post, POST_LRELU_SLOPE))
    return _Chain(layers)


# --- the streaming vocoder ------------------------------------------------------------------------


@dataclass
class VocoderState:
    """One utterance's progress; the layers' kept samples live in the streaming generator."""

    pending: torch.Tensor | None = None  # (F, C_in): frames not yet run through the layers
    received: int = 0  # frames pushed so far
    emitted: int = 0  # samples returned so far

    def reset(self) -> None:
        self.pending = None
        self.received = self.emitted = 0


class StreamingVocoder:
    """Vocodes latents as they arrive; ``push`` returns the audio that can no longer change.

    A sample is final once ``lookahead`` samples of latents beyond it have arrived (3770 samples
    for the released head, i.e. ``right_context`` = 4 whole frames). Audio is released in
    batches of at least ``chunk_frames`` frames, so the first audio comes after
    ``chunk_frames + right_context`` frames (4 + 4 = 8 frames, 372 ms of speech, by default)
    and a player is not left waiting on a sliver; the layers run once per batch, which also
    saves per-call overhead. ``flush`` ends the utterance and resets the state.
    """

    def __init__(
        self, generator: HifiganGenerator, speaker: torch.Tensor, chunk_frames: int = 4
    ) -> None:
        if chunk_frames < 1:
            raise ConfigError(f"chunk_frames must be >= 1, got {chunk_frames}")
        self.generator = generator
        self.chunk_frames = chunk_frames
        self.layers = _streaming_generator(generator, _as_speaker(generator, speaker))
        self.state = VocoderState()

    @property
    def sample_rate(self) -> int:
        return self.generator.cfg.sample_rate

    @property
    def lookahead(self) -> int:
        """Samples by which the final audio trails the latents received (3770 when released)."""
        return self.layers.delay

    @property
    def right_context(self) -> int:
        """Latent frames that must follow a frame before all of its audio is final."""
        return math.ceil(self.lookahead / self.generator.cfg.hop)

    def reset(self) -> None:
        """Drop the current utterance (e.g. on barge-in)."""
        self.state.reset()
        self.layers.reset()

    def push(self, latents: torch.Tensor | np.ndarray) -> np.ndarray:
        """Add latents (T, C_in); returns float32 audio that is final, possibly empty."""
        x = _as_latents(self.generator, latents)
        st = self.state
        st.pending = x if st.pending is None else torch.cat([st.pending, x])  # (F + T, C_in)
        st.received += x.shape[0]
        final = st.received * self.generator.cfg.hop - self.lookahead
        if final - st.emitted < self.chunk_frames * self.generator.cfg.hop:
            return np.zeros(0, dtype=np.float32)
        with torch.inference_mode():
            out = self.layers.push(st.pending.T.unsqueeze(0))  # (1, C_in, F) -> (1, 1, samples)
        st.pending = None
        return self._audio(out)

    def flush(self) -> np.ndarray:
        """The rest of the utterance (its end needs no lookahead); then reset."""
        st = self.state
        if st.received == 0:
            return np.zeros(0, dtype=np.float32)
        if st.pending is None:
            st.pending = self.generator.conv_pre.weight.new_zeros(
                0, self.generator.cfg.input_channels
            )
        with torch.inference_mode():
            out = self.layers.flush(st.pending.T.unsqueeze(0))  # (1, C_in, F) -> (1, 1, samples)
        audio = self._audio(out)
        self.reset()
        return audio

    def _audio(self, out: torch.Tensor) -> np.ndarray:
        self.state.emitted += out.shape[-1]
        return torch.tanh(out)[0, 0].float().cpu().numpy()
