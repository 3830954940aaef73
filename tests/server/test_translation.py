"""/v1/realtime/translations driven by the openai SDK and by plain websocket frames."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
import websockets

from mooer.asr.segmenter import cut
from mooer.text import join_texts
from tests.server.wire import as_received, at_24k, send_translation


@pytest.fixture(scope="module")
def finals_only(start_server, session_defaults):
    """No partials: the streams then hold exactly the finals, which makes them predictable."""
    return start_server(defaults=replace(session_defaults, partial_interval_ms=0))


def test_sdk_translation_session_streams_both_transcripts(
    finals_only, offline, speech, session_defaults
):
    from openai import AsyncOpenAI

    pcm = at_24k(np.concatenate(speech))

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
            await send_translation(conn, pcm)
            await conn.session.close()
            async for event in conn:
                events.append(event)
        return events

    events = asyncio.run(run())
    kinds = [e.type for e in events]
    assert kinds[:2] == ["session.created", "session.updated"] and kinds[-1] == "session.closed"
    assert events[0].session.type == "translation" and events[0].session.model == "mooer-translate"
    assert events[1].session.audio.input.transcription.model == "mooer"
    heard = as_received(pcm)
    # Each final is an early one, decoded in the first 32 ms window of the pause that ended
    # its sentence: the segment with the rest of that pause as silence.
    ended = cut(heard, session_defaults.vad)
    assert len(ended) == 2 and all(u.pause is not None for u in ended)
    segments = [u.audio.copy() for u in ended]
    for u, audio in zip(ended, segments):
        audio[u.pause - u.start + 512 :] = 0.0
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
            await ws.send(at_24k(speech[0]))  # binary PCM
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


def test_a_session_closed_mid_sentence_gets_its_last_words_before_closed(
    finals_only, offline, speech, aishell_clips
):
    """The stream stops halfway through the second recording, with no silence to end the
    turn: ``session.close`` still translates that half and sends it before ``session.closed``."""
    from openai import AsyncOpenAI

    half = aishell_clips[1][: aishell_clips[1].size // 2]
    pcm = at_24k(np.concatenate([speech[0], half]))

    async def run():
        client = AsyncOpenAI(base_url=f"{finals_only.url}/v1", api_key="unused")
        async with client.realtime.translations.connect(model="mooer") as conn:
            await send_translation(conn, pcm)
            await conn.session.close()
            return [event async for event in conn]

    events = asyncio.run(run())
    assert events[-1].type == "session.closed"
    heard = as_received(pcm)
    segments = cut(heard, finals_only.hub.session_defaults.vad)
    assert len(segments) == 2 and segments[1].end == heard.size  # cut off by the close
    expected = [r.translation for r in offline([u.audio for u in segments], "ast")]
    assert all(expected)
    target = "".join(e.delta for e in events if e.type == "session.output_transcript.delta")
    assert target == join_texts(expected)
