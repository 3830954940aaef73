"""SIGTERM while sessions are in flight: each pending utterance still gets its final, then a
going-away close; the process exits cleanly, with no traceback or key in its log."""

from __future__ import annotations

import json
import signal
from contextlib import ExitStack

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from mooer.audio import load_audio
from mooer.server.pcm import encode_pcm16
from tests.abuse.conftest import (
    BEARER,
    FINAL,
    KEY,
    MANUAL,
    NORMAL_WAV,
    assert_clean,
    read_until,
    serve,
)


def _until_closed(ws) -> list[dict]:
    events = []
    try:
        while True:
            events.append(json.loads(ws.recv(timeout=30)))
    except ConnectionClosed:
        return events


def test_sigterm_with_sessions_in_flight(tmp_path, demo_expected):
    served = serve(tmp_path, "--api-key", KEY)
    pcm = encode_pcm16(load_audio(NORMAL_WAV))
    served.ready()
    with ExitStack() as stack:
        stack.callback(served.stop)
        realtime = [
            stack.enter_context(connect(served.ws(), additional_headers=BEARER)) for _ in range(2)
        ]
        for ws in realtime:
            read_until(ws, lambda e: e["type"] == "session.created")
            ws.send(json.dumps({"type": "session.update", "session": MANUAL}))
            read_until(ws, lambda e: e["type"] == "session.updated")
            ws.send(pcm)  # never committed by the client
        url = f"ws://127.0.0.1:{served.funasr_port}"
        funasr = stack.enter_context(connect(url, subprotocols=["binary"]))
        funasr.send(json.dumps({"mode": "offline", "api_key": KEY, "is_speaking": True}))
        funasr.send(pcm)  # never ended by the client
        served.proc.send_signal(signal.SIGTERM)
        for ws in realtime:
            events = _until_closed(ws)
            assert [e["transcript"] for e in events if e["type"] == FINAL] == [demo_expected]
            assert ws.close_code == 1001
        replies = _until_closed(funasr)
        assert replies[-1]["is_final"] and "".join(r["text"] for r in replies) == demo_expected
        assert funasr.close_code == 1001
        assert served.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    log = served.log_text()
    assert_clean(log)
    assert "waiting for 3 session(s) to finish" in log
