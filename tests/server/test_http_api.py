"""HTTP endpoints with httpx and the openai SDK: transcription formats, errors, health, metrics."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
import soundfile as sf

from mooer.audio import load_audio
from mooer.server.captions import join_texts
from mooer.server.http_api import speech_segments


@pytest.fixture(scope="module")
def two_utterances(tmp_path_factory, speech):
    """Both recordings in one file, and what the server should make of them."""
    path = tmp_path_factory.mktemp("http") / "two.flac"
    sf.write(path, np.concatenate(speech), 16000)
    return path


@pytest.fixture(scope="module")
def expected(two_utterances, session_defaults, offline):
    samples = load_audio(two_utterances)
    ranges = speech_segments(samples, session_defaults.vad)
    assert len(ranges) == 2
    waves = [samples[a:b] for a, b in ranges]
    return {
        "ranges": [(a / 16000, b / 16000) for a, b in ranges],
        "asr": [r.text for r in offline(waves)],
        "ast": [r.translation for r in offline(waves, "ast")],
    }


def _post(server, route: str, path, **fields) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(
            f"{server.url}/v1/audio/{route}",
            files={"file": (path.name, f)},
            data={"model": "mooer", **fields},
            timeout=120,
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK marks translations so
def test_sdk_transcription_and_translation(server, two_utterances, expected):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    with open(two_utterances, "rb") as f:
        result = client.audio.transcriptions.create(model="mooer", file=f)
    assert result.text == join_texts(expected["asr"])
    with open(two_utterances, "rb") as f:
        result = client.audio.translations.create(model="mooer", file=f)
    assert result.text == join_texts(expected["ast"])
    assert [m.id for m in client.models.list()] == ["mooer"]


def test_response_formats(server, two_utterances, expected):
    text = _post(server, "transcriptions", two_utterances, response_format="text")
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == join_texts(expected["asr"]) + "\n"

    verbose = _post(server, "transcriptions", two_utterances, response_format="verbose_json").json()
    assert verbose["task"] == "transcribe" and verbose["duration"] == pytest.approx(10.32, abs=0.01)
    assert [s["text"] for s in verbose["segments"]] == expected["asr"]
    for seg, (start, end) in zip(verbose["segments"], expected["ranges"]):
        assert seg["start"] == pytest.approx(start, abs=1e-3) and seg["end"] == pytest.approx(
            end, abs=1e-3
        )
    verbose = _post(server, "translations", two_utterances, response_format="verbose_json").json()
    assert verbose["task"] == "translate" and verbose["language"] == "english"

    srt = _post(server, "transcriptions", two_utterances, response_format="srt").text
    cues = srt.strip().split("\n\n")
    assert len(cues) == 2 and cues[0].split("\n")[0] == "1"
    assert re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", cues[1].split("\n")[1])
    assert [c.split("\n", 2)[2] for c in cues] == expected["asr"]

    vtt = _post(server, "transcriptions", two_utterances, response_format="vtt")
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert vtt.text.startswith("WEBVTT\n\n")
    assert re.search(r"^\d\d:\d\d:\d\d\.\d{3} --> ", vtt.text, re.M)


def test_errors_are_openai_shaped(start_server, tmp_path, two_utterances):
    server = start_server(max_upload_bytes=50_000)
    (tmp_path / "notes.txt").write_text("not audio at all")
    bad = _post(server, "transcriptions", tmp_path / "notes.txt")
    assert bad.status_code == 400
    assert (
        bad.json()["error"]["code"] == "invalid_audio"
        and "notes.txt" in bad.json()["error"]["message"]
    )
    fmt = _post(server, "transcriptions", tmp_path / "notes.txt", response_format="xml")
    assert fmt.status_code == 400 and fmt.json()["error"]["param"] == "response_format"
    missing = httpx.post(f"{server.url}/v1/audio/transcriptions", data={"model": "m"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    big = _post(server, "transcriptions", two_utterances)
    assert big.status_code == 413 and big.json()["error"]["code"] == "file_too_large"
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"  # still serving


def test_health_metrics_and_page(server, two_utterances):
    _post(server, "transcriptions", two_utterances)
    health = httpx.get(f"{server.url}/health").json()
    assert health == {"status": "ok", "model": "mooer", "sessions": 0, "max_sessions": 16}
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'mooer_http_requests_total{route="transcriptions",status="200"}' in metrics.text
    assert re.search(r'mooer_audio_seconds_total\{protocol="http"\} \d', metrics.text)
    assert 'mooer_http_request_seconds_count{route="transcriptions"}' in metrics.text
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "mooer live" in page.text
    for asset in ("app.js", "pcm-worklet.js"):
        assert httpx.get(f"{server.url}/static/{asset}").status_code == 200
