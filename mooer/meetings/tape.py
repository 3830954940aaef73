"""The audio a recorded connection received, kept long enough to cut each final's segment out.

The event loop appends what the client sent (16 kHz, meeting stream time); the meeting writer
thread cuts a final's ``[start_ms, end_ms)`` and compresses it to FLAC. Only the last
``keep_s`` seconds are held: an utterance longer than that keeps its last ``keep_s`` seconds.
"""

from __future__ import annotations

import io
import threading
from collections import deque

import numpy as np
import soundfile as sf

from mooer.audio import SAMPLE_RATE

KEEP_S = 300.0  # far longer than the VAD lets an utterance run


class AudioTape:
    """PCM16 at 16 kHz; sample ``i`` of the meeting is ``i`` since the connection opened."""

    def __init__(self, start_ms: int = 0, keep_s: float = KEEP_S) -> None:
        """``start_ms``: the meeting stream time of the first sample to come."""
        self.keep = int(keep_s * SAMPLE_RATE)
        self._chunks: deque[np.ndarray] = deque()
        self._first = start_ms * SAMPLE_RATE // 1000  # meeting sample index of _chunks[0][0]
        self._held = 0
        self._lock = threading.Lock()

    def append(self, samples: np.ndarray) -> None:
        """``samples``: float in [-1, 1] at 16 kHz, as the engine is fed."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)  # (n,)
        with self._lock:
            self._chunks.append(pcm)
            self._held += pcm.size
            while self._held - self._chunks[0].size >= self.keep:
                dropped = self._chunks.popleft()
                self._first += dropped.size
                self._held -= dropped.size

    def flac(self, start_ms: int, end_ms: int) -> bytes | None:
        """The audio of ``[start_ms, end_ms)`` as a FLAC file; None when none of it is held."""
        start, end = start_ms * SAMPLE_RATE // 1000, end_ms * SAMPLE_RATE // 1000
        parts = []
        with self._lock:
            at = self._first
            for chunk in self._chunks:
                lo, hi = max(start, at), min(end, at + chunk.size)
                if lo < hi:
                    parts.append(chunk[lo - at : hi - at])
                at += chunk.size
        if not parts:
            return None
        piece = np.concatenate(parts)  # (end - start,) or less where it is no longer held
        out = io.BytesIO()
        sf.write(out, piece, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        return out.getvalue()
