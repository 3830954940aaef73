"""Latents -> audio with the HiFi-GAN head, for a whole utterance or streamed as the LLM speaks.

Streaming vocodes each chunk together with ``left_context``/``right_context`` neighbouring
latent frames and keeps only the chunk's own samples. With both contexts at least the
generator's receptive-field radius (``HifiganConfig.context_frames``, 4 frames for the released
head) the concatenated chunks equal whole-utterance vocoding up to float rounding, so there are
no seams. Audio is float32 in [-1, 1] at the generator's rate (22050 Hz), 1024 samples a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mooer.errors import ConfigError
from mooer.tts.hifigan import HifiganGenerator


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


def _synthesize(
    generator: HifiganGenerator, latents: torch.Tensor, speaker: torch.Tensor
) -> np.ndarray:
    """(T, C_in) -> float32 (T * hop,) on the CPU."""
    with torch.inference_mode():
        wav = generator(latents.unsqueeze(0), speaker)  # (1, T, C_in) -> (1, T * hop)
    return wav[0].float().cpu().numpy()


def vocode(
    generator: HifiganGenerator, latents: torch.Tensor | np.ndarray, speaker: torch.Tensor
) -> np.ndarray:
    """Whole-utterance vocoding: latents (T, C_in), speaker (1, 512, 1) -> float32 (T * 1024,)."""
    x = _as_latents(generator, latents)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    return _synthesize(generator, x, _as_speaker(generator, speaker))


@dataclass
class VocoderState:
    """One utterance's progress; frame indices count from the utterance start."""

    pending: torch.Tensor | None = None  # (F, C_in): kept left context + frames not yet vocoded
    pending_start: int = 0  # utterance index of pending[0]
    received: int = 0  # frames pushed so far
    emitted: int = 0  # frames whose audio has been returned

    def reset(self) -> None:
        self.pending = None
        self.pending_start = self.received = self.emitted = 0


class StreamingVocoder:
    """Vocodes latents as they arrive; ``push`` returns the audio that can no longer change.

    A frame's audio is final once ``right_context`` later frames have arrived; it is released in
    batches of at least ``chunk_frames`` frames, since every batch also pays for its context.
    The first audio comes after ``chunk_frames + right_context`` frames (with the defaults,
    4 + 4 = 8 frames, 372 ms of speech); fed one frame at a time, each chunk costs
    (left + chunk + right) / chunk = 3x its share of whole-utterance vocoding (2x at chunk 8).
    ``flush`` ends the utterance and resets the state.
    Contexts default to the generator's receptive-field radius, which makes the output exact.
    """

    def __init__(
        self,
        generator: HifiganGenerator,
        speaker: torch.Tensor,
        chunk_frames: int = 4,
        left_context: int | None = None,
        right_context: int | None = None,
    ) -> None:
        radius = generator.cfg.context_frames
        self.left_context = radius if left_context is None else left_context
        self.right_context = radius if right_context is None else right_context
        if chunk_frames < 1:
            raise ConfigError(f"chunk_frames must be >= 1, got {chunk_frames}")
        if self.left_context < 0 or self.right_context < 0:
            raise ConfigError(
                f"contexts must be >= 0, got left {self.left_context}, right {self.right_context}"
            )
        self.generator = generator
        self.speaker = _as_speaker(generator, speaker)  # (1, 512, 1)
        self.chunk_frames = chunk_frames
        self.state = VocoderState()

    @property
    def sample_rate(self) -> int:
        return self.generator.cfg.sample_rate

    def reset(self) -> None:
        """Drop the current utterance (e.g. on barge-in)."""
        self.state.reset()

    def push(self, latents: torch.Tensor | np.ndarray) -> np.ndarray:
        """Add latents (T, C_in); returns float32 audio that is final, possibly empty."""
        x = _as_latents(self.generator, latents)
        st = self.state
        st.pending = x if st.pending is None else torch.cat([st.pending, x])  # (F + T, C_in)
        st.received += x.shape[0]
        ready = st.received - self.right_context - st.emitted
        if ready < self.chunk_frames:
            return np.zeros(0, dtype=np.float32)
        return self._emit(st.emitted + ready)

    def flush(self) -> np.ndarray:
        """The rest of the utterance (its end needs no right context); then reset."""
        st = self.state
        audio = self._emit(st.received) if st.received > st.emitted else np.zeros(0, np.float32)
        st.reset()
        return audio

    def _emit(self, stop: int) -> np.ndarray:
        """Vocode frames [emitted, stop) with their context and return only their samples."""
        st = self.state
        hop = self.generator.cfg.hop
        lo = max(st.pending_start, st.emitted - self.left_context)
        hi = min(st.received, stop + self.right_context)
        window = st.pending[lo - st.pending_start : hi - st.pending_start]  # (hi - lo, C_in)
        wav = _synthesize(self.generator, window, self.speaker)  # ((hi - lo) * hop,)
        audio = wav[(st.emitted - lo) * hop : (stop - lo) * hop]
        st.emitted = stop
        # Keep only what later chunks still read as left context.
        keep_from = max(st.pending_start, stop - self.left_context)
        st.pending = st.pending[keep_from - st.pending_start :]
        st.pending_start = keep_from
        return audio
