"""Kept live transcripts: a meeting is a recorded session's final segments, with their times.

``store`` keeps them (SQLite or PostgreSQL), ``recording`` turns a live session's events into
segments, ``export`` writes a meeting as SRT, WebVTT, text, JSON or Markdown. SQLAlchemy is an
optional dependency (``pip install 'mooer[meetings]'``): ``open_store`` says so when it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mooer.errors import ConfigError

if TYPE_CHECKING:
    from mooer.meetings.store import MeetingStore


def open_store(db: str | None = None, **options: float) -> MeetingStore:
    """The store at ``db`` (a URL or a SQLite file; None: the default file), not yet connected."""
    try:
        from mooer.meetings.store import MeetingStore
    except ImportError as exc:
        raise ConfigError(
            f"keeping meetings needs SQLAlchemy ({exc}): pip install 'mooer[meetings]'"
        ) from exc
    return MeetingStore(db, **options)
