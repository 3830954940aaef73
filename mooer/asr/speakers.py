"""Online speaker labels: "speaker 1", "speaker 2"... for each final segment, as it comes.

Each segment's audio becomes a d-vector with resemblyzer's pretrained GE2E voice encoder (its
wheel ships the 17 MB of weights; nothing is downloaded), averaged over pieces of 1.6 s. A
``SpeakerLabeller`` keeps one running centroid per speaker: a segment joins the most similar
centroid when the cosine similarity reaches ``SpeakerConfig.threshold``, else it opens a new
speaker. A segment too short for a reliable voice print (under ``min_new_s``) never opens one:
it takes its nearest speaker and leaves the centroids as they were.

resemblyzer is optional (``scripts/setup.sh --tests`` installs it; see docs/meetings.md). Its own
mel front end goes through librosa, whose first call takes seconds; ``mel_frames`` computes the
same spectrogram in torch, so the first label costs what the others do.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mooer.audio import HOP_LENGTH, SAMPLE_RATE, WINDOW_LENGTH
from mooer.errors import ConfigError, check_number

if TYPE_CHECKING:
    from resemblyzer import VoiceEncoder

N_MELS = 40  # the encoder's input channels
PIECE_FRAMES = 160  # 1.6 s of 10 ms frames: what the encoder was trained on
PIECE_HOP = 80  # pieces overlap by half
LOUDNESS_DBFS = -30.0  # quieter segments are raised to this (as resemblyzer prepares its input)
INSTALL = "pip install --no-deps resemblyzer==0.1.4 webrtcvad-wheels && pip install librosa"


@dataclass(frozen=True)
class SpeakerConfig:
    """How segments are grouped into speakers.

    ``threshold``: the cosine similarity to a speaker's centroid a segment needs to be that
    speaker (lower merges voices, higher splits one voice into several). ``min_new_s``: a
    segment shorter than this never opens a new speaker. ``max_speakers``: past it, a segment
    joins its nearest speaker.
    """

    threshold: float = 0.78  # chosen on two dev meetings (bench/bench_speakers.py)
    min_new_s: float = 0.8
    max_speakers: int = 32

    def __post_init__(self) -> None:
        check_number(self.threshold, "SpeakerConfig.threshold", -1.0, 1.0)
        check_number(self.min_new_s, "SpeakerConfig.min_new_s", 0.0, 10.0)
        check_number(self.max_speakers, "SpeakerConfig.max_speakers", 1, 1000, integer=True)


def speaker_label(index: int) -> str:
    """The label of the ``index``-th speaker heard (0-based): "speaker 1", "speaker 2"..."""
    return f"speaker {index + 1}"


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = 3.0 * hz / 200.0
    log_part = hz >= 1000.0
    log_mel = 15.0 + 27.0 * np.log(np.maximum(hz, 1e-10) / 1000.0) / np.log(6.4)
    return np.where(log_part, log_mel, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = 200.0 * mel / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) * (mel - 15.0) / 27.0), hz)


def slaney_filterbank(n_fft: int = WINDOW_LENGTH, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular filters on Slaney's mel scale, each of unit area: (n_mels, n_fft // 2 + 1)."""
    freqs = np.linspace(0, SAMPLE_RATE / 2, n_fft // 2 + 1)  # FFT bin centres, Hz
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))  # Hz
    widths = np.diff(edges)  # (n_mels + 1,)
    offsets = edges[:, None] - freqs[None, :]  # (n_mels + 2, n_freqs)
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_freqs)
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


_FILTERS = torch.from_numpy(slaney_filterbank().T.astype(np.float32))  # (201, 40)
_WINDOW = torch.hann_window(WINDOW_LENGTH)  # periodic, (400,)


def mel_frames(audio: np.ndarray) -> torch.Tensor:
    """16 kHz samples (N,) -> the encoder's input, a power mel spectrogram (1 + N // 160, 40):
    25 ms Hann windows every 10 ms, centred (zero padded), not logged. In torch, so that it
    keeps to the calling thread's torch threads."""
    half = WINDOW_LENGTH // 2
    padded = torch.nn.functional.pad(torch.from_numpy(audio.astype(np.float32)), (half, half))
    frames = padded.unfold(0, WINDOW_LENGTH, HOP_LENGTH) * _WINDOW  # (T, 400)
    power = torch.fft.rfft(frames).abs() ** 2  # (T, 201)
    return power @ _FILTERS  # (T, 40)


def _louder(audio: np.ndarray) -> np.ndarray:
    """Raise a quiet segment to ``LOUDNESS_DBFS`` (never lower a loud one)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    target = 10 ** (LOUDNESS_DBFS / 20)
    return audio * (target / rms) if 0 < rms < target else audio


class SpeakerEncoder:
    """resemblyzer's voice encoder, loaded on first use (thread-safe) and shared by sessions."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._net: VoiceEncoder | None = None
        self._lock = threading.Lock()

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("resemblyzer") is not None

    def load(self) -> SpeakerEncoder:
        """Load the weights now (``ConfigError`` naming the install when resemblyzer is missing)."""
        with self._lock:
            if self._net is None:
                try:
                    with warnings.catch_warnings():  # its scipy import path is deprecated
                        warnings.simplefilter("ignore", DeprecationWarning)
                        from resemblyzer import VoiceEncoder
                except ImportError as exc:
                    raise ConfigError(
                        f"speaker labels need resemblyzer ({exc}): {INSTALL}"
                    ) from exc
                self._net = VoiceEncoder(self.device, verbose=False).eval()
        return self

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """A segment's voice print: 16 kHz samples (N,) -> unit vector (256,), the mean of the
        encoder's embeddings of half-overlapping 1.6 s pieces (a shorter segment is padded)."""
        net = self.load()._net
        mel = mel_frames(_louder(audio))  # (T, 40)
        if len(mel) < PIECE_FRAMES:
            mel = torch.nn.functional.pad(mel, (0, 0, 0, PIECE_FRAMES - len(mel)))
        count = 1 + -(-(len(mel) - PIECE_FRAMES) // PIECE_HOP)  # pieces covering every frame
        starts = np.linspace(0, len(mel) - PIECE_FRAMES, count).round().astype(int)
        pieces = torch.stack([mel[s : s + PIECE_FRAMES] for s in starts])  # (P, 160, 40)
        with torch.no_grad():
            embeds = net(pieces.to(net.device)).mean(dim=0).cpu().numpy()  # (P, 256) -> (256,)
        return embeds / max(float(np.linalg.norm(embeds)), 1e-12)


class SpeakerLabeller:
    """The speakers of one meeting (or session): labels in order of first appearance.

    Not thread-safe: one thread labels (the engine's worker).
    """

    def __init__(self, encoder: SpeakerEncoder, config: SpeakerConfig | None = None) -> None:
        self.encoder = encoder
        self.config = config or SpeakerConfig()
        self._sums: list[np.ndarray] = []  # per speaker: the sum of its segments' voice prints

    @property
    def count(self) -> int:
        return len(self._sums)

    def label(self, audio: np.ndarray) -> int:
        """The speaker (0-based index) of a segment's 16 kHz samples (N,)."""
        return self.assign(self.encoder.embed(audio), audio.size / SAMPLE_RATE)

    def assign(self, embedding: np.ndarray, duration_s: float) -> int:
        """The speaker of a segment of ``duration_s`` whose voice print is ``embedding`` (256,)."""
        config = self.config
        if not self._sums:
            self._sums.append(embedding.astype(np.float64))
            return 0
        centroids = np.stack(self._sums)  # (S, 256)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        scores = centroids @ embedding  # (S,) cosine similarities
        best = int(np.argmax(scores))
        if duration_s < config.min_new_s:
            return best  # too short to tell a new voice, or to sharpen a known one
        if scores[best] >= config.threshold or len(self._sums) >= config.max_speakers:
            self._sums[best] += embedding
            return best
        self._sums.append(embedding.astype(np.float64))
        return len(self._sums) - 1
