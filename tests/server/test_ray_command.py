"""``mooer serve --ray`` as a user runs it, in a subprocess: without Ray installed it stops with
the install command; with Ray, an OS-level SIGTERM drains the replicas (every utterance in
flight gets its final, then the websocket closes with 1001) and the command exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def _serve_command(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mooer.cli", "serve", "--ray", "--port", str(port), *extra]


def _env(*front: Path) -> dict[str, str]:
    """This checkout first on the path (``front`` before it), as the tests run it."""
    path = [str(p) for p in front] + [str(ROOT)] + [os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def test_serve_ray_without_ray_says_how_to_install_it(tmp_path):
    """A ``ray`` package that cannot be imported shadows the installed one (if any)."""
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    done = subprocess.run(_serve_command(8999), env=_env(shadow.parent), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--ray needs Ray Serve" in done.stderr
    assert "pip install 'mooer[ray]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_sigterm_to_serve_ray_drains_every_session_before_it_exits(tmp_path):
    pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'mooer[ray]')")
    from mooer.model import load_model
    from mooer.transcribe import transcribe
    from tests.server.test_ray_serve import EXAMPLES, NOTHING, Session, _turn

    expected = transcribe(load_model(), [EXAMPLES / "zh_weather.wav"])[0].text
    port = free_port()
    log = tmp_path / "serve.log"
    command = _serve_command(port, "--replicas", "1", "--replica-cpus", "0.5", "--threads", "1")
    with open(log, "wb") as err:
        server = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=err,
                                  start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "mooer: serving" not in log.read_text(errors="replace"):
            assert server.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "mooer serve --ray did not start"
            time.sleep(0.5)

        async def run() -> list[Session]:
            url = f"http://127.0.0.1:{port}"
            sessions = [await Session.open(url) for _ in range(2)]
            await asyncio.gather(*(s.send(_turn("zh_weather.wav", NOTHING)) for s in sessions))
            await asyncio.gather(*(s.received() for s in sessions))
            server.send_signal(signal.SIGTERM)  # speech in flight: its final is still to come
            await asyncio.wait_for(asyncio.gather(*(s.reader for s in sessions)), 120)
            return sessions

        sessions = asyncio.run(run())
        assert server.wait(120) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)  # its own session, started above
            server.wait(30)
    assert [s.close_code for s in sessions] == [1001, 1001]
    assert [s.finals for s in sessions] == [[expected]] * 2
    assert "mooer: draining the replicas" in log.read_text(errors="replace")
