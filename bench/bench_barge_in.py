"""Barge-in latency on /v1/realtime: how soon a spoken reply falls silent when the user talks.

A real server over the bundled demo model, a spoken chat through the openai SDK, and a client
that plays the reply at real time as a voice agent does. Each trial asks a question, starts
"playing" at the reply's first audio, and 0.5 s into playback streams another utterance at real
time (100 ms chunks) over it. When ``input_audio_buffer.speech_started`` arrives the client stops
playing and sends ``conversation.item.truncate`` with what it played (Pipecat and LiveKit do
this). Measured at the client, per trial:

* detect: from the interrupting speech's onset to ``speech_started``: how long the user hears
  the reply over their own voice (the VAD's onset wait plus the wire);
* truncate: from sending ``conversation.item.truncate`` to ``conversation.item.truncated``
  (the memory cut to what was heard).

On a CPU the demo model and espeak-ng make a reply faster than it plays: its audio is all sent
before anyone can interrupt, so the server has nothing left to clear (``output_audio_buffer.
cleared`` comes when a reply is still being generated: tests/server/test_speech_server.py checks
that at most one audio chunk follows ``speech_started`` then). The bench keeps the reply long
(the end-of-answer token is suppressed) so that the interruption falls inside it.

    python bench/bench_barge_in.py [--trials 10]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import replace

import numpy as np
from machine import describe

from mooer.audio import SAMPLE_RATE, resample
from mooer.llm.conversation import CHAT
from mooer.server.pcm import encode_pcm16
from mooer.speak import text_to_speech
from mooer.tts.backend import EspeakBackend

RATE = 24000  # the Realtime API's PCM16 rate
CHUNK_S = 0.1  # the interrupting speech is streamed in 100 ms chunks, at real time
PLAYED_S = 0.5  # of the reply, before the user talks over it
PAUSE_S = 0.3  # silence in the interrupting clip before its speech
QUESTION, INTERRUPTION = "what is ten plus five", "stop please"


def _at_24k(text: str, pause_s: float) -> bytes:
    """``text`` spoken (held-out voice) after ``pause_s`` of silence, 1 s of silence after it."""
    pcm, _ = text_to_speech(text, "en", "f4", EspeakBackend(rate=180, pitch=50), SAMPLE_RATE)
    wave = pcm.astype(np.float32) / 32768.0
    before = np.zeros(int(pause_s * SAMPLE_RATE), np.float32)
    after = np.zeros(SAMPLE_RATE, np.float32)
    return encode_pcm16(resample(np.concatenate([before, wave, after]), SAMPLE_RATE, RATE))


async def _trial(url: str, question: bytes, interruption: bytes, pause_s: float) -> tuple:
    """(detect s, truncate s, ms of the reply played, ms of it made) of one interruption."""
    import base64

    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    step = int(RATE * CHUNK_S) * 2

    async def send(pcm: bytes, real_time: bool) -> None:
        for i in range(0, len(pcm), step):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + step]).decode())
            if real_time:
                await asyncio.sleep(CHUNK_S)

    async with client.realtime.connect(model="mooer") as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["audio"]})
        await send(question, real_time=False)
        made, item_id, playing = 0, None, 0.0
        talking = onset = started = None
        async for event in conn:
            now = time.perf_counter()
            if event.type == "response.output_audio.delta":
                made += len(base64.b64decode(event.delta)) // 2
                if item_id is None:
                    item_id, playing = event.item_id, now
                    await asyncio.sleep(PLAYED_S)  # the user listens, then talks over it
                    onset = time.perf_counter() + pause_s
                    talking = asyncio.create_task(send(interruption, real_time=True))
            elif event.type == "input_audio_buffer.speech_started" and talking is not None:
                started = now
                break
        assert started is not None and onset is not None and talking is not None
        played_ms = int((started - playing) * 1000)
        await conn.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=played_ms
        )
        async for event in conn:
            if event.type in ("conversation.item.truncated", "error"):
                assert event.type != "error", event
                break
        truncated = time.perf_counter()
        await talking
    return started - onset, truncated - started, played_ms, made * 1000 // RATE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args(argv)

    from mooer.agent.engine import Engine
    from mooer.agent.session import SessionConfig
    from mooer.model import load_model
    from mooer.server.app import start
    from mooer.server.config import ServerConfig
    from mooer.server.hub import Hub

    model = load_model()
    endless = replace(CHAT, max_new_tokens=400, eos_bias=-1e9)
    defaults = SessionConfig(mode="chat", chat_options=endless)
    server = start(Hub(model, Engine(model, threads=1), ServerConfig(port=0), defaults))
    question, interruption = _at_24k(QUESTION, 0.3), _at_24k(INTERRUPTION, PAUSE_S)
    try:
        results = [
            asyncio.run(_trial(server.url, question, interruption, PAUSE_S))
            for _ in range(args.trials)
        ]
    finally:
        server.stop()
    detect = np.array([r[0] for r in results]) * 1000
    truncate = np.array([r[1] for r in results]) * 1000
    print(describe())
    print(f"{args.trials} trials, demo model, 100 ms chunks at real time")
    for name, ms in (("detect (speech onset -> speech_started)", detect), ("truncate", truncate)):
        print(f"{name}: p50 {np.median(ms):.0f} ms, p95 {np.percentile(ms, 95):.0f} ms")
    played = [f"{r[2]}/{r[3]}" for r in results]
    print(f"reply ms played / made when interrupted: {', '.join(played)}")


if __name__ == "__main__":
    main()
