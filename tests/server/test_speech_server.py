"""Speech out of the server, driven by the openai SDK: spoken chat replies on /v1/realtime (with
barge-in), spoken translations there and on /v1/realtime/translations, session instructions, and
POST /v1/audio/speech.

The speech head speaks on a server over the fabricated omni model taught to answer the first
recording aloud (as the server hears it); the shared server's untaught model says nothing by
itself, so the TTS backend speaks for it.
"""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from mooer.asr.segmenter import cut
from mooer.audio import SAMPLE_RATE
from mooer.llm.conversation import Conversation
from mooer.llm.decoding import STREAMING
from tests.server.wire import as_received, at_24k, send_realtime, send_translation
from tests.taught import CHAT_REPLY, teach_to_speak

SPOKEN = {"type": "realtime", "output_modalities": ["audio"], "mooer": {"task": "chat"}}


SPEAKING = replace(STREAMING, max_new_tokens=64)  # the head's audio tokens, greedy


@pytest.fixture(scope="module")
def taught(fabricated, speech, session_defaults):
    """The omni model taught to answer the first recording, as the server cuts it from 24 kHz
    PCM16, aloud: in chat with CHAT_REPLY, to translate with TRANSLATION."""
    from mooer.model import load_model

    model = load_model(fabricated("omni"), device="cpu")
    heard = as_received(at_24k(speech[0]))
    first = cut(heard, session_defaults.vad)[0]
    embeds, lengths = model.embed([first.audio])
    teach_to_speak(model, embeds[:, : int(lengths[0])].detach())  # (1, Ta, H)
    return model


@pytest.fixture(scope="module")
def serve_taught(taught, session_defaults):
    """``serve_taught(**SessionConfig changes) -> RunningServer`` over the taught model."""
    from mooer.agent.engine import Engine
    from mooer.server.app import start
    from mooer.server.config import ServerConfig
    from mooer.server.hub import Hub

    running = []

    def make(**changes):
        defaults = replace(session_defaults, **{"speech_options": SPEAKING, **changes})
        hub = Hub(taught, Engine(taught, threads=1), ServerConfig(port=0), defaults)
        running.append(start(hub))
        return running[-1]

    yield make
    for server in running:
        server.stop()


@pytest.fixture(scope="module")
def head_server(serve_taught):
    return serve_taught()


def _pcm(events, response_id: str) -> np.ndarray:
    data = b"".join(
        base64.b64decode(e.delta)
        for e in events
        if e.type == "response.output_audio.delta" and e.response_id == response_id
    )
    return np.frombuffer(data, dtype="<i2")


def test_a_spoken_reply_streams_audio_deltas_then_done(head_server, speech):
    from openai import AsyncOpenAI

    async def run() -> list:
        client = AsyncOpenAI(base_url=f"{head_server.url}/v1", api_key="unused")
        events = []
        async with client.realtime.connect(model="mooer") as conn:
            await conn.session.update(session=SPOKEN)  # type: ignore[arg-type]
            await send_realtime(conn, at_24k(speech[0]))
            async for event in conn:
                events.append(event)
                if event.type == "response.done":
                    break
            events.append(await asyncio.wait_for(conn.recv(), 30))  # the buffer stops
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.output_modalities == ["audio"]
    assert updated.session.audio.output.format.rate == 24000
    assert "response.output_text.delta" not in kinds
    order = [
        kinds.index("response.created"),
        kinds.index("output_audio_buffer.started"),
        kinds.index("response.output_audio.delta"),
        len(kinds) - 1 - kinds[::-1].index("response.output_audio.delta"),
        kinds.index("response.output_audio.done"),
        kinds.index("response.output_audio_transcript.done"),
        kinds.index("response.done"),
        kinds.index("output_audio_buffer.stopped"),
    ]
    assert order == sorted(order) and len(set(order)) == len(order)

    done = next(e for e in events if e.type == "response.done").response
    assert done.status == "completed" and done.output_modalities == ["audio"]
    transcript = next(e for e in events if e.type == "response.output_audio_transcript.done")
    deltas = [e.delta for e in events if e.type == "response.output_audio_transcript.delta"]
    assert "".join(deltas) == transcript.transcript == CHAT_REPLY
    assert done.output[0].content[0].type == "output_audio"
    assert done.output[0].content[0].transcript == transcript.transcript
    audio = _pcm(events, done.id)
    assert audio.size == round((1 + 24 - 5) * 1024 * 24000 / 22050)  # the head's latents
    assert np.abs(audio).max() > 0
    assert len([e for e in events if e.type == "response.output_audio.delta"]) >= 3  # streamed
    pieces = [e for e in events if e.type == "response.output_audio.delta"]
    assert max(len(base64.b64decode(e.delta)) for e in pieces) <= 24000  # 500 ms at most


@pytest.fixture(scope="module")
def endless(serve_taught):
    """Spoken replies that never end by themselves: barge-in is what stops them."""
    return serve_taught(speech_options=replace(STREAMING, max_new_tokens=5000, eos_bias=-1e9))


def test_barge_in_clears_the_audio_and_stops_the_deltas(endless, speech):
    from openai import AsyncOpenAI

    async def run() -> list:
        client = AsyncOpenAI(base_url=f"{endless.url}/v1", api_key="unused")
        events = []
        async with client.realtime.connect(model="mooer") as conn:
            await conn.session.update(session=SPOKEN)  # type: ignore[arg-type]
            await send_realtime(conn, at_24k(speech[0]))
            barged = False
            async for event in conn:
                events.append(event)
                if event.type == "response.output_audio.delta" and not barged:
                    barged = True  # the reply is speaking: the user talks over it
                    await send_realtime(conn, at_24k(speech[1][:SAMPLE_RATE]))
                if event.type == "response.done":
                    break
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    done = next(e for e in events if e.type == "response.done").response
    assert done.status == "cancelled" and done.status_details.reason == "turn_detected"
    assert done.output[0].content[0].transcript == CHAT_REPLY
    cleared = kinds.index("output_audio_buffer.cleared")
    assert events[cleared].response_id == done.id
    started = kinds.index("input_audio_buffer.speech_started", kinds.index("response.created"))
    assert started < cleared
    # The reply falls silent within one audio chunk of the user's speech being detected.
    assert kinds[started:cleared].count("response.output_audio.delta") <= 1
    after = kinds[cleared:]
    assert "response.output_audio.delta" not in after
    assert "response.output_audio.done" in after  # the audio part still ends
    assert "output_audio_buffer.stopped" not in kinds


@pytest.mark.parametrize("by", ["head", "backend"])
def test_the_interpretation_is_spoken(head_server, server, speech, by):
    from openai import AsyncOpenAI

    url = (head_server if by == "head" else server).url

    async def run() -> list:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
        events = []
        async with client.realtime.translations.connect(model="mooer-translate") as conn:
            await send_translation(conn, at_24k(speech[0]))
            await conn.session.close()
            async for event in conn:
                events.append(event)
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    audio = [e for e in events if e.type == "session.output_audio.delta"]
    assert audio, kinds
    assert {(e.sample_rate, e.channels, e.format) for e in audio} == {(24000, 1, "pcm16")}
    assert kinds.index("session.output_transcript.delta") < kinds.index(
        "session.output_audio.delta"
    )
    pcm = np.frombuffer(b"".join(base64.b64decode(e.delta) for e in audio), dtype="<i2")
    if by == "head":
        assert pcm.size == round((1 + 20 - 5) * 1024 * 24000 / 22050)
    else:
        assert pcm.size > 24000 // 4 and np.abs(pcm).max() > 1000  # espeak-ng: speech
    assert kinds[-1] == "session.closed"


def test_an_ast_session_on_realtime_speaks_its_translations(head_server, speech):
    from openai import AsyncOpenAI

    async def run() -> list:
        client = AsyncOpenAI(base_url=f"{head_server.url}/v1", api_key="unused")
        events = []
        async with client.realtime.connect(
            model="mooer", extra_query={"intent": "transcription"}
        ) as conn:
            session = {
                "type": "transcription",
                "output_modalities": ["audio"],
                "mooer": {"task": "ast"},
            }
            await conn.session.update(session=session)  # type: ignore[arg-type]
            await send_realtime(conn, at_24k(speech[0]))
            await conn.send({"type": "session.close"})  # type: ignore[arg-type]
            async for event in conn:
                events.append(event)
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.mooer["output_modalities"] == ["audio"]
    spoken = [
        e for e in events if e.type == "conversation.item.input_audio_translation.audio.delta"
    ]
    final = next(
        e for e in events if e.type == "conversation.item.input_audio_transcription.completed"
    )
    assert spoken and {(e.item_id, e.sample_rate) for e in spoken} == {(final.item_id, 24000)}
    assert kinds.index(final.type) < kinds.index(spoken[0].type)
    pcm = np.frombuffer(b"".join(base64.b64decode(e.delta) for e in spoken), dtype="<i2")
    assert pcm.size == round((1 + 20 - 5) * 1024 * 24000 / 22050)
    assert kinds[-1] == "session.closed"


def test_instructions_reach_the_llm_and_keep_the_conversation(server, model, session_defaults):
    from openai import AsyncOpenAI

    async def ask(conn, text: str) -> str:
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        await conn.conversation.item.create(item=item)  # type: ignore[arg-type]
        await conn.response.create()
        async for event in conn:
            if event.type == "response.done":
                return event.response.output[0].content[0].text

    async def run() -> list[str]:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
        async with client.realtime.connect(model="mooer") as conn:
            manual = {
                "type": "realtime",
                "output_modalities": ["text"],
                "audio": {"input": {"turn_detection": None}},
            }
            await conn.session.update(session=manual)  # type: ignore[arg-type]
            first = await ask(conn, "hello")
            pirate = {"instructions": "You are a pirate."}
            await conn.session.update(session=pirate)  # type: ignore[arg-type]
            second = await ask(conn, "again")
        return [first, second]

    first, second = asyncio.run(run())
    offline = Conversation(model)
    options = session_defaults.chat_options
    assert "".join(t for _, t in offline.reply_text("hello", options)) == first
    offline.instructions = "You are a pirate."  # the first turn is kept
    assert "".join(t for _, t in offline.reply_text("again", options)) == second


def test_audio_speech_returns_a_wav_of_plausible_length(server):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    text = "The quick brown fox jumps over the lazy dog."
    wav = client.audio.speech.create(
        model="mooer-tts", input=text, voice="alloy", response_format="wav"
    ).content
    audio, rate = sf.read(io.BytesIO(wav), dtype="int16")
    assert rate == 24000 and audio.ndim == 1
    assert 1.5 < audio.size / rate < 6  # nine words at espeak-ng's 175 words a minute

    pcm = client.audio.speech.create(
        model="mooer-tts", input=text, voice="alloy", response_format="pcm", speed=2.0
    ).content
    assert 0.4 < len(pcm) / 2 / rate < audio.size / rate * 0.7  # twice as fast

    zh = client.audio.speech.create(
        model="mooer-tts", input="今天天气不错", voice="f2", response_format="flac"
    ).content
    assert sf.info(io.BytesIO(zh)).format == "FLAC"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": "aac"}, "response_format"),
        ({"voice": "no-such-voice"}, "voice"),
        ({"input": ""}, "input"),
        ({"speed": 9}, "speed"),
    ],
)
def test_audio_speech_rejects_bad_requests_with_400(server, fields, param):
    import httpx

    body = {"model": "mooer-tts", "input": "hello", "voice": "alloy", **fields}
    response = httpx.post(f"{server.url}/v1/audio/speech", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
