"""HTTP endpoints with httpx and the openai SDK: transcription formats, errors, health, metrics,
and an upload sharing the engine with a live session."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from mooer.agent import events as ev
from mooer.agent.session import SessionConfig
from mooer.asr.segmenter import cut
from mooer.asr.vad import VadConfig
from mooer.audio import BLOCK_S, SAMPLE_RATE, load_audio
from mooer.text import join_texts
from mooer.transcribe import SEGMENTER, transcribe
from tests.agent.recorder import Recorder


@pytest.fixture(scope="module")
def two_utterances(tmp_path_factory, speech):
    """Both recordings in one file, and what the server should make of them."""
    path = tmp_path_factory.mktemp("http") / "two.flac"
    sf.write(path, np.concatenate(speech), 16000)
    return path


@pytest.fixture(scope="module")
def expected(model, two_utterances, session_defaults):
    """What ``transcribe()`` (``mooer transcribe``) makes of the file, with the server's final
    options: the server must give the same segments, times and texts."""
    options = session_defaults.final_options
    asr, ast = (transcribe(model, [two_utterances], t, options)[0] for t in ("asr", "ast"))
    assert len(asr.segments) == 2 and ast.segments == asr.segments
    return {"ranges": asr.segments, "asr": asr.segment_texts, "ast": ast.segment_texts}


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
    assert [(seg["start"], seg["end"]) for seg in verbose["segments"]] == expected["ranges"]
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


def test_an_upload_without_speech_gives_empty_text_and_no_segments(server, tmp_path):
    hum = np.random.default_rng(0).normal(0, 1e-3, 70 * SAMPLE_RATE).astype(np.float32)
    assert cut(hum, VadConfig()) == []
    sf.write(tmp_path / "hum.flac", hum, SAMPLE_RATE)
    decoded_before = len(server.hub.engine.steps_run())
    verbose = _post(server, "transcriptions", tmp_path / "hum.flac", response_format="verbose_json")
    assert verbose.status_code == 200
    assert verbose.json()["text"] == "" and verbose.json()["segments"] == []
    assert verbose.json()["duration"] == 70.0
    # Its steps: 14 blocks of 5 s (decoding and voice activity), the end, the answer; an
    # utterance would have added one step for its decode.
    steps = [r for r in server.hub.engine.steps_run()[decoded_before:] if r.kind == "request"]
    assert len(steps) == 16
    srt = _post(server, "transcriptions", tmp_path / "hum.flac", response_format="srt")
    assert srt.status_code == 200 and srt.text == ""


def _upload_and_leave(server, path, leave: Callable[[], bool]) -> None:
    """POST ``path`` for transcription from a raw client that goes away once ``leave()``; not
    an httpx read timeout, which could fire before the server has read the form (a 400)."""
    request = httpx.Request(
        "POST",
        f"{server.url}/v1/audio/transcriptions",
        files={"file": (path.name, path.read_bytes())},
        data={"model": "mooer"},
    )
    head = [f"POST {request.url.raw_path.decode()} HTTP/1.1"]
    head += [f"{name}: {value}" for name, value in request.headers.items()]
    with socket.create_connection((server.host, server.port), timeout=30) as client:
        client.sendall("\r\n".join([*head, "", ""]).encode() + request.read())
        _wait_until(leave)


def _wait_until(test, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_long_upload_and_a_live_session_take_turns_on_the_engine(
    start_server, speech, session_defaults, offline, tmp_path
):
    server = start_server()
    engine = server.hub.engine
    upload = tmp_path / "long.wav"
    sf.write(upload, np.concatenate(speech * 4), SAMPLE_RATE, subtype="PCM_16")  # 8 utterances
    samples = load_audio(upload)
    ranges = [(u.start, u.end) for u in cut(samples, SEGMENTER)]
    assert len(ranges) >= 8

    recorder = Recorder()
    live = engine.open(server.hub.session_config(), recorder)
    stream = np.concatenate([speech[0], speech[1], speech[0]])
    chunks = [stream[i : i + SAMPLE_RATE // 50] for i in range(0, stream.size, SAMPLE_RATE // 50)]
    held = len(chunks) // 2  # the first utterance, its silence and half the second
    # Work piles up behind a held worker: the upload, the live session's final and a partial.
    release, holding = threading.Event(), threading.Event()
    holder = engine.open(SessionConfig(turn_detection=False))
    engine.submit(holder, "control", lambda: holding.set() or release.wait(30))
    assert holding.wait(30)
    with ThreadPoolExecutor(1) as pool:
        posted = pool.submit(_post, server, "transcriptions", upload, response_format="text")
        _wait_until(lambda: len(engine.backlog()) == 2)  # the upload, behind the holder
        for chunk in chunks[:held]:
            live.feed(chunk)
        release.set()
        _wait_until(lambda: any(r.kind == "request" for r in engine.steps_run()))
        for chunk in chunks[held:]:  # unpaced: the rest arrives while the upload runs
            live.feed(chunk)
        live.close()
        assert live.wait_closed(60)
        response = posted.result(timeout=120)

    # Both get what they would get alone.
    assert response.status_code == 200
    assert response.text == join_texts([offline([samples[a:b]])[0].text for a, b in ranges]) + "\n"
    spoken = [(u.start, u.end) for u in cut(stream, session_defaults.vad)]
    assert [e.text for e in recorder.of(ev.Transcript)] == [
        offline([stream[a:b]])[0].text for a, b in spoken
    ]

    # The engine's record: the upload (a step per 5 s block of decoding and voice activity, one
    # for the end, two per utterance: to ask for its encoding in the engine's batch and to
    # decode it, one to answer) and the session shared the worker.
    record = [r for r in engine.steps_run() if r.client != holder.id]
    [upload_id] = {r.client for r in record if r.kind == "request"}
    blocks = -(-samples.size // int(BLOCK_S * SAMPLE_RATE))
    assert sum(r.client == upload_id for r in record) == blocks + 1 + 2 * len(ranges) + 1
    # The final went first (parked while the encoder ran), then the upload and the session took
    # turns.
    assert [(r.client, r.waiting) for r in record[:2]] == [
        (live.id, (upload_id,)),
        (upload_id, ()),
    ]
    assert record[0].kind == "final" and record[2].client == live.id
    finals = [r for r in record if r.client == live.id and r.kind == "final"]
    begun = {r.queued_at: r for r in reversed(finals)}  # each final's first step
    assert len(begun) == 3 and len(finals) == 6  # each: its encoding asked for, then decoded
    steps = {r.step: r.client for r in record}
    for final in begun.values():  # at most one upload step ran between an utterance's end and
        # its final (while the session's earlier final waited for the encoder batch)
        assert [steps.get(i) for i in range(final.queued_at, final.step)].count(upload_id) <= 1
    for prev, cur in zip(record, record[1:]):  # round-robin: while another client waits, a
        if cur.client == prev.client and prev.waiting:  # client goes twice only for a final
            assert cur.kind == "final", (prev, cur)


def test_an_upload_whose_client_went_away_is_dropped_from_the_engine(start_server, two_utterances):
    server = start_server()
    engine = server.hub.engine
    release, holding = threading.Event(), threading.Event()
    holder = engine.open(SessionConfig(turn_detection=False))
    engine.submit(holder, "control", lambda: holding.set() or release.wait(60))
    assert holding.wait(30)
    _upload_and_leave(
        server, two_utterances, lambda: any(c.startswith("http") for c in engine.backlog())
    )
    gone = 'mooer_http_requests_total{route="transcriptions",status="499"} 1'
    _wait_until(lambda: gone in server.hub.metrics.render())
    release.set()
    assert engine.wait_idle(timeout=30)
    steps = [r for r in engine.steps_run() if r.kind == "request"]
    assert len(steps) == 1  # one turn to see it was cancelled; no utterance decoded
