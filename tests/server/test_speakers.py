"""Speaker labels on the wire of a real server: asked for by Realtime (``?speakers=1``) and FunASR
(``"speakers": true``) clients, and missing resemblyzer reported while the session goes on.

The voices: the two AISHELL recordings (one speaker, S0764), then a synthetic Mandarin voice.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys

import numpy as np
import pytest
import websockets

from mooer.asr.speakers import SpeakerEncoder
from mooer.audio import SAMPLE_RATE
from mooer.server.pcm import encode_pcm16
from mooer.train.talk import MEETING_VOICES, heldout_sentences, spoken_talk
from tests.server.conftest import pcm16_round_trip
from tests.server.wire import at_24k, closed_transcription

pytest.importorskip("resemblyzer", reason="resemblyzer (speaker labels) is missing")

FINAL = "conversation.item.input_audio_transcription.completed"


@pytest.fixture(scope="module")
def other_voice() -> np.ndarray:
    """A synthetic voice's sentence with 1 s of silence after it, as sent on the wire."""
    talk = spoken_talk(heldout_sentences(1, "zh"), 0.0, MEETING_VOICES[1], tail_s=1.0)
    return pcm16_round_trip(talk.audio)


def test_realtime_finals_carry_the_speaker_when_asked(server, speech, other_voice):
    pcm = at_24k(np.concatenate([*speech, other_voice]))
    events = asyncio.run(closed_transcription(server.url, "unused", {"speakers": "1"}, pcm))
    starts = {e.item_id: e.audio_start_ms for e in events if e.type.endswith("speech_started")}
    switch_ms = sum(s.size for s in speech) * 1000 // SAMPLE_RATE  # where the other voice begins
    finals = [e for e in events if e.type == FINAL]
    before = {e.speaker for e in finals if starts[e.item_id] < switch_ms}
    after = {e.speaker for e in finals if starts[e.item_id] >= switch_ms}
    assert before == {"speaker 1"} and after == {"speaker 2"}


def test_funasr_stamp_sents_carry_spk_from_the_file_that_asks(server, speech, other_voice):
    async def file(ws, audio, **config):
        frame = {"mode": "offline", "wav_name": "talk", "is_speaking": True, **config}
        await ws.send(json.dumps(frame))
        await ws.send(encode_pcm16(audio))
        await ws.send(json.dumps({"is_speaking": False}))
        replies = []
        while not replies or not replies[-1].get("is_final"):
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return [r["stamp_sents"][0] for r in replies if r["text"]]

    async def run():
        async with websockets.connect(f"ws://{server.host}:{server.port}/funasr") as ws:
            plain = await file(ws, speech[0])
            labelled = await file(ws, np.concatenate([speech[1], other_voice]), speakers=True)
            return plain, labelled

    plain, labelled = asyncio.run(run())
    assert plain and all("spk" not in s for s in plain)
    switch_ms = speech[1].size * 1000 // SAMPLE_RATE
    assert {s["spk"] for s in labelled if s["start"] < switch_ms} == {0}
    assert {s["spk"] for s in labelled if s["start"] >= switch_ms} == {1}


def test_without_resemblyzer_the_client_is_told_and_the_session_goes_on(
    start_server, speech, monkeypatch
):
    monkeypatch.setattr(SpeakerEncoder, "available", staticmethod(lambda: False))
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # its import fails, as if missing
    server = start_server()
    session = {"type": "transcription", "mooer": {"task": "asr"}}

    async def run():
        url = f"ws://{server.host}:{server.port}/v1/realtime?intent=transcription&speakers=1"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            audio = base64.b64encode(at_24k(speech[0])).decode()
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            events = []
            while not events or events[-1]["type"] != FINAL:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return events

    events = asyncio.run(run())
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["speakers_unavailable"]
    assert "resemblyzer" in errors[0]["message"]
    assert events[-1]["transcript"] and "speaker" not in events[-1]
