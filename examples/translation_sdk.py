"""Live interpretation with the openai SDK's Realtime Translation client against `mooer serve`.

    python examples/translation_sdk.py speech.wav [--server http://127.0.0.1:8000]

Streams 24 kHz PCM16 in 200 ms chunks and prints the English (and the source transcript) as it
comes; ``session.close`` makes the server finish the last utterance before ``session.closed``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64

import numpy as np
import soundfile as sf
import soxr
from openai import AsyncOpenAI


async def main(path: str, server: str, api_key: str) -> None:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    pcm = (np.clip(soxr.resample(samples.mean(axis=1), rate, 24000), -1, 1) * 32767).astype("<i2")
    client = AsyncOpenAI(base_url=f"{server}/v1", api_key=api_key)
    async with client.realtime.translations.connect(model="mooer") as conn:
        await conn.session.update(
            session={"audio": {"input": {"transcription": {"model": "mooer"}}}}
        )
        for i in range(0, len(pcm), 4800):  # 200 ms
            await conn.session.input_audio_buffer.append(
                audio=base64.b64encode(pcm[i : i + 4800]).decode()
            )
            await asyncio.sleep(0.2)
        await conn.session.close()
        source, target = "", ""
        async for event in conn:  # ends after session.closed
            if event.type == "session.input_transcript.delta":
                source += event.delta
            elif event.type == "session.output_transcript.delta":
                target += event.delta
                print(event.delta, end="", flush=True)
        print(f"\nheard: {source}\nEnglish: {target}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    asyncio.run(main(args.audio, args.server, args.api_key))
