"""Bounded work per request: decoded audio is limited while it is decoded, uploads are cut and
decoded in bounded engine steps beside other clients, and silence is never decoded.

The case found by trying the server as an attacker would: a small FLAC of hours of silence
tied the server up (all of it decoded, minutes of voice activity, other uploads waiting).
The figures for the real 3-hour file are bench/bench_abuse.py's; these tests use a lower
limit so the files stay small.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from mooer.agent.session import SessionConfig
from mooer.audio import BLOCK_S, SAMPLE_RATE, AudioStream, AudioTooLong, load_audio
from mooer.transcribe import transcribe

# The server tests' fixtures: a fabricated model served on loopback.
from tests.server.conftest import model, session_defaults, start_server  # noqa: F401
from tests.server.test_http_api import _post, _upload_and_leave, _wait_until

LIMIT_S = 60.0


def _silent_flac(path, seconds: float):
    """A FLAC of digital silence, written a minute at a time (a few KB per minute)."""
    minute = np.zeros(60 * SAMPLE_RATE, np.float32)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, format="FLAC", subtype="PCM_16") as f:
        left = int(seconds * SAMPLE_RATE)
        while left > 0:
            f.write(minute[: min(left, minute.size)])
            left -= minute.size
    return path


@pytest.fixture(scope="module")
def limited(start_server):  # noqa: F811
    return start_server(max_request_audio_s=LIMIT_S)


@pytest.fixture(scope="module")
def three_minutes(tmp_path_factory):
    return _silent_flac(tmp_path_factory.mktemp("abuse") / "silence.flac", 180)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, aishell_clips):
    path = tmp_path_factory.mktemp("abuse") / "clip.wav"
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    sf.write(path, np.concatenate([pause, aishell_clips[0], pause]), SAMPLE_RATE)
    return path


def test_an_upload_over_the_decoded_audio_limit_is_refused_with_413(limited, three_minutes):
    assert three_minutes.stat().st_size < 50_000  # far under the 25 MB upload limit
    started = time.monotonic()
    response = _post(limited, "transcriptions", three_minutes)
    assert time.monotonic() - started < 30  # refused from its header, nothing decoded
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "audio_too_long" and error["param"] == "file"
    assert error["type"] == "invalid_request_error"
    assert "60 s" in error["message"] and "max_request_audio_s" in error["message"]
    assert "silence.flac" in error["message"]
    assert not [r for r in limited.hub.engine.steps_run() if r.kind == "request"]
    metrics = httpx.get(f"{limited.url}/metrics").text
    assert 'mooer_http_requests_total{route="transcriptions",status="413"} 1' in metrics


def test_a_long_silent_upload_does_not_hold_up_a_normal_one(start_server, three_minutes, clip):  # noqa: F811
    server = start_server()
    engine = server.hub.engine
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(
            _post, server, "transcriptions", three_minutes, response_format="verbose_json"
        )
        deadline = time.monotonic() + 60
        while not any(r.kind == "request" for r in engine.steps_run()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        short = _post(server, "transcriptions", clip)
        silent = long.result(timeout=300)
    assert short.status_code == 200 and short.json()["text"]
    assert silent.status_code == 200
    assert silent.json()["text"] == "" and silent.json()["segments"] == []
    assert silent.json()["duration"] == 180.0
    record = [r for r in engine.steps_run() if r.kind == "request"]
    long_id = record[0].client
    short_steps = [r.step for r in record if r.client != long_id]
    long_steps = [r.step for r in record if r.client == long_id]
    # 36 blocks of 5 s, the end, the answer: one step each, taking turns with the short one,
    # which was answered while the long one still had most of its blocks to go.
    assert len(long_steps) == 180 // 5 + 2
    assert max(short_steps) < long_steps[len(long_steps) // 2]
    assert all(long_id in r.waiting for r in record if r.client != long_id)


def test_an_upload_whose_client_goes_away_stops_being_decoded(start_server, tmp_path):  # noqa: F811
    server = start_server()
    engine = server.hub.engine
    path = _silent_flac(tmp_path / "ten_minutes.flac", 600)
    release = threading.Event()

    def neighbour():  # 50 ms a turn, so the upload's 120 blocks take seconds on any machine
        while not release.is_set():
            time.sleep(0.05)
            yield None

    engine.submit(engine.open(SessionConfig(turn_detection=False)), "control", neighbour())
    started = lambda: any(r.kind == "request" for r in engine.steps_run())  # noqa: E731
    _upload_and_leave(server, path, started)  # gone once its decoding has begun
    gone = 'mooer_http_requests_total{route="transcriptions",status="499"} 1'
    _wait_until(lambda: gone in server.hub.metrics.render())
    release.set()
    assert engine.wait_idle(timeout=60)
    steps = [r for r in engine.steps_run() if r.kind == "request"]
    assert 0 < len(steps) < 600 // 5  # stopped at a block, long before the end of the file


def test_funasr_refuses_a_file_over_the_limit_and_gives_silence_no_text(
    start_server,  # noqa: F811
    three_minutes,
    tmp_path,
):
    server = start_server(max_request_audio_s=LIMIT_S)
    url = f"ws://{server.host}:{server.port}/funasr"
    short = _silent_flac(tmp_path / "half_minute.flac", 30)
    config = {"mode": "offline", "wav_name": "f", "is_speaking": True, "wav_format": "flac"}

    async def send(path) -> list[dict]:
        async with websockets.connect(url, subprotocols=["binary"]) as ws:
            await ws.send(json.dumps(config))
            await ws.send(path.read_bytes())
            await ws.send(json.dumps({"is_speaking": False}))
            replies = []
            while not replies or not replies[-1].get("is_final"):
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return replies

    refused = asyncio.run(send(three_minutes))
    assert [r.get("code") for r in refused] == ["audio_too_long", None]
    assert "60 s" in refused[0]["error"] and "max_request_audio_s" in refused[0]["error"]
    assert refused[-1]["text"] == "" and refused[-1]["is_end"]
    silent = asyncio.run(send(short))
    assert silent == [
        {"mode": "offline", "wav_name": "f", "text": "", "is_final": True, "is_end": True}
    ]
    assert not [r for r in server.hub.engine.steps_run() if r.kind == "final"]  # no decode


def test_the_library_and_the_cli_refuse_audio_over_their_limit(
    omni_model, fabricated, aishell_wav, tmp_path
):
    samples = load_audio(aishell_wav)  # about 4 s
    with pytest.raises(AudioTooLong, match="more than 2 s of audio"):
        transcribe(omni_model, [aishell_wav], max_seconds=2)
    with pytest.raises(AudioTooLong, match="more than 2 s of audio"):
        transcribe(omni_model, [samples], max_seconds=2)
    with pytest.raises(AudioTooLong, match="more than 2 s of audio"):
        load_audio(aishell_wav, max_seconds=2)
    assert transcribe(omni_model, [aishell_wav], max_seconds=60)[0].segments

    proc = subprocess.run(
        [sys.executable, "-m", "mooer.cli", "transcribe", "--model", str(fabricated("omni")),
         "--max-audio", "2", str(aishell_wav)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "more than 2 s of audio" in proc.stderr and aishell_wav.name in proc.stderr


def _without_length(flac: bytes) -> bytes:
    """The FLAC with its STREAMINFO total-samples field zeroed, as a streamed FLAC has it: the
    header no longer tells how much audio follows."""
    data = bytearray(flac)
    assert data[:4] == b"fLaC"
    data[21] &= 0xF0  # the 36-bit count: the low 4 bits of byte 21, then bytes 22..25
    data[22:26] = bytes(4)
    return bytes(data)


def test_a_file_that_does_not_declare_its_length_is_refused_while_decoding(limited, tmp_path):
    path = tmp_path / "silence.flac"
    _silent_flac(path, 90)
    streamed = tmp_path / "streamed.flac"
    streamed.write_bytes(_without_length(path.read_bytes()))
    with AudioStream(streamed.read_bytes(), max_seconds=LIMIT_S) as stream:  # opens: no refusal
        with pytest.raises(AudioTooLong, match="more than 60 s"):
            for _ in stream.blocks():
                pass
        assert stream.samples == LIMIT_S * SAMPLE_RATE  # stopped at the block past the limit
    response = _post(limited, "transcriptions", streamed)
    assert response.status_code == 413 and response.json()["error"]["code"] == "audio_too_long"
    steps = [r for r in limited.hub.engine.steps_run() if r.kind == "request"]
    assert len(steps) == LIMIT_S / BLOCK_S + 1  # the blocks up to the limit, then the refusal
