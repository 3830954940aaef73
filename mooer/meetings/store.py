"""Where meetings are kept: SQLite by default, PostgreSQL by URL, through one SQLAlchemy path.

Each write is its own transaction, so a killed server loses at most the segment being written.
SQLite runs in WAL mode with full syncs (a reader never blocks the writer; a commit is on disk
before the client hears the final). Every failure of the database surfaces as ``StoreError``
naming the store (password hidden) and the cause, never the SQL or its parameters.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mooer.errors import ConfigError, MooerError

ID_PREFIX = "mtg_"
MEETING_ID = re.compile(r"mtg_[0-9a-f]{20}")
ITEM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # what the protocols' item ids are made of
MAX_SPEAKER_CHARS = 64  # the speaker column's width
BUSY_TIMEOUT_S = 5.0  # SQLite: how long a write waits for another writer's lock
CONNECT_TIMEOUT_S = 5  # PostgreSQL: how long opening a connection may take
DRIVERS = {"sqlite": "sqlite", "sqlite+pysqlite": "sqlite", "postgresql": "postgresql+psycopg",
           "postgres": "postgresql+psycopg", "postgresql+psycopg": "postgresql+psycopg"}  # fmt: skip


class StoreError(MooerError):
    """The meeting store could not do what was asked (unreachable, locked, full, corrupt)."""


class UnknownMeeting(StoreError):
    """No meeting has this id."""


class NotFound(StoreError):
    """The meeting exists but holds no such speaker, or no audio for that segment."""


log = logging.getLogger("mooer.meetings")


@dataclass(frozen=True)
class Segment:
    """One final utterance. Stream times count from the session's first sample (ms); wall
    times are seconds since the epoch (UTC)."""

    item_id: str
    start_ms: int
    end_ms: int
    wall_start: float
    wall_end: float
    transcript: str | None = None
    translation: str | None = None
    speaker: str | None = None  # None until speakers are labelled
    language: str | None = None


@dataclass(frozen=True)
class MeetingInfo:
    """A meeting without its segments: what a listing shows."""

    id: str
    protocol: str
    started_at: float  # seconds since the epoch (UTC)
    ended_at: float | None  # None: still recording, or its server stopped without ending it
    segment_count: int = 0
    duration_ms: int = 0  # end of the last segment

    @property
    def in_progress(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True)
class Meeting:
    info: MeetingInfo
    segments: list[Segment] = field(default_factory=list)


def new_meeting_id() -> str:
    return ID_PREFIX + secrets.token_hex(10)


def default_url() -> str:
    """``$XDG_DATA_HOME/mooer/meetings.db`` (``~/.local/share`` when the variable is unset)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'mooer' / 'meetings.db'}"


def resolve_url(db: str | None) -> URL:
    """``--db`` as given (a URL, a file path, or None for the default) -> a SQLAlchemy URL."""
    text = db or default_url()
    if "://" not in text:
        text = f"sqlite:///{Path(text).expanduser().resolve()}"
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise ConfigError(f"--db {text!r}: not a database URL ({exc})") from exc
    driver = DRIVERS.get(url.drivername)
    if driver is None:
        raise ConfigError(
            f"--db: the {url.drivername!r} backend is not supported: use a SQLite file "
            "(sqlite:///PATH) or PostgreSQL (postgresql+psycopg://USER@HOST/DB)"
        )
    if driver == "sqlite" and not url.database:
        raise ConfigError("--db: a SQLite store needs a file (sqlite:///PATH), not memory")
    return url.set(drivername=driver)


metadata = sa.MetaData()
meetings = sa.Table(
    "meetings",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("protocol", sa.String(32), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    # kept up to date by each new segment, so a listing reads no segments
    sa.Column("segment_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("duration_ms", sa.Integer, nullable=False, server_default="0"),
    sa.Index("meetings_started", "started_at"),
)
segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("meeting_id", sa.String(32), sa.ForeignKey("meetings.id"), nullable=False),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("start_ms", sa.Integer, nullable=False),
    sa.Column("end_ms", sa.Integer, nullable=False),
    sa.Column("wall_start", sa.Float, nullable=False),
    sa.Column("wall_end", sa.Float, nullable=False),
    sa.Column("speaker", sa.String(64)),
    sa.Column("transcript", sa.Text),
    sa.Column("translation", sa.Text),
    sa.Column("language", sa.String(8)),
    sa.Column("search_text", sa.Text, nullable=False),  # transcript and translation, lower case
    sa.UniqueConstraint("meeting_id", "item_id", name="segments_item"),
    sa.Index("segments_meeting", "meeting_id", "start_ms"),
)
# A segment's audio (``mooer serve --record-audio``): FLAC, 16 kHz mono, in the database itself
# so that servers sharing a PostgreSQL store can all play it, and a deletion is one transaction.
segment_audio = sa.Table(
    "segment_audio",
    metadata,
    sa.Column("meeting_id", sa.String(32), sa.ForeignKey("meetings.id"), primary_key=True),
    sa.Column("item_id", sa.String(64), primary_key=True),
    sa.Column("flac", sa.LargeBinary, nullable=False),
)
# Search's trigram index turns a scan for '%...%' into an index lookup, for searches of at least
# TRIGRAM characters (a two-character Mandarin word has no trigram). PostgreSQL: pg_trgm's GIN
# index on the column. SQLite: an FTS5 table with the trigram tokenizer over the column, kept up
# to date by triggers in each write's own transaction.
TRIGRAM = 3
TRIGRAM_INDEX = ("CREATE INDEX IF NOT EXISTS segments_search_trgm ON segments "
                 "USING gin (search_text gin_trgm_ops)")  # fmt: skip
SQLITE_FTS = "segments_fts"
SQLITE_FTS_SCHEMA = (
    f"CREATE VIRTUAL TABLE {SQLITE_FTS} USING fts5(search_text, content='segments', "
    "content_rowid='id', tokenize='trigram')",
    f"CREATE TRIGGER segments_fts_insert AFTER INSERT ON segments BEGIN INSERT INTO "
    f"{SQLITE_FTS}(rowid, search_text) VALUES (new.id, new.search_text); END",
    f"CREATE TRIGGER segments_fts_update AFTER UPDATE OF search_text ON segments BEGIN "
    f"INSERT INTO {SQLITE_FTS}({SQLITE_FTS}, rowid, search_text) VALUES ('delete', old.id, "
    f"old.search_text); INSERT INTO {SQLITE_FTS}(rowid, search_text) VALUES (new.id, "
    "new.search_text); END",
    f"CREATE TRIGGER segments_fts_delete AFTER DELETE ON segments BEGIN INSERT INTO "
    f"{SQLITE_FTS}({SQLITE_FTS}, rowid, search_text) VALUES ('delete', old.id, "
    "old.search_text); END",
    f"INSERT INTO {SQLITE_FTS}({SQLITE_FTS}) VALUES ('rebuild')",  # the segments kept before
)
fts = sa.table(SQLITE_FTS, sa.column("rowid", sa.Integer), sa.column(SQLITE_FTS))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


class MeetingStore:
    """The meetings in one database. Thread-safe; the schema is made on first use."""

    def __init__(self, db: str | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.url = resolve_url(db)
        self.where = self.url.render_as_string(hide_password=True)
        self.is_sqlite = self.url.drivername == "sqlite"
        if self.is_sqlite:
            self.engine: Engine = sa.create_engine(
                self.url, connect_args={"timeout": busy_timeout_s}
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            try:
                # prepare_threshold None: psycopg never prepares a repeated query, whose generic
                # plan could not use the trigram index (the search text is not known then)
                self.engine = sa.create_engine(
                    self.url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S,
                                            "prepare_threshold": None},
                    pool_pre_ping=True,
                )  # fmt: skip
            except ImportError as exc:
                raise ConfigError(
                    f"--db {self.where}: PostgreSQL needs psycopg 3 ({exc}): "
                    "pip install 'mooer[meetings]'"
                ) from exc
        self._ready = False
        self._indexed = False  # whether search has its trigram index
        self._lock = threading.Lock()

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sa.Connection]:
        """One transaction; a database failure becomes a ``StoreError`` naming ``action``."""
        try:
            self._prepare()
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise StoreError(f"meeting store {self.where}: {action} failed: {cause}") from exc

    def _prepare(self) -> None:
        with self._lock:
            if self._ready:
                return
            if self.is_sqlite:
                try:
                    Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"meeting store {self.where}: cannot create its folder: {exc}"
                    ) from exc
            metadata.create_all(self.engine)
            self._indexed = self._trigram_index()
            self._ready = True

    def _trigram_index(self) -> bool:
        """Make search's index where this database can have one (SQLite with FTS5's trigram
        tokenizer, PostgreSQL with the pg_trgm extension); without it search still works, by
        scanning the text. Whether there is one."""
        try:
            with self.engine.begin() as conn:
                if not self.is_sqlite:
                    conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
                    conn.execute(sa.text(TRIGRAM_INDEX))
                elif not sa.inspect(conn).has_table(SQLITE_FTS):
                    for statement in SQLITE_FTS_SCHEMA:
                        conn.execute(sa.text(statement))
        except SQLAlchemyError as exc:
            cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            log.warning("meeting store %s: search without a trigram index: %s", self.where, cause)
            return False
        return True

    def open(self) -> MeetingStore:
        """Connect and make the schema now (``mooer serve --record`` fails fast on a bad store)."""
        with self._transaction("opening"):
            pass
        return self

    def create(self, protocol: str, started_at: float, meeting_id: str | None = None) -> str:
        """A new meeting; its id."""
        meeting_id = meeting_id or new_meeting_id()
        row = {"id": meeting_id, "protocol": protocol, "started_at": started_at}
        with self._transaction("starting a meeting") as conn:
            conn.execute(meetings.insert().values(**row))
        return meeting_id

    def keep(self, meeting_id: str, segment: Segment, audio: bytes | None = None) -> None:
        """Store a segment, or fill in what a later final of the same item adds (a translation
        after its transcript): fields left None keep their stored value. ``audio`` (FLAC) is
        kept with a new segment."""
        values = {k: v for k, v in vars(segment).items() if v is not None}
        text = "\n".join(t.lower() for t in (segment.transcript, segment.translation) if t)
        where = (segments.c.meeting_id == meeting_id) & (segments.c.item_id == segment.item_id)
        added = segments.c.search_text + ("\n" + text)
        with self._transaction("keeping a segment") as conn:
            if conn.execute(segments.update().where(where).values(**values, search_text=added)
                            ).rowcount:  # fmt: skip
                return
            conn.execute(segments.insert().values(meeting_id=meeting_id, search_text=text,
                                                  **values))  # fmt: skip
            if audio is not None:
                conn.execute(segment_audio.insert().values(
                    meeting_id=meeting_id, item_id=segment.item_id, flac=audio))  # fmt: skip
            longer = meetings.c.duration_ms < segment.end_ms
            conn.execute(
                meetings.update()
                .where(meetings.c.id == meeting_id)
                .values(
                    segment_count=meetings.c.segment_count + 1,
                    duration_ms=sa.case((longer, segment.end_ms), else_=meetings.c.duration_ms),
                )
            )

    def end(self, meeting_id: str, ended_at: float) -> None:
        with self._transaction("ending a meeting") as conn:
            conn.execute(
                meetings.update().where(meetings.c.id == meeting_id).values(ended_at=ended_at)
            )

    def list(self, search: str | None = None, limit: int = 100) -> list[MeetingInfo]:
        """The newest meetings first; with ``search``, those where a transcript or translation
        holds that text (case-insensitive, taken literally: ``%`` and ``_`` are not wildcards)."""
        query = meetings.select().order_by(meetings.c.started_at.desc(), meetings.c.id).limit(limit)
        with self._transaction("listing meetings") as conn:
            if search:  # after the schema step, which says whether the index is there
                query = query.where(self._holding(search.lower()))
            return [_info(row) for row in conn.execute(query)]

    def _holding(self, needle: str) -> sa.ColumnElement[bool]:
        """Whether a meeting's segments' text holds ``needle``, taken literally."""
        if len(needle) >= TRIGRAM and self._indexed and self.is_sqlite:  # an FTS5 phrase
            phrase = '"' + needle.replace('"', '""') + '"'
            rows = sa.select(fts.c.rowid).where(fts.c[SQLITE_FTS].op("MATCH")(phrase))
            return meetings.c.id.in_(
                sa.select(segments.c.meeting_id).where(segments.c.id.in_(rows))
            )
        if len(needle) >= TRIGRAM or self.is_sqlite:  # PostgreSQL: pg_trgm serves LIKE
            found = segments.c.search_text.contains(needle, autoescape=True)
        else:  # shorter than a trigram: a scan of the text beats a scan of the whole index
            found = sa.func.strpos(segments.c.search_text, needle) > 0
        # per meeting, newest first, stopping at its first match: a common word is found at once
        return sa.exists().where((segments.c.meeting_id == meetings.c.id) & found)

    def get(self, meeting_id: str) -> Meeting:
        """A meeting with its segments in stream order; ``UnknownMeeting`` if there is none."""
        self._check_id(meeting_id)
        with self._transaction("reading a meeting") as conn:
            row = conn.execute(meetings.select().where(meetings.c.id == meeting_id)).first()
            if row is None:
                raise self._unknown(meeting_id)
            rows = conn.execute(
                segments.select()
                .where(segments.c.meeting_id == meeting_id)
                .order_by(segments.c.start_ms, segments.c.id)
            ).all()
        return Meeting(_info(row), [_segment(r) for r in rows])

    def rename_speaker(self, meeting_id: str, old: str, new: str) -> int:
        """Call speaker ``old`` ``new`` in every segment of a meeting (two names may become one);
        how many segments changed. ``NotFound`` if no segment has ``old``."""
        self._check_id(meeting_id)
        new = check_speaker(new)
        where = (segments.c.meeting_id == meeting_id) & (segments.c.speaker == old)
        with self._transaction("renaming a speaker") as conn:
            self._require(conn, meeting_id)
            changed = conn.execute(segments.update().where(where).values(speaker=new)).rowcount
        if not changed:
            raise NotFound(f"meeting {meeting_id} has no speaker {old!r}")
        return changed

    def audio(self, meeting_id: str, item_id: str) -> bytes:
        """A segment's audio as FLAC; ``NotFound`` if it was not kept."""
        self._check_id(meeting_id)
        if not isinstance(item_id, str) or not ITEM_ID.fullmatch(item_id):
            raise NotFound(f"{item_id!r} is not a segment id")
        where = (segment_audio.c.meeting_id == meeting_id) & (segment_audio.c.item_id == item_id)
        with self._transaction("reading a segment's audio") as conn:
            self._require(conn, meeting_id)
            flac = conn.execute(sa.select(segment_audio.c.flac).where(where)).scalar()
        if flac is None:
            raise NotFound(f"meeting {meeting_id} kept no audio of segment {item_id}")
        return flac

    def _require(self, conn: sa.Connection, meeting_id: str) -> None:
        found = conn.execute(sa.select(meetings.c.id).where(meetings.c.id == meeting_id)).first()
        if found is None:
            raise self._unknown(meeting_id)

    def delete(self, meeting_id: str) -> None:
        """Remove a meeting, its segments and their audio; ``UnknownMeeting`` if there is none."""
        self._check_id(meeting_id)
        with self._transaction("deleting a meeting") as conn:
            conn.execute(segment_audio.delete().where(segment_audio.c.meeting_id == meeting_id))
            conn.execute(segments.delete().where(segments.c.meeting_id == meeting_id))
            if conn.execute(meetings.delete().where(meetings.c.id == meeting_id)).rowcount == 0:
                raise self._unknown(meeting_id)

    def _check_id(self, meeting_id: str) -> None:
        if not isinstance(meeting_id, str) or not MEETING_ID.fullmatch(meeting_id):
            raise UnknownMeeting(
                f"{meeting_id!r} is not a meeting id (they look like mtg_ and 20 hex digits)"
            )

    def _unknown(self, meeting_id: str) -> UnknownMeeting:
        return UnknownMeeting(f"no meeting {meeting_id} in {self.where}")

    def close(self) -> None:
        self.engine.dispose()


def check_speaker(name: object) -> str:
    """A speaker's new name: 1..64 printable characters, no leading or trailing space."""
    if (
        not isinstance(name, str) or not name or name != name.strip()
        or len(name) > MAX_SPEAKER_CHARS or not name.isprintable()
    ):  # fmt: skip
        raise ConfigError(
            f"speaker name {name!r}: expected 1 to {MAX_SPEAKER_CHARS} printable characters, "
            "without leading or trailing spaces"
        )
    return name


def _info(row: sa.Row) -> MeetingInfo:
    m = row._mapping
    return MeetingInfo(m["id"], m["protocol"], m["started_at"], m["ended_at"],
                       m["segment_count"], m["duration_ms"])  # fmt: skip


def _segment(row: sa.Row) -> Segment:
    m = row._mapping
    return Segment(
        m["item_id"], m["start_ms"], m["end_ms"], m["wall_start"], m["wall_end"],
        m["transcript"], m["translation"], m["speaker"], m["language"],
    )  # fmt: skip
