"""Hotwords through the real server on the bundled demo model: the Realtime transcription
``prompt`` with a recording of a held-out voice whose 学校 the model hears as 厕所 unbiased
(the decoding itself is tested in tests/llm/test_biasing.py), and bad lists in the HTTP
``prompt`` and FunASR's ``hotwords`` refused by field."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import websockets

from mooer.agent.session import SessionConfig
from mooer.audio import load_audio
from mooer.server.pcm import encode_pcm16
from tests.server.test_http_api import _post

RECORDING = Path(__file__).resolve().parents[1] / "assets" / "hotword_xuexiao.wav"
SAID = "学校在哪里"
FINAL = "conversation.item.input_audio_transcription.completed"


@pytest.fixture(scope="module")
def demo_server():
    from mooer.agent.engine import Engine
    from mooer.model import load_model
    from mooer.server.app import start
    from mooer.server.config import ServerConfig
    from mooer.server.hub import Hub

    demo = load_model()
    server = start(Hub(demo, Engine(demo, threads=1), ServerConfig(port=0), SessionConfig()))
    yield server
    server.stop()


async def _realtime(server, prompt: str) -> str:
    """The recording committed whole to an OpenAI Realtime transcription session (no turn
    detection) whose transcription ``prompt`` is given: its final transcript."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
    pcm = encode_pcm16(load_audio(RECORDING))
    async with client.realtime.connect(
        model="mooer", extra_query={"intent": "transcription"}
    ) as conn:
        audio_input = {
            "format": {"type": "audio/pcm", "rate": 16000},
            "turn_detection": None,
            "transcription": {"model": "mooer", "prompt": prompt},
        }
        session = {"type": "transcription", "audio": {"input": audio_input}}
        await conn.session.update(session=session)  # type: ignore[arg-type]
        for at in range(0, len(pcm), 6400):
            await conn.input_audio_buffer.append(
                audio=base64.b64encode(pcm[at : at + 6400]).decode()
            )
        await conn.input_audio_buffer.commit()
        async for event in conn:
            if event.type == "error":
                raise AssertionError(event.error.message)
            if event.type == FINAL:
                return event.transcript
    raise AssertionError("no transcript")


def test_the_realtime_prompt_brings_a_misheard_word_back(demo_server):
    assert asyncio.run(_realtime(demo_server, "")) != SAID
    assert asyncio.run(_realtime(demo_server, "学校, 银行")) == SAID


def test_too_many_prompt_words_are_refused_by_field(demo_server):
    reply = _post(
        demo_server, "transcriptions", RECORDING, prompt=" ".join(f"w{i}" for i in range(101))
    )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "prompt" and "101 given, at most 100" in error["message"]


async def _funasr(server, hotwords: str) -> list[dict]:
    """FunASR's client in offline mode with ``hotwords``: the replies up to ``is_final``."""
    url = f"ws://{server.host}:{server.port}/funasr"
    async with websockets.connect(url, subprotocols=["binary"]) as ws:
        config = {"mode": "offline", "wav_name": "x", "is_speaking": True, "hotwords": hotwords}
        await ws.send(json.dumps({**config, "audio_fs": 16000, "wav_format": "pcm"}))
        await ws.send(encode_pcm16(load_audio(RECORDING)))
        await ws.send(json.dumps({"is_speaking": False}))
        replies = []
        while not replies or not (replies[-1].get("is_final") or "error" in replies[-1]):
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return replies


def test_a_funasr_hotword_weight_that_is_no_number_is_refused_by_name(demo_server):
    (reply,) = asyncio.run(_funasr(demo_server, json.dumps({"学校": "high"})))
    assert "hotwords" in json.dumps(reply, ensure_ascii=False)
    assert "weight of '学校'" in json.dumps(reply, ensure_ascii=False)
