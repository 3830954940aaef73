"""Malformed, oversize and garbage frames on all three websocket protocols: each gets its exact
error (or, past the hard cap, a close), and the same connection, or a new one, still serves."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from mooer.audio import load_audio
from mooer.server.pcm import encode_pcm16
from tests.abuse.conftest import BEARER, FINAL, KEY, MANUAL, NORMAL_WAV, read_until, silence

MIB = 1 << 20
DEEP = "[" * 100_000  # 100k levels: past any recursion limit
NESTED = '{"type": "session.update", "session": ' + '{"a": ' * 40 + "1" + "}" * 41
HUGE_NUMBER = '{"type": "session.update", "session": {"a": 1' + "0" * 5000 + "}}"
# frames every protocol refuses as JSON
NOT_JSON = ["nope", "[1, 2]", DEEP, NESTED, HUGE_NUMBER, '{"a": }']
OPENAI_BAD = [
    ("{}", "invalid_event"),
    ('{"type": "no.such.event"}', "unknown_event"),
    ('{"type": 5}', "invalid_event"),
    ('{"type": "session.update", "session": []}', "invalid_value"),
    ("x" * (MIB + 1), "message_too_large"),
]


def _errors(ws, frames: list[str]) -> list[str]:
    """The error code each frame got (OpenAI protocols: one error event each)."""
    codes = []
    for frame in frames:
        ws.send(frame)
        codes.append(read_until(ws, lambda e: e["type"] == "error")[-1]["error"]["code"])
    return codes


@pytest.mark.parametrize(
    "path", ["/v1/realtime?intent=transcription", "/v1/realtime/translations?model=mooer"]
)
def test_openai_protocols_refuse_bad_frames_and_serve_on(demo_server, demo_expected, path):
    with connect(demo_server.ws(path), additional_headers=BEARER, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
        frames, codes = zip(*OPENAI_BAD, strict=True)
        assert _errors(ws, NOT_JSON) == ["invalid_json"] * len(NOT_JSON)
        assert _errors(ws, list(frames)) == list(codes)
        # A lone surrogate in a client's event_id, echoed back: the error still goes out.
        ws.send('{"type": "no.such.event", "event_id": "\\ud800"}')
        echoed = read_until(ws, lambda e: e["type"] == "error")[-1]["error"]
        assert echoed["code"] == "unknown_event" and echoed["event_id"] == "\ud800"
        # Binary garbage is audio in the session's format (a mooer extension): no error.
        ws.send(np.random.default_rng(0).bytes(4097))
        if path.startswith("/v1/realtime?"):
            ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            read_until(ws, lambda e: e["type"] == "input_audio_buffer.cleared")
            ws.send(json.dumps({"type": "session.update", "session": MANUAL}))
            read_until(ws, lambda e: e["type"] == "session.updated")
            ws.send(encode_pcm16(load_audio(NORMAL_WAV)))
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            final = read_until(ws, lambda e: e["type"] == FINAL)[-1]
            assert final["transcript"] == demo_expected  # this connection still serves
        # Past the hard cap (4x the message limit) the websocket library drops the connection.
        ws.send(b"\0" * (4 * MIB + 2))
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert ws.close_code == 1009


def _funasr_file(ws, pcm: bytes, **config) -> list[dict]:
    ws.send(json.dumps({"mode": "offline", "wav_name": "t", "is_speaking": True, **config}))
    if pcm:
        ws.send(pcm)
    ws.send(json.dumps({"is_speaking": False}))
    return read_until(ws, lambda r: r.get("is_final"))


def test_funasr_refuses_bad_frames_and_serves_on(demo_server, demo_expected):
    url = f"ws://127.0.0.1:{demo_server.funasr_port}"
    with connect(url, subprotocols=["binary"], max_size=None) as ws:
        ws.send(json.dumps({"mode": "offline", "api_key": KEY}))
        replies = []
        for frame in [*NOT_JSON, '{"chunk_size": [5, 1e9, 5]}', "x" * (MIB + 1)]:
            ws.send(frame)
            replies.append(json.loads(ws.recv(timeout=10)))
        codes = [r["code"] for r in replies]
        assert codes == ["invalid_json"] * len(NOT_JSON) + ["invalid_value", "message_too_large"]
        assert not any(r["is_final"] for r in replies)
        # A whole "file" of garbage: it cannot be decoded, and the file still ends.
        garbage = _funasr_file(ws, np.random.default_rng(1).bytes(5000), wav_format="wav")
        assert garbage[0]["code"] == "invalid_audio" and garbage[-1]["is_final"]
        pcm = encode_pcm16(np.concatenate([load_audio(NORMAL_WAV), silence(0.5)]))
        replies = _funasr_file(ws, pcm, wav_format="pcm")
        assert "".join(r["text"] for r in replies) == demo_expected


@pytest.mark.parametrize("path", ["/v1/realtime", "/v1/realtime/translations", "/funasr"])
def test_text_frames_that_are_not_utf8_close_the_connection(demo_server, still_serves, path):
    """RFC 6455: a text frame must be UTF-8; the server fails the connection with 1007 (and
    logs one line, no traceback: checked by the log fixture)."""
    start = len(demo_server.log_text())
    with connect(demo_server.ws(path), additional_headers=BEARER) as ws:
        ws.send(b'\xff\xfe{"type": "x"}', text=True)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=10)
        assert ws.close_code == 1007
    still_serves()
    log = demo_server.log_text()[start:]
    assert "WARNING:  Invalid UTF-8 sequence received from client. closed it with 1007" in log


@pytest.mark.parametrize("body", [DEEP.encode(), HUGE_NUMBER.encode(), b"\xff\xfe"])
def test_http_json_that_cannot_be_read_is_invalid_json(demo_server, body):
    answer = httpx.post(f"{demo_server.url}/v1/audio/speech", content=body, headers=BEARER)
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "invalid_json")
