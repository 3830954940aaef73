"""A connection's engine events become stored segments with meeting-wide times."""

from __future__ import annotations

import pytest

from mooer.agent import events as ev

pytest.importorskip("sqlalchemy", reason="the meetings extra (SQLAlchemy) is not installed")
from mooer.meetings.recording import Recording  # noqa: E402
from mooer.meetings.store import MeetingStore  # noqa: E402


def test_sessions_one_after_another_keep_one_timeline(tmp_path):
    store = MeetingStore(str(tmp_path / "m.db"))
    clock = {"now": 1000.0, "received_ms": 0}
    recording = Recording(store, "realtime", lambda: clock["received_ms"], lambda: clock["now"])
    recording.begin()

    def at(now: float, received_ms: int, event: ev.Event, offset_ms: int = 0) -> None:
        clock.update(now=now, received_ms=received_ms)
        recording.observe(event, offset_ms)

    # the first engine session: a voice-activity turn, transcript then translation
    at(1000.6, 600, ev.SpeechStarted("i1", 500))
    at(1003.0, 3000, ev.SpeechStopped("i1", 2500))
    at(1003.0, 3000, ev.Committed("i1"))
    at(1003.4, 3400, ev.Transcript("i1", "hello", "en", speaker=1))
    at(1003.5, 3400, ev.Translation("i1", "你好", speaker=1))
    # a second engine session (after a session.update) began at 10 s of the connection's audio
    at(1010.5, 10_400, ev.SpeechStarted("i2", 300), offset_ms=10_000)
    at(1011.5, 11_400, ev.SpeechStopped("i2", 1300), offset_ms=10_000)
    at(1011.9, 11_400, ev.Transcript("i2", "again"), offset_ms=10_000)
    # a manual turn (no voice activity events) runs from the last segment's end to the commit
    at(1014.0, 14_000, ev.Committed("i3"), offset_ms=10_000)
    at(1014.2, 14_000, ev.Transcript("i3", "manual"), offset_ms=10_000)
    recording.end()

    meeting = store.get(recording.meeting_id)
    got = [(s.item_id, s.start_ms, s.end_ms, s.transcript, s.translation) for s in meeting.segments]
    assert got == [
        ("i1", 500, 2500, "hello", "你好"),
        ("i2", 10_300, 11_300, "again", None),
        ("i3", 11_300, 14_000, "manual", None),
    ]
    first, second, _ = meeting.segments
    # wall clock: when that audio arrived (real-time arrival assumed), never before the start
    assert first.wall_start == pytest.approx(1000.5) and first.wall_end == pytest.approx(1002.5)
    assert second.wall_start == pytest.approx(1010.4) and second.wall_end == pytest.approx(1011.4)
    assert first.language == "en"
    assert [s.speaker for s in meeting.segments] == ["speaker 2", None, None]  # labelled or not
    assert meeting.info.started_at == 1000.0 and meeting.info.ended_at == 1014.2
    store.close()


def test_kept_audio_is_the_segment_cut_from_what_the_connection_received(tmp_path):
    import io

    import numpy as np
    import soundfile as sf

    from mooer.audio import SAMPLE_RATE
    from mooer.meetings.tape import AudioTape

    store = MeetingStore(str(tmp_path / "m.db"))
    received = {"ms": 0}
    tape = AudioTape()
    recording = Recording(store, "realtime", lambda: received["ms"], tape=tape)
    recording.begin()
    ramp = np.arange(4 * SAMPLE_RATE, dtype=np.float32) / (8 * SAMPLE_RATE)  # 4 s, each distinct
    for piece in np.split(ramp, 8):  # half a second a frame, as a client sends it
        tape.append(piece)
        received["ms"] += 500
    recording.observe(ev.SpeechStarted("i1", 1250), 0)
    recording.observe(ev.SpeechStopped("i1", 2750), 0)
    recording.observe(ev.Transcript("i1", "hello"), 0)
    recording.observe(ev.Translation("i1", "你好"), 0)
    audio, rate = sf.read(io.BytesIO(store.audio(recording.meeting_id, "i1")), dtype="float32")
    assert rate == SAMPLE_RATE and audio.shape == (int(1.5 * SAMPLE_RATE),)
    want = ramp[int(1.25 * SAMPLE_RATE) : int(2.75 * SAMPLE_RATE)]
    assert np.abs(audio - want).max() < 1e-4  # PCM16, losslessly compressed
    store.close()


def test_a_chat_reply_is_a_segment_of_the_assistant(tmp_path):
    from mooer.meetings.recording import ASSISTANT

    store = MeetingStore(str(tmp_path / "m.db"))
    clock = {"now": 1000.0, "received_ms": 0}
    recording = Recording(store, "realtime", lambda: clock["received_ms"], lambda: clock["now"])
    recording.begin()

    def at(now: float, received_ms: int, event: ev.Event) -> None:
        clock.update(now=now, received_ms=received_ms)
        recording.observe(event, 0)

    at(1000.5, 500, ev.SpeechStarted("u1", 400))
    at(1002.0, 2000, ev.SpeechStopped("u1", 1900))
    at(1002.2, 2200, ev.Transcript("u1", "what time is it"))
    at(1002.3, 2300, ev.ResponseStarted("resp_1", "u1", "item_reply"))
    at(1004.0, 4000, ev.ResponseDone("resp_1", "it is noon", "completed"))
    at(1005.0, 5000, ev.ResponseStarted("resp_2", None, "item_empty"))
    at(1005.1, 5100, ev.ResponseDone("resp_2", "", "cancelled"))  # nothing said: not kept
    segments = store.get(recording.meeting_id).segments
    assert [(s.item_id, s.speaker, s.transcript, s.start_ms, s.end_ms) for s in segments] == [
        ("u1", None, "what time is it", 400, 1900),
        ("item_reply", ASSISTANT, "it is noon", 2300, 4000),
    ]
    assert (segments[1].wall_start, segments[1].wall_end) == (1002.3, 1004.0)
    store.close()
