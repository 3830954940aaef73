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
