"""Shared fixtures: fabricated checkpoints in every released layout, written once per test session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mooer.audio import SAMPLE_RATE


@pytest.fixture(scope="session")
def fabricated(tmp_path_factory):
    """``fabricated(layout) -> checkpoint root``; the MTL base LLM is at ``root.parent / "llm"``."""
    from mooer.fabricate import fabricate

    made: dict[str, Path] = {}

    def make(layout: str) -> Path:
        if layout not in made:
            made[layout] = fabricate(tmp_path_factory.mktemp(layout), layout=layout, seed=0)
        return made[layout]

    return make


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """A 2 s harmonic 'voice' with a pause, as a 16 kHz PCM16 wav."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    voice = 0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    path = tmp_path_factory.mktemp("audio") / "voice.wav"
    sf.write(path, voice.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path
