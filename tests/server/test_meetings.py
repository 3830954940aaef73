"""Recorded live sessions on a real server: what clients hear as finals is what the store keeps,
the meetings API behind the key, and a store that fails while the session goes on."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np
import pytest
import websockets

from mooer.asr.speakers import SpeakerEncoder
from tests.ports import free_port
from tests.server.wire import at_24k, closed_transcription

sa = pytest.importorskip("sqlalchemy", reason="the meetings extra (SQLAlchemy) is not installed")

KEY = "meeting-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
FINAL = "conversation.item.input_audio_transcription.completed"
# A recorded session's speaker labels, where resemblyzer is installed (setup.sh --tests)
LABELLED = "speaker 1" if SpeakerEncoder.available() else None


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("meetings") / "meetings.db")


@pytest.fixture(scope="module")
def recording_server(start_server, db):
    """Records the sessions that ask for it, into ``db``; everything behind ``KEY``."""
    return start_server(api_key=KEY, meetings_db=db)


def _store(db):
    from mooer.meetings.store import MeetingStore

    return MeetingStore(db)


def _ended(db, meeting_id, timeout=10.0):
    """The meeting once the server has marked it ended (it does after the socket closes)."""
    store = _store(db)
    deadline = time.monotonic() + timeout
    try:
        while True:
            meeting = store.get(meeting_id)
            if not meeting.info.in_progress or time.monotonic() > deadline:
                return meeting
            time.sleep(0.05)
    finally:
        store.close()


def test_a_recorded_sdk_session_keeps_every_final_with_its_times(recording_server, db, speech):
    pcm = at_24k(np.concatenate(speech))
    events = asyncio.run(closed_transcription(recording_server.url, KEY, {"record": "1"}, pcm))
    created = events[0]
    assert created.type == "session.created"
    meeting_id = created.session.mooer["meeting_id"]
    updated = next(e for e in events if e.type == "session.updated")
    assert updated.session.mooer["meeting_id"] == meeting_id
    finals = [e for e in events if e.type == FINAL]
    assert len(finals) >= len(speech)
    starts = {e.item_id: e.audio_start_ms for e in events if e.type.endswith("speech_started")}
    stops = {e.item_id: e.audio_end_ms for e in events if e.type.endswith("speech_stopped")}

    meeting = _ended(db, meeting_id)
    assert not meeting.info.in_progress and meeting.info.protocol == "realtime"
    assert [(s.item_id, s.transcript) for s in meeting.segments] == [
        (f.item_id, f.transcript) for f in finals
    ]
    for s in meeting.segments:
        assert (s.start_ms, s.end_ms) == (starts[s.item_id], stops[s.item_id])
        assert meeting.info.started_at <= s.wall_start <= s.wall_end <= meeting.info.ended_at
        assert s.translation is None
    # recorded finals are labelled: the two AISHELL recordings are one speaker (S0764)
    assert {s.speaker for s in meeting.segments} == {f.speaker for f in finals} == {LABELLED}

    # the meetings API, behind the key
    base = f"{recording_server.url}/v1/meetings"
    assert httpx.get(base).status_code == 401
    listed = httpx.get(base, headers=AUTH).json()["data"]
    assert meeting_id in [m["id"] for m in listed]
    word = finals[0].transcript.split()[0]
    found = httpx.get(base, params={"search": word}, headers=AUTH).json()["data"]
    assert meeting_id in [m["id"] for m in found]
    one = httpx.get(f"{base}/{meeting_id}", headers=AUTH).json()
    assert [s["start_ms"] for s in one["segments"]] == [s.start_ms for s in meeting.segments]
    srt = httpx.get(f"{base}/{meeting_id}/export", params={"format": "srt", "name": "minutes.srt"},
                    headers=AUTH)  # fmt: skip
    assert srt.status_code == 200 and "minutes.srt" in srt.headers["content-disposition"]
    assert srt.headers["x-mooer-meeting-status"] == "ended"
    assert srt.text.startswith("1\n") and finals[-1].transcript in srt.text

    # bad requests get clear errors
    def error(response, status):
        assert response.status_code == status, response.text
        return response.json()["error"]

    assert error(httpx.get(f"{base}/mtg_00000000000000000000", headers=AUTH), 404)["code"] == (
        "meeting_not_found"
    )
    assert error(httpx.get(f"{base}/{meeting_id}/export?format=doc", headers=AUTH), 400)[
        "param"] == "format"  # fmt: skip
    assert error(httpx.get(f"{base}/{meeting_id}/export?name=../../x.srt", headers=AUTH), 400)[
        "param"] == "name"  # fmt: skip
    assert error(httpx.get(base, params={"limit": "0"}, headers=AUTH), 400)["param"] == "limit"
    sneaky = httpx.get(base, params={"search": "' OR '1'='1"}, headers=AUTH)
    assert sneaky.status_code == 200 and sneaky.json()["data"] == []

    assert httpx.delete(f"{base}/{meeting_id}", headers=AUTH).json()["deleted"] is True
    assert error(httpx.get(f"{base}/{meeting_id}", headers=AUTH), 404)["code"] == (
        "meeting_not_found"
    )


def test_funasr_asks_with_record_and_its_finals_carry_times(recording_server, db, speech):
    from mooer.server.pcm import encode_pcm16

    async def run():
        url = f"ws://{recording_server.host}:{recording_server.port}/funasr?api_key={KEY}"
        async with websockets.connect(url) as ws:
            config = {"mode": "offline", "wav_name": "talk", "is_speaking": True,
                      "audio_fs": 16000, "record": True}  # fmt: skip
            await ws.send(json.dumps(config))
            await ws.send(encode_pcm16(speech[0]))
            await ws.send(json.dumps({"is_speaking": False}))
            replies = []
            while not replies or not replies[-1].get("is_final"):
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return replies

    replies = asyncio.run(run())
    finals = [r for r in replies if r["text"]]
    assert finals and all(r["mode"] == "offline" for r in finals)
    stamps = [r["stamp_sents"][0] for r in finals]
    for reply, sentence in zip(finals, stamps):
        assert sentence["text_seg"] == reply["text"] and 0 <= sentence["start"] < sentence["end"]
    meeting = _ended(db, replies[-1]["meeting_id"])
    assert meeting.info.protocol == "funasr"
    assert [(k.transcript, k.start_ms, k.end_ms) for k in meeting.segments] == [
        (s["text_seg"], s["start"], s["end"]) for s in stamps
    ]
    if LABELLED:
        assert {s["spk"] for s in stamps} == {0}
        assert {k.speaker for k in meeting.segments} == {LABELLED}


def test_translation_sessions_ask_with_the_query_and_learn_the_id(recording_server, db):
    async def run():
        url = (f"ws://{recording_server.host}:{recording_server.port}/v1/realtime/translations"
               f"?model=mooer&record=1&api_key={KEY}")  # fmt: skip
        async with websockets.connect(url) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await ws.send(json.dumps({"type": "session.close"}))
            while json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] != "session.closed":
                pass
        return created

    created = asyncio.run(run())
    meeting = _ended(db, created["session"]["mooer"]["meeting_id"])
    assert meeting.info.protocol == "translation" and not meeting.info.in_progress
    assert meeting.segments == []


def test_a_failing_store_stops_recording_and_the_session_goes_on(start_server, speech, offline):
    port = free_port()  # a port where nothing listens: the store is unreachable
    server = start_server(meetings_db=f"postgresql+psycopg://mooer:pw@127.0.0.1:{port}/m")
    session = {
        "type": "transcription",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000},
                            "turn_detection": None}},
        "mooer": {"task": "asr"},
    }  # fmt: skip

    async def run():
        url = f"ws://{server.host}:{server.port}/v1/realtime?intent=transcription&record=1"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            from mooer.server.pcm import encode_pcm16

            await ws.send(encode_pcm16(speech[0]))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            events = []
            while not events or events[-1]["type"] != FINAL:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
            return events

    events = asyncio.run(run())
    assert "meeting_id" in events[0]["session"]["mooer"]
    stopped = [e["error"] for e in events if e["type"] == "error"]
    assert [e["code"] for e in stopped] == ["recording_stopped"]
    assert "the session goes on" in stopped[0]["message"] and "pw@" not in stopped[0]["message"]
    assert events[-1]["transcript"] == offline([speech[0]])[0].text


@pytest.mark.slow  # a real `mooer serve` process: most of its time is importing torch
def test_kill_9_during_a_recorded_meeting_loses_no_final_a_client_heard(tmp_path, capsys):
    """``mooer serve --record`` (the demo model) killed with SIGKILL while three sessions stream:
    every final the clients received is in the store, which opens cleanly afterwards."""
    import signal
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    from mooer.audio import SAMPLE_RATE, load_audio
    from mooer.cli import main

    examples = Path(__file__).resolve().parents[2] / "examples" / "audio"
    pause = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    clips = [load_audio(examples / n) for n in ("zh_weather.wav", "en_directions.wav")]
    talk = at_24k(np.concatenate([part for c in clips * 3 for part in (pause, c, pause, pause)]))
    port = free_port()
    db = tmp_path / "meetings.db"
    command = [
        sys.executable,
        "-m",
        "mooer.cli",
        "serve",
        "--record",
        "--db",
        str(db),
        "--port",
        str(port),
        "--beam",
        "1",
        "--threads",
        "1",
        "--log-level",
        "warning",
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)

        async def session(kept: dict, heard_one: asyncio.Event) -> None:
            url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription"
            async with websockets.connect(url, max_size=None) as ws:
                sender = asyncio.ensure_future(_send_paced(ws, talk))
                try:
                    async for message in ws:
                        event = json.loads(message)
                        if event["type"] == "session.created":
                            kept["id"] = event["session"]["mooer"]["meeting_id"]
                        elif event["type"] == FINAL:
                            kept["heard"].append((event["item_id"], event["transcript"]))
                            heard_one.set()
                except websockets.ConnectionClosed:
                    pass
                finally:
                    sender.cancel()

        async def meeting():
            sessions = [{"heard": []} for _ in range(3)]
            flags = [asyncio.Event() for _ in sessions]
            tasks = [asyncio.ensure_future(session(s, f)) for s, f in zip(sessions, flags)]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 120)
            server.send_signal(signal.SIGKILL)  # mid-meeting: audio is still arriving
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
            return sessions

        sessions = asyncio.run(meeting())
    finally:
        server.kill()
        server.wait(30)
    assert server.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as conn:  # the file is sound after the kill
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert main(["meetings", "list", "--json", "--db", str(db)]) == 0  # as after a restart
    meetings = {m["id"]: m for m in map(json.loads, capsys.readouterr().out.splitlines())}
    assert sorted(meetings) == sorted(s["id"] for s in sessions) and len(meetings) == 3
    assert all(m["in_progress"] for m in meetings.values())  # the server never ended them
    store = _store(str(db))
    try:
        for s in sessions:
            kept = {(k.item_id, k.transcript) for k in store.get(s["id"]).segments}
            assert s["heard"] and set(s["heard"]) <= kept
    finally:
        store.close()


async def _send_paced(ws, pcm: bytes, chunk: int = 9600, pace_s: float = 0.05) -> None:
    """24 kHz PCM16 in 200 ms binary frames, 4x faster than real time."""
    for i in range(0, len(pcm), chunk):
        await ws.send(pcm[i : i + chunk])
        await asyncio.sleep(pace_s)


def test_a_chat_keeps_its_replies_and_an_echoed_meeting_id_is_accepted(recording_server, db,
                                                                         speech):  # fmt: skip
    """The id read back from session.created may be sent again in a session.update; a different
    one is refused. The assistant's replies are segments of their own (speaker "assistant")."""

    async def run():
        url = (f"ws://{recording_server.host}:{recording_server.port}/v1/realtime"
               f"?model=mooer&record=1&api_key={KEY}")  # fmt: skip
        async with websockets.connect(url, max_size=None) as ws:
            created = json.loads(await asyncio.wait_for(ws.recv(), 30))
            session = {"type": "realtime", "output_modalities": ["text"],
                       "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                       "mooer": {"task": "chat", **created["session"]["mooer"]}}  # fmt: skip
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            changed = {**session, "mooer": {"meeting_id": "mtg_00000000000000000000"}}
            await ws.send(json.dumps({"type": "session.update", "session": changed}))
            from mooer.server.pcm import encode_pcm16

            await ws.send(encode_pcm16(speech[0]))
            events = []
            while not events or events[-1]["type"] != "response.done":
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 90)))
            await ws.send(json.dumps({"type": "session.close"}))
            while events[-1]["type"] != "session.closed":
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 90)))
        return created, events

    created, events = asyncio.run(run())
    meeting_id = created["session"]["mooer"]["meeting_id"]
    updated = next(e for e in events if e["type"] == "session.updated")
    assert updated["session"]["mooer"] == {**updated["session"]["mooer"], "task": "chat",
                                           "meeting_id": meeting_id}  # fmt: skip
    refused = [e["error"] for e in events if e["type"] == "error"]
    assert [e["param"] for e in refused] == ["session.mooer.meeting_id"]
    assert meeting_id in refused[0]["message"]
    heard = next(e["transcript"] for e in events if e["type"] == FINAL)
    reply = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert reply
    meeting = _ended(db, meeting_id)
    kept = [(s.speaker, s.transcript) for s in meeting.segments]
    assert kept[:2] == [(LABELLED, heard), ("assistant", reply)]
    user, answer = meeting.segments[:2]
    assert user.end_ms <= answer.start_ms <= answer.end_ms
