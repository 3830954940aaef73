"""The server's VAD clock: frames heard as they come, every session's windows scored together."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import torch

from mooer.agent import events as ev
from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig
from mooer.asr.vad import WINDOW, VadModel, shared_vad_model
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.server.vad_clock import VadClock
from tests.agent.recorder import Recorder

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
FRAME = SAMPLE_RATE // 50  # 20 ms, as the Realtime clients send


class CountedVad(VadModel):
    """The shared silero network, noting how many windows each call scores."""

    def __init__(self) -> None:
        super().__init__(shared_vad_model().network)
        self.calls: list[int] = []

    def __call__(
        self, windows: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(windows.shape[0])
        return super().__call__(windows, state)


def test_sessions_heard_within_a_tick_are_scored_in_one_call_each_round(demo):
    """Four sessions send 20 ms frames; each tick scores their due windows together (one call
    for the four per round), and each still gets its turn and its final."""
    vad = CountedVad()
    engine = Engine(demo, threads=1, vad_model=vad)
    clip = load_audio(EXAMPLES / "zh_weather.wav")
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)
    stream = np.concatenate([silence[: SAMPLE_RATE // 2], clip, silence])
    stream = stream[: stream.size // (5 * FRAME) * 5 * FRAME]  # whole 100 ms rounds
    recorders = [Recorder() for _ in range(4)]
    sessions = [engine.open(SessionConfig(), r) for r in recorders]

    async def send() -> None:
        clock = VadClock()
        for start in range(0, stream.size, 5 * FRAME):  # 100 ms of frames, then the tick
            for session in sessions:
                for at in range(start, start + 5 * FRAME, FRAME):
                    clock.hear(session, stream[at : at + FRAME])
            await asyncio.sleep(clock.tick_s * 2)

    try:
        asyncio.run(send())
        windows = stream.size // WINDOW
        assert sum(vad.calls) == 4 * windows  # every window of every session, once
        assert vad.calls == [4] * windows  # the four sessions' windows in one call each round
        for session in sessions:
            session.close()
        assert all(session.wait_closed(60) for session in sessions)
        for recorder in recorders:
            assert [e.text for e in recorder.of(ev.Transcript)] == ["星期一会下雨"]
    finally:
        engine.close(timeout=30)
