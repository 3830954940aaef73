"""A meeting as a file: SRT, WebVTT, plain text, JSON or Markdown, with times and translation.

Subtitle cues carry the transcript with the translation on the next line; the text, JSON and
Markdown forms also give wall-clock times and speakers. A meeting that has not ended exports
what is stored so far and says so (a header line, or ``"in_progress": true``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from mooer.errors import ConfigError

if TYPE_CHECKING:  # the exports themselves need no database (the HTTP API's subtitles use them)
    from mooer.meetings.store import Meeting, MeetingInfo, Segment

FORMATS = {"srt": "application/x-subrip", "vtt": "text/vtt", "txt": "text/plain",
           "json": "application/json", "md": "text/markdown"}  # fmt: skip
FORMAT_NAMES = {"webvtt": "vtt", "text": "txt", "markdown": "md"}  # accepted aliases


def export_format(name: str) -> str:
    """A format name (or alias) -> its key in ``FORMATS``; ``ConfigError`` names the choices."""
    fmt = FORMAT_NAMES.get(name.lower(), name.lower())
    if fmt not in FORMATS:
        raise ConfigError(f"format {name!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def export_name(name: str | None, meeting_id: str, fmt: str) -> str:
    """The file name an export is saved under: ``name`` if it is a bare file name, else a
    ``ConfigError`` (a name may not lead anywhere else: no folders, no ``..``)."""
    if name is None:
        return f"{meeting_id}.{fmt}"
    bad = (
        not name or name in (".", "..") or any(c in name for c in "/\\\0:") or name != name.strip()
    )
    if bad or any(ord(c) < 32 for c in name):
        raise ConfigError(
            f"export name {name!r}: expected a plain file name such as 'minutes.{fmt}', "
            "without a folder"
        )
    return name


def clock(seconds: float, decimal: str = ".") -> str:
    """Seconds -> ``HH:MM:SS.mmm`` (SRT writes the decimal point as a comma)."""
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def subtitles(cues: Sequence[tuple[float, float, str]], vtt: bool) -> str:
    """(start s, end s, text) cues -> an SRT body (numbered) or a WebVTT file."""
    decimal = "." if vtt else ","
    blocks = []
    for i, (start, end, text) in enumerate(cues, 1):
        times = f"{clock(start, decimal)} --> {clock(end, decimal)}"
        blocks.append(f"{times}\n{text}\n" if vtt else f"{i}\n{times}\n{text}\n")
    body = "\n".join(blocks)
    return "WEBVTT\n\n" + body if vtt else body


def info_dict(info: MeetingInfo) -> dict[str, Any]:
    """A listing's entry as JSON: the stored fields and whether it is still in progress."""
    return {**asdict(info), "object": "meeting", "in_progress": info.in_progress}


def meeting_dict(meeting: Meeting) -> dict[str, Any]:
    return {**info_dict(meeting.info), "segments": [asdict(s) for s in meeting.segments]}


def render(meeting: Meeting, fmt: str) -> str:
    """``meeting`` in ``fmt`` (a key of ``FORMATS``)."""
    if fmt in ("srt", "vtt"):
        cues = [(s.start_ms / 1000, s.end_ms / 1000, _cue_text(s, fmt == "vtt"))
                for s in meeting.segments]  # fmt: skip
        return subtitles(cues, vtt=fmt == "vtt")
    if fmt == "json":
        return json.dumps(meeting_dict(meeting), ensure_ascii=False, indent=2) + "\n"
    if fmt == "md":
        return _markdown(meeting)
    return _text(meeting)


def _cue_text(s: Segment, vtt: bool) -> str:
    lines = [t for t in (s.transcript, s.translation) if t]
    text = "\n".join(lines) or "…"
    if vtt:  # WebVTT cue text: & and < are markup, and > ends a voice tag
        text = _vtt_escape(text)
        if s.speaker:
            text = f"<v {_vtt_escape(s.speaker).replace('>', '&gt;')}>{text}"
    elif s.speaker:
        text = f"{s.speaker}: {text}"
    return text


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


def wall(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status(meeting: Meeting) -> str:
    info = meeting.info
    if info.in_progress:
        return f"in progress: the {info.segment_count} segment(s) stored so far"
    return f"ended {wall(info.ended_at)}"


def _text(meeting: Meeting) -> str:
    info = meeting.info
    lines = [f"meeting {info.id} ({info.protocol}), started "
             f"{wall(info.started_at)}; {_status(meeting)}", ""]  # fmt: skip
    for s in meeting.segments:
        who = f" {s.speaker}:" if s.speaker else ""
        lines.append(f"[{clock(s.start_ms / 1000)} - {clock(s.end_ms / 1000)}]{who} "
                     f"{s.transcript or ''}".rstrip())  # fmt: skip
        if s.translation:
            lines.append(f"    {s.translation}")
    return "\n".join(lines) + "\n"


def _cell(text: str | None) -> str:
    """Markdown table cell: pipes and markup escaped, lines joined."""
    text = (text or "").replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _markdown(meeting: Meeting) -> str:
    info = meeting.info
    out = [f"# Meeting {info.id}", "",
           f"- started: {wall(info.started_at)}", f"- status: {_status(meeting)}",
           f"- protocol: {info.protocol}", "",
           "| start | end | wall clock | speaker | transcript | translation |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for s in meeting.segments:
        out.append(f"| {clock(s.start_ms / 1000)} | {clock(s.end_ms / 1000)} | "
                   f"{wall(s.wall_start)} | {_cell(s.speaker)} | {_cell(s.transcript)} | "
                   f"{_cell(s.translation)} |")  # fmt: skip
    return "\n".join(out) + "\n"
