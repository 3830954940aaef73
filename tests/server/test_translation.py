"""/v1/realtime/translations driven by the openai SDK and by plain websocket frames."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace

import numpy as np
import pytest
import websockets

from mooer.audio import SAMPLE_RATE, resample
from mooer.server.captions import join_texts
from mooer.server.http_api import speech_segments
from mooer.server.pcm import WireDecoder, WireFormat, encode_pcm16

FRAME = 4800  # 200 ms at 24 kHz, as the API suggests


@pytest.fixture(scope="module")
def finals_only(start_server, session_defaults):
    """No partials: the streams then hold exactly the finals, which makes them predictable."""
    return start_server(defaults=replace(session_defaults, partial_interval_ms=0))


def _as_received(pcm: bytes) -> np.ndarray:
    """The 16 kHz samples the server makes of 24 kHz PCM16 (what its VAD and model see)."""
    decoder = WireDecoder(WireFormat("pcm16", 24000))
    return np.concatenate([decoder.decode(pcm), decoder.flush()])


def test_sdk_translation_session_streams_both_transcripts(
    finals_only, offline, speech, session_defaults
):
    from openai import AsyncOpenAI

    pcm = encode_pcm16(resample(np.concatenate(speech), SAMPLE_RATE, 24000))

    async def run():
        client = AsyncOpenAI(base_url=f"{finals_only.url}/v1", api_key="unused")
        events = []
        async with client.realtime.translations.connect(model="mooer-translate") as conn:
            await conn.session.update(
                session={
                    "audio": {
                        "input": {"transcription": {"model": "mooer"}},
                        "output": {"language": "en"},
                    }
                }
            )
            for i in range(0, len(pcm), 2 * FRAME):
                chunk = base64.b64encode(pcm[i : i + 2 * FRAME]).decode()
                await conn.session.input_audio_buffer.append(audio=chunk)
            await conn.session.close()
            async for event in conn:
                events.append(event)
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"] and kinds[-1] == "session.closed"
    assert events[0].session.type == "translation" and events[0].session.model == "mooer-translate"
    assert events[1].session.audio.input.transcription.model == "mooer"
    heard = _as_received(pcm)
    segments = [heard[a:b] for a, b in speech_segments(heard, session_defaults.vad)]
    assert len(segments) == 2
    source = "".join(e.delta for e in events if e.type == "session.input_transcript.delta")
    target = "".join(e.delta for e in events if e.type == "session.output_transcript.delta")
    assert source == join_texts([r.text for r in offline(segments)])
    assert target == join_texts([r.translation for r in offline(segments, "ast")])
    elapsed = [e.elapsed_ms for e in events if e.type.endswith("transcript.delta")]
    assert all(ms % 200 == 0 for ms in elapsed) and elapsed == sorted(elapsed)


def test_translation_errors_and_close(server, speech):
    url = f"ws://{server.host}:{server.port}/v1/realtime/translations?model=m"

    async def run():
        async with websockets.connect(url) as ws:
            created = json.loads(await ws.recv())
            replies = []
            for message in [
                {"type": "session.update", "session": {"audio": {"output": {"language": "fr"}}}},
                {"type": "session.update", "session": {"model": "other"}},
                {"type": "input_audio_buffer.append", "audio": ""},
                {"type": "session.input_audio_buffer.append"},
            ]:
                await ws.send(json.dumps(message))
                replies.append(json.loads(await ws.recv()))
            await ws.send(encode_pcm16(resample(speech[0], SAMPLE_RATE, 24000)))  # binary PCM
            await ws.send(json.dumps({"type": "session.close"}))
            rest = [json.loads(m) async for m in ws]  # until the server closes
            return created, replies, rest, ws.close_code

    created, replies, rest, code = asyncio.run(run())
    assert created["session"]["audio"]["output"]["language"] == "en"
    assert [r["type"] for r in replies] == ["error"] * 4
    codes = [r["error"]["code"] for r in replies]
    assert codes == [
        "unsupported_language",
        "invalid_value",
        "unknown_event",
        "missing_required_parameter",
    ]
    assert "session.input_audio_buffer.append" in replies[2]["error"]["message"]
    assert rest[-1]["type"] == "session.closed"
    assert any(e["type"] == "session.output_transcript.delta" for e in rest)
    assert not any(e["type"] == "session.input_transcript.delta" for e in rest)  # not asked for
    assert code == 1000
