"""The command-line client functions against a real server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mooer.asr.segmenter import cut
from mooer.audio import load_audio
from mooer.errors import ConfigError, MooerError
from mooer.server.client import realtime_url
from mooer.server.commands import mic_main, stream_main
from tests.ports import free_port


@pytest.mark.parametrize("mode", ["asr", "asr+ast"])
def test_stream_prints_one_line_per_utterance(
    server, speech_file, session_defaults, offline, capsys, mode
):
    samples = load_audio(speech_file)
    waves = [u.audio for u in cut(samples, session_defaults.vad)]
    expected = [r.text for r in offline(waves)]
    if mode == "asr+ast":
        expected = [f"{t}\t{r.translation}" for t, r in zip(expected, offline(waves, "ast"))]
    assert stream_main(str(speech_file), server=server.url, mode=mode) == 0
    assert capsys.readouterr().out.splitlines() == expected


def test_stream_reports_a_refusal(start_server, speech_file, capsys):
    server = start_server(api_key="k")
    assert stream_main(str(speech_file), server=server.url, api_key="wrong") == 1
    assert "invalid_api_key" in capsys.readouterr().err
    assert stream_main(str(speech_file), server=server.url, api_key="k") == 0  # as a header


def test_realtime_urls():
    assert (
        realtime_url("http://h:1", "asr") == "ws://h:1/v1/realtime?model=mooer&intent=transcription"
    )
    assert realtime_url("h:1", "chat") == "ws://h:1/v1/realtime?model=mooer"
    assert realtime_url("https://h/base/", "ast").startswith("wss://h/base/v1/realtime?")
    with pytest.raises(ConfigError, match="ftp://h"):
        realtime_url("ftp://h", "asr")


def test_mic_without_sounddevice_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(MooerError, match=r"pip install 'mooer\[mic\]'"):
        mic_main(server="http://127.0.0.1:1")


def test_serve_main_serves_until_sigterm(fabricated, tmp_path):
    import os
    import signal
    import subprocess
    import time

    import httpx

    port = free_port()
    code = (
        "import sys; from mooer.server.commands import serve_main; "
        f"sys.exit(serve_main(model={str(fabricated('omni'))!r}, device='cpu', port={port}, "
        "threads=1, log_level='warning'))"
    )
    repo = Path(__file__).resolve().parents[2]  # mooer importable even when not installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(300):
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        assert health["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        # after a graceful shutdown uvicorn re-raises the signal, as servers conventionally do
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = proc.stderr.read()
        assert f"serving http://127.0.0.1:{port}/" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
