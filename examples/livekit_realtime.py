"""A LiveKit Agents realtime model session whose speech-to-speech model is `mooer serve`.

    pip install 'livekit-agents==1.8.9' 'livekit-plugins-openai==1.8.9'
    mooer serve &                # the demo model on 127.0.0.1:8000
    python examples/livekit_realtime.py examples/audio/en_chat.wav --out agent.wav

LiveKit's `openai.realtime.RealtimeModel` speaks to mooer's `/v1/realtime` as to OpenAI's: only
`base_url` changes. This drives the model's session as an `AgentSession` does, without a LiveKit
room: the chat history is synced (`update_chat_ctx`), the agent speaks first
(`generate_reply`), then the recording is pushed as a room's audio track would push it (mooer's
VAD finds the turn) and the agent answers it. Replies are printed, their speech written to
`--out`. In an agent, `AgentSession(llm=RealtimeModel(base_url=...))` does all of this.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import numpy as np
import soundfile as sf
import soxr
from livekit import rtc
from livekit.agents import llm
from livekit.plugins.openai.realtime import RealtimeModel

RATE = 16000  # what is pushed (mooer resamples whatever it gets)


async def reply(generation: llm.GenerationCreatedEvent) -> tuple[str, bytes]:
    """A generation's text and speech (24 kHz PCM16)."""
    message = await anext(aiter(generation.message_stream))

    async def text() -> str:
        return "".join([str(t) async for t in message.text_stream])

    async def audio() -> bytes:
        return b"".join([bytes(f.data) async for f in message.audio_stream])

    said, speech = await asyncio.gather(text(), audio())
    return said, speech


async def main(path: str, server: str, out: str) -> None:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    speech = soxr.resample(samples.mean(axis=1), rate, RATE)
    speech = np.concatenate([speech, np.zeros(RATE, np.float32)])  # a pause ends the turn
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2").tobytes()

    async with aiohttp.ClientSession() as http:
        model = RealtimeModel(
            base_url=f"{server.rstrip('/')}/v1", api_key="unused", model="mooer", http_session=http
        )
        session = model.session()
        session.on("error", lambda e: print("error:", e.error))
        generations: asyncio.Queue = asyncio.Queue()
        session.on("generation_created", generations.put_nowait)
        try:
            history = llm.ChatContext()
            history.add_message(role="user", content="what colour is the sky")
            history.add_message(role="assistant", content="blue")
            await session.update_chat_ctx(history)

            opening = await session.generate_reply(instructions="Greet the user.")
            await generations.get()  # the same generation, as the session announces it
            speech_out = bytearray((await reply(opening))[1])

            step = RATE // 10 * 2  # 100 ms frames, as a room's track delivers them
            for i in range(0, len(pcm), step):
                chunk = pcm[i : i + step]
                session.push_audio(rtc.AudioFrame(chunk, RATE, 1, len(chunk) // 2))
                await asyncio.sleep(0.1)  # at the pace of speech
            speech_out += (await reply(await asyncio.wait_for(generations.get(), 60)))[1]
            await asyncio.sleep(0.5)
            for item in session.chat_ctx.items:
                print(f"{item.role:>9}: {item.text_content}")
        finally:
            await session.aclose()
            await model.aclose()
    sf.write(out, np.frombuffer(bytes(speech_out), "<i2"), 24000)
    print(f"the agent's speech: {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wav", help="what the user says (any rate, mono or stereo)")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--out", default="agent.wav", help="the agent's speech, 24 kHz")
    args = parser.parse_args()
    asyncio.run(main(args.wav, args.server, args.out))
