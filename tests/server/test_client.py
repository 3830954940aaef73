"""The command-line client functions against a real server."""

from __future__ import annotations

import sys

import pytest

from mooer.audio import load_audio
from mooer.errors import ConfigError, MooerError
from mooer.server.client import realtime_url
from mooer.server.commands import mic_main, stream_main
from mooer.server.http_api import speech_segments


@pytest.mark.parametrize("mode", ["asr", "asr+ast"])
def test_stream_prints_one_line_per_utterance(
    server, speech_file, session_defaults, offline, capsys, mode
):
    samples = load_audio(speech_file)
    waves = [samples[a:b] for a, b in speech_segments(samples, session_defaults.vad)]
    expected = [r.text for r in offline(waves)]
    if mode == "asr+ast":
        expected = [f"{t}\t{r.translation}" for t, r in zip(expected, offline(waves, "ast"))]
    assert stream_main(str(speech_file), server=server.url, mode=mode) == 0
    assert capsys.readouterr().out.splitlines() == expected


def test_stream_reports_a_refusal(start_server, speech_file, capsys):
    server = start_server(api_key="k")
    assert stream_main(str(speech_file), server=server.url, api_key="wrong") == 1
    assert "invalid_api_key" in capsys.readouterr().err


def test_realtime_urls():
    assert (
        realtime_url("http://h:1", "asr") == "ws://h:1/v1/realtime?model=mooer&intent=transcription"
    )
    assert realtime_url("h:1", "chat", "k") == "ws://h:1/v1/realtime?model=mooer&api_key=k"
    assert realtime_url("https://h/base/", "ast").startswith("wss://h/base/v1/realtime?")
    with pytest.raises(ConfigError, match="ftp://h"):
        realtime_url("ftp://h", "asr")


def test_mic_without_sounddevice_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(MooerError, match=r"pip install 'mooer\[mic\]'"):
        mic_main(server="http://127.0.0.1:1")
