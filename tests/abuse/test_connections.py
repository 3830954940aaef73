"""Clients that misbehave at the connection level: storms, half-open sockets, consumers that do
not read, clients that vanish mid-utterance, foreign origins, path traversal. Each gets its
exact answer, and a normal client is served right after (and the log stays clean)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import numpy as np
import pytest
import websockets
from websockets.sync.client import connect

from mooer.audio import SAMPLE_RATE, load_audio
from mooer.server.pcm import encode_pcm16
from tests.abuse.conftest import BEARER, FINAL, KEY, NORMAL_WAV, read_until, silence

STORM = 100


def _sessions(served) -> int:
    return httpx.get(f"{served.url}/health").json()["sessions"]


def _until_no_sessions(served) -> None:
    for _ in range(100):
        if _sessions(served) == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"{_sessions(served)} session(s) still open")


def test_connect_storm_is_refused_past_the_limit_and_served_after(demo_server, still_serves):
    limit = httpx.get(f"{demo_server.url}/health").json()["max_sessions"]
    url = demo_server.ws()

    async def storm() -> list[tuple[str, int | None]]:
        opened = await asyncio.gather(
            *[websockets.connect(url, additional_headers=BEARER) for _ in range(STORM)]
        )
        outcomes = []
        for ws in opened:  # all held open until every one has its answer
            first = json.loads(await asyncio.wait_for(ws.recv(), 30))
            outcomes.append(first["type"] if first["type"] != "error" else first["error"]["code"])
        for ws in opened:
            await ws.close()
        return [(o, ws.close_code) for o, ws in zip(outcomes, opened, strict=True)]

    _until_no_sessions(demo_server)
    outcomes = asyncio.run(storm())
    created = [o for o in outcomes if o[0] == "session.created"]
    refused = [o for o in outcomes if o[0] == "session_limit_reached"]
    assert len(created) == limit and len(refused) == STORM - limit, outcomes
    assert {code for _, code in refused} == {1013}
    _until_no_sessions(demo_server)
    still_serves()


def _handshake(port: int, path: str, key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()


def test_half_open_sockets_do_not_hold_up_others(demo_server, still_serves):
    port = demo_server.port
    held = []
    try:
        for i in range(10):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            request = _handshake(port, "/v1/realtime?intent=transcription", KEY)
            # half of them stop mid-request; the others complete the handshake, then go silent
            s.sendall(request[: len(request) // 2] if i % 2 else request)
            held.append(s)
        for s in held[::2]:
            assert s.recv(12) == b"HTTP/1.1 101"
        still_serves()
    finally:
        for s in held:
            s.close()
    _until_no_sessions(demo_server)


def test_a_consumer_that_does_not_read_gets_everything_later(demo_server, demo_expected):
    wave = np.concatenate([load_audio(NORMAL_WAV), silence(1.0)])
    turns = np.concatenate([silence(0.5), wave, wave, wave])
    update = {
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
    }
    # max_queue=1: the client stops reading its socket; the server's sends back up.
    with connect(demo_server.ws(), additional_headers=BEARER, max_queue=1) as slow:
        slow.send(json.dumps({"type": "session.update", "session": update}))
        pcm = encode_pcm16(turns)
        step = SAMPLE_RATE  # 0.5 s of PCM16 a message
        for i in range(0, len(pcm), step):
            slow.send(pcm[i : i + step])
        # meanwhile another client is served in full
        with connect(demo_server.ws(), additional_headers=BEARER) as other:
            read_until(other, lambda e: e["type"] == "session.created")
            other.send(json.dumps({"type": "session.update", "session": update}))
            other.send(encode_pcm16(np.concatenate([silence(0.5), wave])))
            assert (
                read_until(other, lambda e: e["type"] == FINAL)[-1]["transcript"] == demo_expected
            )
        events = []
        while sum(e["type"] == FINAL for e in events) < 3:
            events.append(json.loads(slow.recv(timeout=60)))
    assert [e["transcript"] for e in events if e["type"] == FINAL] == [demo_expected] * 3


def test_clients_vanishing_mid_utterance_leave_the_server_serving(demo_server, still_serves):
    speech = encode_pcm16(load_audio(NORMAL_WAV))
    _until_no_sessions(demo_server)
    for path in ("/v1/realtime?intent=transcription", "/v1/realtime/translations", "/funasr"):
        with connect(demo_server.ws(path), additional_headers=BEARER) as ws:
            if path == "/funasr":
                ws.send(json.dumps({"mode": "2pass", "is_speaking": True}))
            ws.send(speech[: len(speech) // 2])
            ws.socket.shutdown(socket.SHUT_RDWR)  # gone: no close frame
    _until_no_sessions(demo_server)
    still_serves()


TRAVERSALS = [
    "/static/../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2fapp.py",
    "/static/%2e%2e%2fapp.py",
    "/static//etc/passwd",
    "/static/....//....//etc/passwd",
]


def test_path_traversal_on_the_static_route_finds_nothing(demo_server, still_serves):
    for target in TRAVERSALS:  # sent as written: no client-side normalisation
        with socket.create_connection(("127.0.0.1", demo_server.port), timeout=10) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 404 "), (target, answer[:200])
        assert b"root:" not in answer and b"import" not in answer
    assert httpx.get(f"{demo_server.url}/static/index.html").status_code == 200
    still_serves()


def test_pages_of_other_origins_are_refused(demo_server, still_serves):
    own = f"http://127.0.0.1:{demo_server.port}"
    for origin, expected in (("https://evil.example", "origin_not_allowed"), (own, None)):
        headers = {**BEARER, "Origin": origin}
        with connect(demo_server.ws(), additional_headers=headers, origin=None) as ws:
            first = json.loads(ws.recv(timeout=10))
            if expected is None:
                assert first["type"] == "session.created"
                continue
            assert first["error"]["code"] == expected
            with pytest.raises(websockets.ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 1008
    still_serves()
