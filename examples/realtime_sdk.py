"""Live transcription with the openai SDK's realtime client against `mooer serve`.

    python examples/realtime_sdk.py speech.wav [--server http://127.0.0.1:8000] [--task asr+ast]

The file is sent as 24 kHz PCM16 (the API's rate) at the pace of speech; the server's VAD splits
it into utterances and each one's transcript (and translation) is printed when final.
"""

from __future__ import annotations

import argparse
import asyncio
import base64

import numpy as np
import soundfile as sf
import soxr
from openai import AsyncOpenAI


async def main(path: str, server: str, task: str, api_key: str) -> None:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    pcm = (np.clip(soxr.resample(samples.mean(axis=1), rate, 24000), -1, 1) * 32767).astype("<i2")
    client = AsyncOpenAI(base_url=f"{server}/v1", api_key=api_key)
    async with client.realtime.connect(model="mooer") as conn:
        await conn.session.update(session={"type": "transcription", "mooer": {"task": task}})

        async def send() -> None:
            step = 2400  # 100 ms
            for i in range(0, len(pcm), step):
                await conn.input_audio_buffer.append(
                    audio=base64.b64encode(pcm[i : i + step]).decode()
                )
                await asyncio.sleep(0.1)
            await conn.input_audio_buffer.commit()  # ends the utterance in progress, if any
            # The server answers in order: once this is answered, every utterance is committed.
            await conn.session.update(session={"type": "transcription"})

        sender = asyncio.create_task(send())
        pending, updates = set(), 0
        last = "conversation.item.input_audio_" + (
            "translation" if task == "asr+ast" else "transcription"
        )
        async for event in conn:
            if event.type == "session.updated":
                updates += 1
            elif event.type == "input_audio_buffer.committed":
                pending.add(event.item_id)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                print(event.transcript, flush=True)
            elif event.type == "conversation.item.input_audio_translation.completed":
                print("  ->", event.translation, flush=True)  # mooer's event, for asr+ast
            elif event.type == "error" and event.error.code != "input_audio_buffer_commit_empty":
                print("error:", event.error.message)
            if event.type == f"{last}.completed":
                pending.discard(event.item_id)
            if sender.done() and updates == 2 and not pending:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--task", default="asr", choices=["asr", "ast", "asr+ast"])
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    asyncio.run(main(args.audio, args.server, args.task, args.api_key))
