"""A minimal client of FunASR's websocket protocol (what FunASR's own clients send) for mooer.

    python examples/funasr_client.py speech.wav [--url ws://127.0.0.1:10095] [--mode 2pass]

Config frame, 600 ms chunks of 16 kHz PCM16 at the pace of speech, then ``is_speaking: false``;
prints online text as it grows and each utterance's final, until the ``is_final`` reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np
import soundfile as sf
import soxr
import websockets


async def main(path: str, url: str, mode: str) -> None:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    pcm = (np.clip(soxr.resample(samples.mean(axis=1), rate, 16000), -1, 1) * 32767).astype("<i2")
    data = pcm.tobytes()
    async with websockets.connect(url, subprotocols=["binary"]) as ws:
        await ws.send(
            json.dumps(
                {
                    "mode": mode,
                    "chunk_size": [5, 10, 5],
                    "chunk_interval": 10,
                    "wav_name": path,
                    "is_speaking": True,
                    "audio_fs": 16000,
                    "wav_format": "pcm",
                    "hotwords": "",
                    "itn": True,
                }
            )
        )

        async def send() -> None:
            stride = 19200  # 600 ms
            for i in range(0, len(data), stride):
                await ws.send(data[i : i + stride])
                await asyncio.sleep(0.6)
            await ws.send(json.dumps({"is_speaking": False}))

        sender = asyncio.create_task(send())
        online = ""
        async for message in ws:
            reply = json.loads(message)
            if reply.get("error"):
                print("error:", reply["error"])
            elif reply["mode"] in ("online", "2pass-online"):
                online += reply["text"]
                print("...", online, flush=True)
            else:
                online = ""
                print(reply["text"], flush=True)
            if reply.get("is_final"):
                break
        await sender


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/funasr")
    parser.add_argument("--mode", default="2pass", choices=["online", "offline", "2pass"])
    args = parser.parse_args()
    asyncio.run(main(args.audio, args.url, args.mode))
