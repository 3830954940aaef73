"""``mooer meetings list|show|export|rename|delete``: plain parameters in, an exit status out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mooer.errors import ConfigError
from mooer.meetings import open_store
from mooer.meetings.export import export_format, export_name, info_dict, render, wall


def list_main(db: str | None = None, search: str | None = None, limit: int = 100,
              as_json: bool = False) -> int:  # fmt: skip
    """One line per meeting, newest first (``as_json``: one JSON object per line)."""
    store = open_store(db)
    try:
        found = store.list(search, limit)
    finally:
        store.close()
    for info in found:
        if as_json:
            print(json.dumps(info_dict(info), ensure_ascii=False))
            continue
        status = "in progress" if info.in_progress else "ended"
        print(f"{info.id}\t{wall(info.started_at)}\t{info.protocol}\t"
              f"{info.segment_count} segments\t{info.duration_ms / 1000:.1f} s\t{status}")  # fmt: skip
    if not found and not as_json:
        print("no meetings" + (f" holding {search!r}" if search else ""), file=sys.stderr)
    return 0


def export_main(meeting_id: str, fmt: str = "txt", db: str | None = None,
                name: str | None = None, folder: str = ".") -> int:  # fmt: skip
    """Print ``meeting_id`` in ``fmt``, or write it to ``folder/name`` (a bare file name)."""
    fmt = export_format(fmt)
    if name is not None:
        name = export_name(name, meeting_id, fmt)
    store = open_store(db)
    try:
        meeting = store.get(meeting_id)
    finally:
        store.close()
    text = render(meeting, fmt)
    if name is None:
        sys.stdout.write(text)
        return 0
    path = Path(folder) / name
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the export to {path}: {exc}") from exc
    note = " (in progress: what is stored so far)" if meeting.info.in_progress else ""
    print(f"wrote {path}{note}", file=sys.stderr)
    return 0


def rename_main(meeting_id: str, old: str, new: str, db: str | None = None) -> int:
    store = open_store(db)
    try:
        changed = store.rename_speaker(meeting_id, old, new)
    finally:
        store.close()
    print(f"renamed {old!r} to {new!r} in {changed} segment(s) of {meeting_id}", file=sys.stderr)
    return 0


def delete_main(meeting_id: str, db: str | None = None) -> int:
    store = open_store(db)
    try:
        store.delete(meeting_id)
    finally:
        store.close()
    print(f"deleted {meeting_id}", file=sys.stderr)
    return 0
