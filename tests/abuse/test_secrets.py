"""API keys sent every way a client sends one, right and wrong: none of them reaches the log,
and the websocket access line says whether the handshake was accepted or refused."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.abuse.conftest import KEY, WRONG_KEY, read_until

REALTIME = "/v1/realtime?intent=transcription"


def _first_event(url: str, **kwargs) -> tuple[dict, int | None]:
    """The first event of a websocket, and its close code if the server closed it."""
    with connect(url, **kwargs) as ws:
        first = json.loads(ws.recv(timeout=10))
        if first["type"] != "error":
            return first, None
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        return first, ws.close_code


def test_keys_never_reach_the_log_and_refusals_are_logged_as_refused(demo_server, still_serves):
    url, start = demo_server.url, len(demo_server.log_text())
    for where, expected in ((KEY, 200), (WRONG_KEY, 401)):
        assert httpx.get(f"{url}/v1/models?api_key={where}").status_code == expected
        auth = {"Authorization": f"Bearer {where}"}
        assert httpx.get(f"{url}/v1/models", headers=auth).status_code == expected

    ws = demo_server.ws
    cases = [  # (how the key is sent, the first event's type or error code)
        ({"url": ws(f"{REALTIME}&api_key={KEY}")}, "session.created"),
        ({"url": ws(f"{REALTIME}&api_key={WRONG_KEY}")}, "invalid_api_key"),
        ({"url": ws(REALTIME), "additional_headers": {"Authorization": f"Bearer {KEY}"}}, None),
        (
            {"url": ws(REALTIME), "additional_headers": {"Authorization": f"Bearer {WRONG_KEY}"}},
            "invalid_api_key",
        ),
        (
            {"url": ws(REALTIME), "subprotocols": [f"openai-insecure-api-key.{WRONG_KEY}"]},
            "invalid_api_key",
        ),
        ({"url": ws(REALTIME)}, "missing_api_key"),
    ]
    for kwargs, outcome in cases:
        first, code = _first_event(**kwargs)
        if outcome in (None, "session.created"):
            assert first["type"] == "session.created" and code is None
        else:
            assert first["error"]["code"] == outcome and code == 1008, first

    # FunASR's first message, right and wrong
    funasr = f"ws://127.0.0.1:{demo_server.funasr_port}"
    for key, code in ((KEY, None), (WRONG_KEY, "invalid_api_key")):
        with connect(funasr, subprotocols=["binary"]) as conn:
            conn.send(json.dumps({"mode": "offline", "api_key": key, "is_speaking": True}))
            conn.send(json.dumps({"is_speaking": False}))
            reply = read_until(conn, lambda r: r.get("is_final"))[-1]
            assert reply.get("code") == code, reply

    still_serves()
    log = demo_server.log_text()[start:]
    assert KEY not in log and WRONG_KEY not in log
    assert '"GET /v1/models?api_key=[redacted] HTTP/1.1" 401' in log
    line = f'"WebSocket {REALTIME}&api_key=[redacted]"'
    assert f"{line} [accepted]" in log and f"{line} [refused: invalid_api_key]" in log
    handshakes = [x for x in log.splitlines() if '"WebSocket ' in x]
    outcomes = [x.rsplit("[", 1)[1] for x in handshakes]
    # Each handshake logged once, with its outcome: 2 accepted by key above, 1 FunASR, the
    # normal client; refused: 3 wrong keys, 1 missing, 1 wrong FunASR key.
    assert sorted(outcomes) == sorted(
        ["accepted]"] * 4 + ["refused: invalid_api_key]"] * 4 + ["refused: missing_api_key]"]
    ), handshakes
