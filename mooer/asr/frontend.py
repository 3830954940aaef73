"""Speech features as the released encoder was trained on: Kaldi fbank -> LFR stacking -> CMVN.

The numbers must match FunASR's ``WavFrontend`` with the Paraformer settings, or the frozen
encoder sees inputs it has never seen; tests compare against it on real speech.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import kaldi_native_fbank as knf
import numpy as np
import torch

from mooer.audio import (
    FEATURE_DIM,
    HOP_LENGTH,
    HOP_MS,
    LFR_M,
    LFR_N,
    N_MELS,
    SAMPLE_RATE,
    WINDOW_LENGTH,
    WINDOW_MS,
    to_mono_16k,
)
from mooer.errors import AudioError, CheckpointError, ConfigError

PCM_SCALE = 32768.0  # Kaldi features are computed on 16-bit integer amplitudes


@dataclass
class Cmvn:
    """Global mean/variance normalisation applied after LFR: ``x = (x + shift) * rescale``."""

    shift: np.ndarray  # float32 (D,), minus the training mean
    rescale: np.ndarray  # float32 (D,), one over the training standard deviation

    def __post_init__(self) -> None:
        self.shift = np.asarray(self.shift, dtype=np.float32)
        self.rescale = np.asarray(self.rescale, dtype=np.float32)
        if self.shift.ndim != 1 or self.shift.shape != self.rescale.shape:
            raise ConfigError(
                f"CMVN shift {self.shift.shape} and rescale {self.rescale.shape} must be equal 1-D"
            )

    @property
    def dim(self) -> int:
        return int(self.shift.shape[0])

    @classmethod
    def identity(cls, dim: int = FEATURE_DIM) -> Cmvn:
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Cmvn:
        """Read a Kaldi nnet1 text ``am.mvn`` (an ``<AddShift>`` and a ``<Rescale>`` component)."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"cannot read CMVN file {path}: {err}") from err
        return cls(
            _read_component(text, "<AddShift>", path), _read_component(text, "<Rescale>", path)
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the same text layout as the released ``am.mvn`` (readable by FunASR and Kaldi)."""
        d = self.dim
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"<Nnet>\n<Splice> {d} {d}\n[ 0 ]\n")
            f.write(f"<AddShift> {d} {d}\n<LearnRateCoef> 0 [ {_floats(self.shift)} ]\n")
            f.write(f"<Rescale> {d} {d}\n<LearnRateCoef> 0 [ {_floats(self.rescale)} ]\n")
            f.write("</Nnet>\n")

    def apply(self, feats: np.ndarray) -> np.ndarray:
        """(T, D) -> (T, D) normalised."""
        return (feats + self.shift) * self.rescale


def _floats(values: np.ndarray) -> str:
    return " ".join(str(v) for v in values.astype(np.float32))  # shortest exact float32 text


def _read_component(text: str, tag: str, path: str) -> np.ndarray:
    """The bracketed vector of ``<Tag> out in [<LearnRateCoef> c] [ v1 v2 ... ]``."""
    pattern = re.escape(tag) + r"\s+(\d+)\s+(\d+)\s+(?:<LearnRateCoef>\s+\S+\s+)?\[([^\]]*)\]"
    match = re.search(pattern, text)
    if match is None:
        raise CheckpointError(f"CMVN file {path} has no well-formed {tag} component")
    dim_out, dim_in, body = int(match[1]), int(match[2]), match[3].split()
    try:
        values = np.array([float(v) for v in body], dtype=np.float32)
    except ValueError as err:
        raise CheckpointError(f"CMVN file {path}: {tag} holds a non-number: {err}") from err
    if not dim_out == dim_in == len(values):
        raise CheckpointError(
            f"CMVN file {path}: {tag} declares {dim_out}x{dim_in} but holds {len(values)} values"
        )
    if not np.isfinite(values).all():
        raise CheckpointError(f"CMVN file {path}: {tag} holds NaN or infinite values")
    return values


def fbank(samples: np.ndarray) -> np.ndarray:
    """(N,) float32 16 kHz in [-1, 1] -> (T, 80) Kaldi log-mel fbank, T = 1 + (N - 400) // 160.

    Kaldi defaults otherwise (pre-emphasis 0.97, DC removal, 512-point FFT, 20 Hz low cut);
    fewer than 400 samples give T = 0.
    """
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.frame_shift_ms = HOP_MS
    opts.frame_opts.frame_length_ms = WINDOW_MS
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hamming"
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = N_MELS
    opts.energy_floor = 0.0
    extractor = knf.OnlineFbank(opts)
    extractor.accept_waveform(SAMPLE_RATE, np.asarray(samples, dtype=np.float32) * PCM_SCALE)
    extractor.input_finished()
    num = extractor.num_frames_ready
    if num == 0:
        return np.zeros((0, N_MELS), np.float32)
    return np.stack([extractor.get_frame(i) for i in range(num)])  # copies out of knf's buffers


def lfr(feats: np.ndarray, m: int = LFR_M, n: int = LFR_N) -> np.ndarray:
    """Stack m frames every n (FunASR style): (T, D) -> (ceil(T / n), m * D).

    The front is padded with (m - 1) // 2 copies of the first frame and the last window with
    copies of the last frame, so frame i is centred on input frame i * n.
    """
    num_in, dim = feats.shape
    num_out = math.ceil(num_in / n)
    if num_out == 0:
        return np.zeros((0, m * dim), feats.dtype)
    # (T', m) window of input frames per output frame; out-of-range rows repeat the first / last
    rows = np.arange(num_out)[:, None] * n + np.arange(m)[None, :] - (m - 1) // 2
    rows = np.clip(rows, 0, num_in - 1)
    return feats[rows].reshape(num_out, m * dim)  # (T', m, D) -> (T', m * D)


def num_frames(num_samples: int) -> int:
    """LFR (encoder) frames for a clip of ``num_samples`` at 16 kHz: 160000 -> 998 fbank -> 167."""
    fbank_frames = (
        0 if num_samples < WINDOW_LENGTH else 1 + (num_samples - WINDOW_LENGTH) // HOP_LENGTH
    )
    return math.ceil(fbank_frames / LFR_N)


class Frontend:
    """16 kHz samples -> normalised LFR features, the encoder's input."""

    def __init__(self, cmvn: Cmvn) -> None:
        if cmvn.dim != FEATURE_DIM:
            raise ConfigError(f"CMVN has {cmvn.dim} dims but the front end makes {FEATURE_DIM}")
        self.cmvn = cmvn

    def __call__(self, samples: np.ndarray) -> torch.Tensor:
        """(N,) samples at 16 kHz -> (T', 560) float32, T' = num_frames(N)."""
        samples = to_mono_16k(samples, SAMPLE_RATE)
        if len(samples) < WINDOW_LENGTH:
            raise AudioError(
                f"audio of {len(samples)} samples is shorter than one {WINDOW_MS} ms frame "
                f"({WINDOW_LENGTH} samples)"
            )
        feats = self.cmvn.apply(lfr(fbank(samples)))
        return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))

    def batch(self, samples: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """B clips -> (feats (B, T_max, 560) zero-padded, lengths (B,) int64)."""
        if not samples:
            raise AudioError("cannot make features for an empty batch")
        feats = [self(s) for s in samples]
        lengths = torch.tensor([len(f) for f in feats], dtype=torch.int64)
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)  # (B, T_max, 560)
        return padded, lengths
