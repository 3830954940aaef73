"""The meeting store, the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3

import pytest

from mooer.errors import ConfigError

sa = pytest.importorskip("sqlalchemy", reason="the meetings extra (SQLAlchemy) is not installed")
from mooer.meetings.store import (  # noqa: E402
    MeetingStore,
    NotFound,
    Segment,
    StoreError,
    UnknownMeeting,
    resolve_url,
)

T0 = 1_700_000_000.0  # a wall-clock start, seconds since the epoch


def seg(item: str, start: int, end: int, **text) -> Segment:
    return Segment(item, start, end, T0 + start / 1000, T0 + end / 1000, **text)


def test_segments_are_kept_in_stream_order_with_times_and_translations(store):
    meeting = store.create("realtime", T0)
    store.keep(meeting, seg("item_b", 4000, 5200, transcript="second"))
    store.keep(meeting, seg("item_a", 250, 3100, transcript="今天天气不错", language="zh"))
    # the translation of an item arrives after its transcript: it fills in the same segment
    store.keep(meeting, seg("item_a", 250, 3100, translation="nice weather today"))
    kept = store.get(meeting)
    assert [s.item_id for s in kept.segments] == ["item_a", "item_b"]
    first = kept.segments[0]
    assert (first.start_ms, first.end_ms) == (250, 3100)
    assert first.wall_start == pytest.approx(T0 + 0.25) and first.wall_end == pytest.approx(
        T0 + 3.1
    )
    assert (first.transcript, first.translation, first.language) == (
        "今天天气不错", "nice weather today", "zh"
    )  # fmt: skip
    assert first.speaker is None
    assert kept.info.in_progress and kept.info.segment_count == 2
    assert kept.info.duration_ms == 5200
    store.end(meeting, T0 + 10)
    assert not store.get(meeting).info.in_progress


def test_listing_is_newest_first_and_search_takes_text_literally(store):
    old = store.create("funasr", T0)
    new = store.create("realtime", T0 + 60)
    store.keep(old, seg("i1", 0, 1000, transcript="Budget: 50% off_site"))
    store.keep(new, seg("i1", 0, 2000, transcript="x'); DROP TABLE meetings; --"))
    store.keep(new, seg("i2", 2000, 3000, translation="The BUDGET again"))
    listed = store.list()
    assert [m.id for m in listed] == [new, old]
    assert [(m.segment_count, m.duration_ms) for m in listed] == [(2, 3000), (1, 1000)]
    assert {m.id for m in store.list(search="budget")} == {old, new}  # any case, translations too
    assert [m.id for m in store.list(search="50%")] == [old]
    assert store.list(search="5_%") == []  # % and _ are not wildcards
    assert [m.id for m in store.list(search="off_site")] == [old]
    assert [m.id for m in store.list(search="'); DROP TABLE")] == [new]
    assert store.list(search="nothing like it") == []
    assert [m.id for m in store.list(search="0%")] == [old]  # shorter than a trigram
    assert [m.id for m in store.list(search="_")] == [old]
    assert [m.id for m in store.list(search="'")] == [new]
    assert len(store.list(limit=1)) == 1
    assert store.get(old).segments[0].transcript == "Budget: 50% off_site"  # the table is there


def test_unknown_ids_and_deletion(store):
    meeting = store.create("realtime", T0)
    store.keep(meeting, seg("i1", 0, 1000, transcript="a"))
    for bad in ("mtg_00000000000000000000", "' OR 1=1 --", "../etc/passwd", ""):
        with pytest.raises(UnknownMeeting):
            store.get(bad)
        with pytest.raises(UnknownMeeting):
            store.delete(bad)
    store.delete(meeting)
    with pytest.raises(UnknownMeeting, match=meeting):
        store.get(meeting)
    assert store.list() == []
    with store.engine.connect() as conn:  # its segments went with it
        assert conn.execute(sa.text("SELECT count(*) FROM segments")).scalar() == 0


def test_renaming_a_speaker_changes_every_segment_of_that_meeting_only(store):
    meeting, other = store.create("realtime", T0), store.create("realtime", T0)
    store.keep(meeting, seg("i1", 0, 1000, transcript="a", speaker="speaker 1"))
    store.keep(meeting, seg("i2", 1000, 2000, transcript="b", speaker="speaker 2"))
    store.keep(meeting, seg("i3", 2000, 3000, transcript="c", speaker="speaker 1"))
    store.keep(other, seg("i1", 0, 1000, transcript="a", speaker="speaker 1"))
    name = "<b>Ana</b> & 'x'); DROP TABLE segments; --"  # a name is data, stored as given
    assert store.rename_speaker(meeting, "speaker 1", name) == 2
    assert [s.speaker for s in store.get(meeting).segments] == [name, "speaker 2", name]
    assert store.get(other).segments[0].speaker == "speaker 1"
    assert store.rename_speaker(meeting, "speaker 2", name) == 1  # two speakers become one
    with pytest.raises(NotFound, match="no speaker 'speaker 2'"):
        store.rename_speaker(meeting, "speaker 2", "Bo")
    for bad in ("", " Bo", "x" * 65, "line\nbreak", None):
        with pytest.raises(ConfigError, match="speaker name"):
            store.rename_speaker(meeting, name, bad)
    with pytest.raises(UnknownMeeting):
        store.rename_speaker("mtg_00000000000000000000", "speaker 1", "Bo")


def test_segment_audio_is_kept_with_its_segment_and_deleted_with_its_meeting(store):
    meeting = store.create("realtime", T0)
    flac = b"fLaC" + bytes(range(256)) * 8
    store.keep(meeting, seg("item_1", 0, 1000, transcript="a"), flac)
    store.keep(meeting, seg("item_1", 0, 1000, translation="b"))  # the translation: audio stays
    store.keep(meeting, seg("item_2", 1000, 2000, transcript="c"))  # kept without audio
    assert store.audio(meeting, "item_1") == flac
    with pytest.raises(NotFound, match="no audio of segment item_2"):
        store.audio(meeting, "item_2")
    for bad in ("../item_1", "item_1/x", "' OR 1=1 --", ""):
        with pytest.raises(NotFound, match="not a segment id"):
            store.audio(meeting, bad)
    with pytest.raises(UnknownMeeting):
        store.audio("mtg_00000000000000000000", "item_1")
    store.delete(meeting)
    with store.engine.connect() as conn:  # its audio went with it
        assert conn.execute(sa.text("SELECT count(*) FROM segment_audio")).scalar() == 0


def test_search_has_a_trigram_index(store, store_url):
    store.open()
    with store.engine.connect() as conn:
        if store.is_sqlite:  # an FTS5 table with the trigram tokenizer
            sql = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = "
                                       "'segments_fts'")).scalar()  # fmt: skip
            assert "tokenize='trigram'" in sql
        else:
            indexes = conn.execute(sa.text("SELECT indexdef FROM pg_indexes WHERE tablename = "
                                           "'segments'")).scalars().all()  # fmt: skip
            assert any("gin_trgm_ops" in i for i in indexes), indexes


def test_a_sqlite_store_made_before_the_index_gets_it_with_its_old_segments(tmp_path):
    path = tmp_path / "meetings.db"
    store = MeetingStore(str(path))
    meeting = store.create("realtime", T0)
    store.keep(meeting, seg("i1", 0, 1000, transcript="Quarterly budget"))
    store.close()
    with sqlite3.connect(path) as conn:  # as an older mooer left it
        for trigger in ("insert", "update", "delete"):
            conn.execute(f"DROP TRIGGER segments_fts_{trigger}")
        conn.execute("DROP TABLE segments_fts")
    store = MeetingStore(str(path))
    try:
        assert [m.id for m in store.list(search="budget")] == [meeting]
        store.keep(meeting, seg("i1", 0, 1000, translation="季度预算"))  # an update, indexed too
        assert [m.id for m in store.list(search="季度预算")] == [meeting]
        store.delete(meeting)
        assert store.list(search="budget") == []
    finally:
        store.close()


def test_a_second_store_on_the_same_database_sees_the_meetings(store, store_url):
    meeting = store.create("translation", T0)
    store.keep(meeting, seg("i1", 0, 900, translation="hello"))
    other = MeetingStore(store_url)
    try:
        assert other.get(meeting).segments[0].translation == "hello"
    finally:
        other.close()


def test_an_unreachable_server_is_a_store_error_without_the_password():
    with socket_closed() as port:
        store = MeetingStore(f"postgresql+psycopg://mooer:s3cret@127.0.0.1:{port}/meetings")
    with pytest.raises(StoreError, match="listing meetings failed") as caught:
        store.list()
    assert "s3cret" not in str(caught.value) and "SELECT" not in str(caught.value)


def test_a_locked_sqlite_file_is_a_store_error(tmp_path):
    path = tmp_path / "meetings.db"
    store = MeetingStore(str(path), busy_timeout_s=0.1).open()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            store.create("realtime", T0)
    finally:
        holder.rollback()
        holder.close()
    store.create("realtime", T0)  # works again once the lock is gone
    assert len(store.list()) == 1


def test_urls_and_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert resolve_url(None).database == str(tmp_path / "mooer" / "meetings.db")
    assert resolve_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert resolve_url("notes.db").database.endswith("notes.db")
    for bad in ("mysql://u@h/db", "sqlite://"):
        with pytest.raises(ConfigError, match="--db"):
            resolve_url(bad)
    MeetingStore(None).open().close()  # the default store makes its folder
    assert (tmp_path / "mooer" / "meetings.db").exists()


class socket_closed:
    """A loopback port with nothing listening."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()
