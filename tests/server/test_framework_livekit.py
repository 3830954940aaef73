"""LiveKit Agents' OpenAI ``RealtimeModel`` (livekit-plugins-openai 1.8.9) against a real server
over the bundled demo model.

Driven as an ``AgentSession`` drives it, without a LiveKit room: chat-context sync with system,
user and assistant messages, ``generate_reply()`` (the agent speaks first: it greets), two spoken
arithmetic turns after the greeting answered with audio (the second only answerable from the
first), the last reply truncated as heard; no error on the way.
The frameworks live in their own environment (``scripts/setup.sh --tests`` makes it;
``test_frameworks.py`` runs this file there); elsewhere this skips.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mooer.audio import SAMPLE_RATE
from mooer.server.pcm import encode_pcm16
from mooer.train.corpus import OPENING
from tests.server.test_framework_pipecat import PAUSE, SILENCE, TURNS
from tests.server.wire import say

pytest.importorskip(
    "livekit.plugins.openai",
    reason="livekit-plugins-openai is not installed here (scripts/setup.sh --tests puts it in .venv-frameworks)",
)


async def _reply(generation) -> tuple[str, str, bytes]:
    """A generation's message: its id, text and audio (PCM16 at 24 kHz)."""
    message = await anext(aiter(generation.message_stream))

    async def text() -> str:
        return "".join([str(t) async for t in message.text_stream])

    async def audio() -> bytes:
        return b"".join([bytes(f.data) async for f in message.audio_stream])

    said, pcm = await asyncio.wait_for(asyncio.gather(text(), audio()), 60)
    return message.message_id, said, pcm


def test_a_livekit_realtime_session_runs_its_standard_flows(demo_server):
    import aiohttp
    from livekit import rtc
    from livekit.agents import llm
    from livekit.plugins.openai.realtime import RealtimeModel

    async def run():
        async with aiohttp.ClientSession() as http:
            model = RealtimeModel(
                base_url=f"{demo_server.url}/v1", api_key="unused", model="mooer", http_session=http
            )
            session = model.session()
            errors, generations = [], asyncio.Queue()
            session.on("error", errors.append)
            session.on("generation_created", generations.put_nowait)
            try:
                await session.update_instructions("You are a helpful assistant.")
                ctx = llm.ChatContext()
                ctx.add_message(role="system", content="Answer briefly.", id="sys_1")
                ctx.add_message(role="user", content="what is two plus two", id="user_1")
                ctx.add_message(role="assistant", content="four", id="assistant_1")
                await session.update_chat_ctx(ctx)
                remote = [item.id for item in session.chat_ctx.items]

                first = await asyncio.wait_for(session.generate_reply(instructions="Greet."), 30)
                await generations.get()  # the same generation, announced
                opening = await _reply(first)

                spoken = []
                for question, _ in TURNS:
                    pcm = encode_pcm16(np.concatenate([PAUSE, say(question), SILENCE]))
                    for i in range(0, len(pcm), 3200):  # 100 ms frames, as a room delivers them
                        chunk = pcm[i : i + 3200]
                        session.push_audio(rtc.AudioFrame(chunk, SAMPLE_RATE, 1, len(chunk) // 2))
                    spoken.append(await _reply(await asyncio.wait_for(generations.get(), 60)))
                last_id, _, last_audio = spoken[-1]
                heard_ms = len(last_audio) // 2 * 1000 // 24000 // 2  # half of it was heard
                session.truncate(message_id=last_id, modalities=["audio"], audio_end_ms=heard_ms)
                await asyncio.sleep(0.5)
                history = [(item.role, item.text_content) for item in session.chat_ctx.items]
                (served,) = demo_server.hub.connections  # this session, on the server
                remembered = served.session.conversation.messages[-1]
            finally:
                await session.aclose()
                await model.aclose()
        return errors, remote, first, opening, spoken, history, remembered

    errors, remote, first, opening, spoken, history, remembered = asyncio.run(run())
    assert errors == []
    assert remote == ["sys_1", "user_1", "assistant_1"]  # the client's ids, in its order
    assert first.user_initiated  # generate_reply() resolved with its generation
    for _, text, audio in (opening, *spoken):
        assert text and len(audio) > 0
        assert np.abs(np.frombuffer(audio, "<i2")).max() > 0
    assert opening[1].split() == OPENING.split()  # the agent greets when it speaks first
    assert [text.split() for _, text, _ in spoken] == [[answer] for _, answer in TURNS]
    roles = [role for role, _ in history]
    assert roles[:4] == ["system", "user", "assistant", "assistant"]
    assert history[3][1].split() == OPENING.split()  # the greeting, remembered before the turns
    assert roles[4:] == ["user", "assistant"] * len(TURNS)  # the spoken turns and replies
    # The model remembers the last reply as far as it was heard: half of its one word is none
    # of it ("six" of "sixteen" would be another number).
    assert (remembered.id, remembered.text, remembered.interrupted) == (spoken[-1][0], "", True)
