"""Absurd numbers in session settings: each is refused with ``invalid_value`` naming the field
(the ranges are those of docs/protocol.md), the session keeps its settings, and serves on."""

from __future__ import annotations

import json

from websockets.sync.client import connect

from tests.abuse.conftest import BEARER, KEY, read_until

TD = "session.audio.input.turn_detection"
# (session.update's session, the field named)
REALTIME_CASES = [
    ({"audio": {"input": {"turn_detection": {"silence_duration_ms": 1e12}}}}, f"{TD}.silence_duration_ms"),
    ({"audio": {"input": {"turn_detection": {"silence_duration_ms": 10_001}}}}, f"{TD}.silence_duration_ms"),
    ({"audio": {"input": {"turn_detection": {"silence_duration_ms": 0}}}}, f"{TD}.silence_duration_ms"),
    ({"audio": {"input": {"turn_detection": {"prefix_padding_ms": 1e9}}}}, f"{TD}.prefix_padding_ms"),
    ({"audio": {"input": {"turn_detection": {"prefix_padding_ms": 2001}}}}, f"{TD}.prefix_padding_ms"),
    ({"audio": {"input": {"turn_detection": {"prefix_padding_ms": True}}}}, f"{TD}.prefix_padding_ms"),
    ({"audio": {"input": {"turn_detection": {"threshold": 1e308}}}}, f"{TD}.threshold"),
    ({"audio": {"input": {"turn_detection": {"threshold": 0.1}}}}, f"{TD}.threshold"),
    ({"turn_detection": {"silence_duration_ms": -1}}, "session.turn_detection.silence_duration_ms"),
    ({"mooer": {"partial_interval_ms": 10**12}}, "session.mooer.partial_interval_ms"),
    ({"mooer": {"partial_interval_ms": 50}}, "session.mooer.partial_interval_ms"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000.5}}}}, "session.audio.input.format.rate"),
    ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 10**9}}}}, "session.audio.input.format.rate"),
    ({"audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000.0}}}}, "session.audio.output.format.rate"),
]  # fmt: skip


def test_realtime_refuses_absurd_numbers_naming_the_field(demo_server, still_serves):
    url = demo_server.ws()
    with connect(url, additional_headers=BEARER) as ws:
        before = read_until(ws, lambda e: e["type"] == "session.created")[-1]["session"]
        for session, param in REALTIME_CASES:
            ws.send(json.dumps({"type": "session.update", "session": session}))
            error = read_until(ws, lambda e: e["type"] == "error")[-1]["error"]
            assert (error["code"], error["param"]) == ("invalid_value", param), error
            assert error["message"].startswith(param)
        # In range: taken, and every refused update above left the session as it was.
        good = {"turn_detection": {"silence_duration_ms": 10_000, "prefix_padding_ms": 2000}}
        ws.send(json.dumps({"type": "session.update", "session": {"audio": {"input": good}}}))
        after = read_until(ws, lambda e: e["type"] == "session.updated")[-1]["session"]
    turns = after["audio"]["input"]["turn_detection"]
    assert (turns["silence_duration_ms"], turns["prefix_padding_ms"]) == (10_000, 2000)
    assert after["audio"]["input"]["format"] == before["audio"]["input"]["format"]
    assert after["mooer"] == before["mooer"]
    still_serves()


FUNASR_CASES = [
    ({"chunk_size": [5, 10**9, 5]}, "chunk_size[1]"),
    ({"chunk_size": [5, 10, 1001]}, "chunk_size[2]"),
    ({"chunk_size": "5,0,5"}, "chunk_size[1]"),
    ({"chunk_size": [5, True, 5]}, "chunk_size[1]"),
    ({"audio_fs": 10**12}, "audio_fs"),
    ({"audio_fs": 16000.0}, "audio_fs"),
]


def test_funasr_refuses_absurd_numbers_naming_the_field(demo_server, still_serves):
    with connect(f"ws://127.0.0.1:{demo_server.port}/funasr", subprotocols=["binary"]) as ws:
        ws.send(json.dumps({"api_key": KEY, "mode": "offline"}))
        for frame, param in FUNASR_CASES:
            ws.send(json.dumps(frame))
            reply = json.loads(ws.recv(timeout=10))
            assert reply["code"] == "invalid_value" and reply["error"].startswith(f"{param}="), (
                reply
            )
    still_serves()
