"""The FunASR websocket protocol, spoken the way FunASR's own clients speak it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
import websockets

from mooer.asr.segmenter import cut
from mooer.audio import SAMPLE_RATE
from mooer.server.connection import ProtocolError
from mooer.server.funasr_ws import FunasrSettings, apply_frame
from mooer.server.pcm import encode_pcm16
from mooer.text import join_texts
from mooer.transcribe import SEGMENTER, transcribe
from tests.ports import free_port

CONFIG = {
    "chunk_size": [5, 10, 5],
    "chunk_interval": 10,
    "wav_name": "demo",
    "is_speaking": True,
    "hotwords": "",
    "itn": True,
    "audio_fs": 16000,
    "wav_format": "pcm",
}
STRIDE = 2 * 600 * SAMPLE_RATE // 1000  # 600 ms of PCM16, FunASR's client chunk for [5, 10, 5]


@pytest.fixture(scope="module")
def funasr_server(start_server):
    return start_server(funasr_port=free_port())


@pytest.fixture(scope="module")
def finals_only(start_server, session_defaults):
    return start_server(defaults=replace(session_defaults, partial_interval_ms=0))


async def _send_file(ws, pcm: bytes, pace_s: float = 0.0, **config) -> list[dict]:
    """FunASR's client: config frame, PCM chunks, end marker; replies up to ``is_final``."""
    await ws.send(json.dumps({**CONFIG, **config}))
    for i in range(0, len(pcm), STRIDE):
        await ws.send(pcm[i : i + STRIDE])
        await asyncio.sleep(pace_s)
    await ws.send(json.dumps({"is_speaking": False, "is_end": True}))
    replies = []
    while not replies or not replies[-1].get("is_final"):
        replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
    return replies


def _expected(samples, vad, offline) -> list[str]:
    """Each utterance's text, the utterances cut with ``vad``: a live session's turn detection
    (online, 2pass) or ``SEGMENTER`` (offline mode, as ``mooer transcribe`` cuts files)."""
    return [r.text for r in offline([u.audio for u in cut(samples, vad)])]


def test_2pass_gives_partials_then_each_final(server, speech, session_defaults, offline):
    wave = speech[0]
    url = f"ws://{server.host}:{server.port}/funasr"

    async def run():
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            assert ws.subprotocol == "binary"
            return await _send_file(ws, encode_pcm16(wave), mode="2pass", pace_s=0.15)

    replies = asyncio.run(run())
    assert all(r["wav_name"] == "demo" for r in replies)
    assert replies[-1]["is_final"] and replies[-1]["is_end"]
    assert not any(r["is_final"] for r in replies[:-1])
    modes = [r["mode"] for r in replies]
    assert modes[0] == "2pass-online" and set(modes) == {"2pass-online", "2pass-offline"}
    # the is_final reply is empty when every final went out before is_speaking=false
    finals = [r["text"] for r in replies if r["mode"] == "2pass-offline" and r["text"]]
    assert finals == _expected(wave, session_defaults.vad, offline)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_offline_and_online_results_are_the_finals(
    finals_only, speech, session_defaults, offline, mode
):
    wave = np.concatenate(speech)
    url = f"ws://{finals_only.host}:{finals_only.port}/funasr"

    # Online mode re-decodes every chunk_size[1] x 60 ms; a 60 s stride leaves only the finals,
    # so what is appended does not depend on how fast the worker ran the partials.
    no_partials = [5, 1000, 5]

    async def run():
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            return await _send_file(ws, encode_pcm16(wave), mode=mode, chunk_size=no_partials)

    replies = asyncio.run(run())
    finals = _expected(wave, SEGMENTER if mode == "offline" else session_defaults.vad, offline)
    assert len(finals) >= 2 and {r["mode"] for r in replies} == {mode}
    if mode == "online":  # appended by the client as they come
        assert "".join(r["text"] for r in replies) == join_texts(finals)
    else:
        assert [r["text"] for r in replies if r["text"]] == finals


def test_own_port_whole_file_and_two_files_on_one_connection(
    funasr_server, model, speech, speech_file, session_defaults
):
    url = f"ws://{funasr_server.host}:{funasr_server.funasr_port}"  # FunASR clients use "/"
    encoded = speech_file.read_bytes()

    async def run():
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            first = await _send_file(ws, encoded, mode="offline", wav_format="wav", wav_name="f1")
            second = await _send_file(ws, b"", mode="offline", wav_name="silent")
            return first, second

    first, second = asyncio.run(run())
    # What ``mooer transcribe`` gives for the same file, utterance by utterance.
    (whole,) = transcribe(model, [speech_file], options=session_defaults.final_options)
    assert [r["text"] for r in first] == whole.segment_texts
    assert first[-1]["wav_name"] == "f1"
    assert second == [
        {"mode": "offline", "wav_name": "silent", "text": "", "is_final": True, "is_end": True}
    ]


def test_bad_frames_get_error_replies(server, speech):
    url = f"ws://{server.host}:{server.port}/funasr"

    async def run():
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            replies = []
            for frame in [
                '{"mode": "3pass"}',
                '{"chunk_size": "5,x,5"}',
                '{"audio_fs": 5}',
                "nope",
            ]:
                await ws.send(frame)
                replies.append(json.loads(await ws.recv()))
            final = await _send_file(ws, encode_pcm16(speech[1]), mode="offline")
            return replies, final

    replies, final = asyncio.run(run())
    assert [r["code"] for r in replies] == ["invalid_value"] * 3 + ["invalid_json"]
    assert "3pass" in replies[0]["error"] and "chunk_size" in replies[1]["error"]
    assert all(not r["is_final"] for r in replies)
    assert final[-1]["is_final"] and final[-1]["text"]


def test_frame_settings():
    s = apply_frame(FunasrSettings(), {"mode": "online", "chunk_size": "5,8,5", "audio_fs": 8000})
    assert (s.mode, s.chunk_size, s.audio_fs) == ("online", (5, 8, 5), 8000)
    assert s.engine_changes() == {"mode": "asr", "partial_interval_ms": 480}
    assert replace(s, mode="offline").engine_changes()["partial_interval_ms"] == 0
    with pytest.raises(ProtocolError, match="chunk_size"):
        apply_frame(s, {"chunk_size": [5, 0, 5]})
