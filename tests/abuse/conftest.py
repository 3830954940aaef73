"""The abuse suite's servers and its normal client.

Most cases run against the bundled demo model served by a real ``mooer serve`` process (with an
API key and a FunASR port) whose log is kept: after every test the lines it added may hold no
traceback and no key, and a normal client must still get the demo model's transcript of an
example recording. Settings that need a server of their own use the in-process servers of
tests/server (the fabricated model), whose log records are checked the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from mooer.audio import SAMPLE_RATE, load_audio
from mooer.server.pcm import encode_pcm16
from tests.ports import free_port
from tests.server.conftest import (  # noqa: F401  (fixtures reused from tests/server)
    model,
    offline,
    session_defaults,
    speech,
    start_server,
)

REPO = Path(__file__).resolve().parents[2]
KEY = "abuse-suite-key-7f3a9c51"
WRONG_KEY = "wrong-key-0b41d2e8c6"
SECRETS = (KEY, WRONG_KEY)
BEARER = {"Authorization": f"Bearer {KEY}"}
NORMAL_WAV = REPO / "examples" / "audio" / "zh_weather.wav"
FINAL = "conversation.item.input_audio_transcription.completed"
# A transcription session at 16 kHz that the client commits: its final decodes exactly what
# was sent, as ``transcribe()`` does.
MANUAL = {
    "type": "transcription",
    "mooer": {"task": "asr"},
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}, "turn_detection": None}},
}


@dataclass
class Served:
    """A ``mooer serve`` process and its log (stdout and stderr together)."""

    proc: subprocess.Popen
    port: int
    funasr_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, path: str = "/v1/realtime?intent=transcription") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def ready(self) -> Served:
        """Once it answers /health."""
        for _ in range(600):
            try:
                httpx.get(f"{self.url}/health", timeout=1)
                return self
            except httpx.TransportError:
                assert self.proc.poll() is None, self.log_text()
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"mooer serve did not start:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def serve(folder: Path, *flags: str) -> Served:
    """``mooer serve`` (the demo model) on free loopback ports, at log level info; starting
    (see ``Served.ready``)."""
    port, funasr_port = free_port(), free_port()
    log = folder / "server.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",  # the access lines reach the log as they happen
    }
    argv = ["serve", "--port", str(port), "--funasr-port", str(funasr_port), "--threads", "1"]
    code = "import sys; from mooer.cli import main; sys.exit(main())"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv, "--log-level", "info", *flags],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Served(proc, port, funasr_port, log)


def assert_clean(log: str) -> None:
    """No traceback and no key (right or wrong) in a server's log."""
    assert "Traceback" not in log, log
    for secret in SECRETS:
        assert secret not in log, f"{secret!r} is in the log:\n{log}"


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory, request) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("demo-server"), "--api-key", KEY)
    request.getfixturevalue("demo_expected")  # loads the model here while the server starts
    yield served.ready()
    served.stop()
    assert_clean(served.log_text())


@pytest.fixture(scope="session")
def demo_expected() -> str:
    """The demo model's transcript of the normal client's recording, offline."""
    from mooer.model import load_model
    from mooer.transcribe import transcribe

    return transcribe(load_model(), [NORMAL_WAV])[0].text


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(self.format(record))


@pytest.fixture(autouse=True)
def _clean_logs(request) -> Iterator[None]:
    """After every test: no traceback or error in the in-process servers' log records, and no
    traceback or key in what the demo server logged meanwhile."""
    served = (
        request.getfixturevalue("demo_server") if "demo_server" in request.fixturenames else None
    )
    start = len(served.log_text()) if served else 0
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("mooer", "uvicorn")]
    for logger in loggers:
        logger.addHandler(records)
    yield
    for logger in loggers:
        logger.removeHandler(records)
    assert not records.bad, "\n".join(records.bad)
    if served is not None:
        time.sleep(0.1)  # lines of connections that just closed
        assert_clean(served.log_text()[start:])


def read_until(ws, done, timeout: float = 30.0) -> list[dict]:
    """Events of a sync websocket up to and including the first for which ``done`` is true."""
    events = []
    while not events or not done(events[-1]):
        events.append(json.loads(ws.recv(timeout=timeout)))
    return events


def manual_final(url: str, samples: np.ndarray, headers: dict | None = None) -> str:
    """A normal client: a committed 16 kHz transcription session; its one final transcript."""
    with connect(url, additional_headers=headers, max_size=None) as ws:
        read_until(ws, lambda e: e["type"] == "session.created")
        ws.send(json.dumps({"type": "session.update", "session": MANUAL}))
        read_until(ws, lambda e: e["type"] == "session.updated")
        ws.send(encode_pcm16(samples))
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        events = read_until(ws, lambda e: e["type"] in (FINAL, "error"))
        assert events[-1]["type"] == FINAL, events[-1]
        return events[-1]["transcript"]


@pytest.fixture
def still_serves(demo_server, demo_expected):
    """``still_serves()``: a normal client of the demo server gets the right final."""

    def check() -> None:
        samples = load_audio(NORMAL_WAV)
        assert manual_final(demo_server.ws(), samples, BEARER) == demo_expected

    return check


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
