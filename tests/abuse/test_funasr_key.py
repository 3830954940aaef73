"""FunASR's clients cannot send headers: on a server with a key they send it as ``api_key`` in
their first JSON message, or the server opens its FunASR port with ``--funasr-open``. A client
without the key gets a reply that says so, marked final, and a policy close; never a silent drop."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import websockets

from mooer.errors import ConfigError
from mooer.server.config import ServerConfig
from mooer.server.pcm import encode_pcm16
from mooer.transcribe import SEGMENTER
from tests.abuse.conftest import KEY
from tests.ports import free_port
from tests.server.test_funasr_ws import CONFIG, _expected, _send_file


async def _refusal(url: str, **config) -> tuple[dict, int | None]:
    """What a FunASR client's config frame (+ ``config``) gets back: its reply and the close."""
    async with websockets.connect(url, subprotocols=["binary"]) as ws:
        await ws.send(json.dumps({**CONFIG, **config}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        return reply, ws.close_code


def test_a_key_in_the_first_message_or_a_clear_refusal(demo_server, demo_expected):
    url = f"ws://127.0.0.1:{demo_server.funasr_port}"
    for config, code in (({}, "missing_api_key"), ({"api_key": "nope"}, "invalid_api_key")):
        reply, close = asyncio.run(_refusal(url, **config))
        assert (reply["code"], reply["is_final"], reply["is_end"], close) == (
            code,
            True,
            True,
            1008,
        )
        assert reply["wav_name"] == CONFIG["wav_name"] and reply["text"] == ""
    assert '"api_key" in the first JSON message' in asyncio.run(_refusal(url))[0]["error"]

    async def with_key() -> list[dict]:
        from mooer.audio import load_audio
        from tests.abuse.conftest import NORMAL_WAV, silence

        pcm = encode_pcm16(np.concatenate([load_audio(NORMAL_WAV), silence(0.5)]))
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            return await _send_file(ws, pcm, mode="offline", api_key=KEY)

    replies = asyncio.run(with_key())
    assert "".join(r["text"] for r in replies) == demo_expected and "code" not in replies[-1]


def test_funasr_open_opens_only_the_funasr_port(start_server, speech, offline):
    server = start_server(funasr_port=free_port(), api_key=KEY, funasr_open=True)
    wave = speech[1]

    async def stock_client() -> list[dict]:  # no key anywhere
        url = f"ws://{server.host}:{server.funasr_port}"
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            return await _send_file(ws, encode_pcm16(wave), mode="offline")

    replies = asyncio.run(stock_client())
    assert [r["text"] for r in replies if r["text"]] == _expected(wave, SEGMENTER, offline)
    # The main port's /funasr and the HTTP API (on either port) still want the key.
    reply, close = asyncio.run(_refusal(f"ws://{server.host}:{server.port}/funasr"))
    assert (reply["code"], close) == ("missing_api_key", 1008)
    for port in (server.port, server.funasr_port):
        assert httpx.get(f"http://{server.host}:{port}/v1/models").status_code == 401


def test_funasr_open_needs_a_funasr_port():
    with pytest.raises(ConfigError, match="funasr_open: needs funasr_port"):
        ServerConfig(api_key=KEY, funasr_open=True)
