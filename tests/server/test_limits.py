"""Access rules and limits: API key, origin, session count, idle time, audio allowance, shutdown."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
import websockets

from mooer.audio import SAMPLE_RATE
from mooer.server.pcm import encode_pcm16

MANUAL = {
    "type": "transcription",
    "mooer": {"task": "asr"},
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
}


def _url(server, query: str = "intent=transcription") -> str:
    return f"ws://{server.host}:{server.port}/v1/realtime?{query}"


async def _until_closed(ws) -> list[dict]:
    """Every event until the server closes the connection (any close code)."""
    events = []
    try:
        while True:
            events.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
    except websockets.ConnectionClosed:
        return events


async def _first_and_close(url: str, **kwargs) -> tuple[dict, int | None]:
    """The first event and the close code of a connection the server ends."""
    async with websockets.connect(url, **kwargs) as ws:
        first = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return first, ws.close_code


def test_api_key(start_server, speech_file):
    server = start_server(api_key="s3cret")
    missing, code = asyncio.run(_first_and_close(_url(server)))
    assert missing["error"]["code"] == "missing_api_key" and code == 1008
    wrong, code = asyncio.run(_first_and_close(_url(server, "api_key=nope")))
    assert wrong["error"]["code"] == "invalid_api_key" and code == 1008

    async def accepted(**kwargs) -> str:
        async with websockets.connect(**kwargs) as ws:
            return json.loads(await ws.recv())["type"]

    assert asyncio.run(accepted(uri=_url(server, "api_key=s3cret"))) == "session.created"
    assert (
        asyncio.run(
            accepted(uri=_url(server), additional_headers={"Authorization": "Bearer s3cret"})
        )
        == "session.created"
    )
    assert (
        asyncio.run(
            accepted(
                uri=_url(server),  # a browser's way: the key in a subprotocol
                subprotocols=["realtime", "openai-insecure-api-key.s3cret"],
            )
        )
        == "session.created"
    )

    from openai import AsyncOpenAI

    async def sdk() -> str:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="s3cret")
        async with client.realtime.connect(model="mooer") as conn:
            return (await conn.recv()).type

    assert asyncio.run(sdk()) == "session.created"
    with open(speech_file, "rb") as f:
        http = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": f})
    assert http.status_code == 401 and http.json()["error"]["code"] == "missing_api_key"
    assert httpx.get(f"{server.url}/health").status_code == 200  # no key needed


def test_origin_check(start_server):
    server = start_server()
    evil, code = asyncio.run(_first_and_close(_url(server), origin="https://evil.example"))
    assert evil["error"]["code"] == "origin_not_allowed" and code == 1008

    async def same_origin() -> str:
        origin = f"http://{server.host}:{server.port}"
        async with websockets.connect(_url(server), origin=origin) as ws:
            return json.loads(await ws.recv())["type"]

    assert asyncio.run(same_origin()) == "session.created"


def test_session_limit_is_a_clear_refusal(start_server):
    server = start_server(max_sessions=2)

    async def run():
        held = [await websockets.connect(_url(server)) for _ in range(2)]
        for ws in held:
            assert json.loads(await ws.recv())["type"] == "session.created"
        refused = await _first_and_close(_url(server))
        await held[0].close()
        await asyncio.sleep(0.3)
        async with websockets.connect(_url(server)) as ws:  # room again
            again = json.loads(await ws.recv())["type"]
        await held[1].close()
        return refused, again

    (error, code), again = asyncio.run(run())
    assert error["error"]["code"] == "session_limit_reached" and code == 1013
    assert "2 live sessions" in error["error"]["message"]
    assert again == "session.created"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'mooer_sessions_refused_total{reason="limit"} 1' in metrics


def test_idle_sessions_are_closed(start_server):
    server = start_server(idle_timeout_s=0.5)

    async def run():
        async with websockets.connect(_url(server)) as ws:
            events = await _until_closed(ws)
            return events, ws.close_code

    events, code = asyncio.run(run())
    assert [e["type"] for e in events] == ["session.created", "error"]
    assert events[-1]["error"]["code"] == "idle_timeout" and code == 1001


def test_audio_allowance(start_server, speech):
    server = start_server(max_session_audio_s=1.0)

    async def run():
        async with websockets.connect(_url(server)) as ws:
            await ws.recv()
            await ws.send(encode_pcm16(speech[0][: 2 * SAMPLE_RATE]))
            events = await _until_closed(ws)
            return events, ws.close_code

    events, code = asyncio.run(run())
    assert [e["error"]["code"] for e in events if e["type"] == "error"] == ["session_audio_limit"]
    assert code == 1008


def test_shutdown_sends_pending_finals_first(start_server, speech, offline):
    server = start_server()
    wave = speech[0]

    async def run():
        async with websockets.connect(_url(server)) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "session": MANUAL}))
            await ws.recv()
            await ws.send(encode_pcm16(wave))  # never committed by the client
            await asyncio.sleep(0.2)
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            events = await _until_closed(ws)
            code = ws.close_code
        stopper.join()
        return events, code

    events, code = asyncio.run(run())
    final = [
        e for e in events if e["type"] == "conversation.item.input_audio_transcription.completed"
    ]
    assert [e["transcript"] for e in final] == [offline([wave])[0].text]
    assert code == 1001
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health")
