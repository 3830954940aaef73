"""A minimal client of FunASR's websocket protocol (what FunASR's own clients send) for mooer.

    python examples/funasr_client.py speech.wav [--url ws://127.0.0.1:10095] [--mode 2pass]
        [--api-key KEY]

Config frame, 600 ms chunks of 16 kHz PCM16 at the pace of speech, then ``is_speaking: false``;
prints online text as it grows and each utterance's final, until the ``is_final`` reply. A
server started with ``--api-key`` takes the key as ``api_key`` in the config frame (mooer's
addition; default ``$MOOER_API_KEY``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys

import numpy as np
import soundfile as sf
import soxr
import websockets


async def main(path: str, url: str, mode: str, api_key: str | None) -> int:
    """Exit status: 1 if the server answered with an error."""
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
                    **({"api_key": api_key} if api_key else {}),
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
        online, status = "", 0
        async for message in ws:
            reply = json.loads(message)
            if reply.get("error"):
                print("error:", reply["error"])
                status = 1
            elif reply["mode"] in ("online", "2pass-online"):
                online += reply["text"]
                print("...", online, flush=True)
            else:
                online = ""
                print(reply["text"], flush=True)
            if reply.get("is_final"):
                break
        sender.cancel()  # done by now, unless the server refused the connection
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await sender
    return status


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/funasr")
    parser.add_argument("--mode", default="2pass", choices=["online", "offline", "2pass"])
    parser.add_argument("--api-key", default=os.environ.get("MOOER_API_KEY"))
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.audio, args.url, args.mode, args.api_key)))
