"""A meeting as SRT, WebVTT, text, JSON and Markdown; export names that would lead elsewhere."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from mooer.errors import ConfigError
from mooer.meetings.export import FORMATS, export_format, export_name, render

pytest.importorskip("sqlalchemy", reason="the meetings extra (SQLAlchemy) is not installed")
from mooer.meetings.store import Meeting, MeetingInfo, Segment  # noqa: E402

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def meeting(ended: bool = True) -> Meeting:
    segments = [
        Segment("i1", 1200, 4050, T0 + 1.2, T0 + 4.05, "今天天气不错", "nice weather today"),
        Segment(
            "i2",
            3_725_500,
            3_727_000,
            T0 + 3725.5,
            T0 + 3727,
            "a | b <i>x</i> & c",
            speaker="speaker 2",
        ),  # fmt: skip
    ]
    info = MeetingInfo("mtg_0123456789abcdef0123", "realtime", T0, T0 + 3800 if ended else None,
                       len(segments), 3_727_000)  # fmt: skip
    return Meeting(info, segments)


def test_subtitles_put_the_translation_under_the_transcript():
    assert render(meeting(), "srt") == (
        "1\n00:00:01,200 --> 00:00:04,050\n今天天气不错\nnice weather today\n\n"
        "2\n01:02:05,500 --> 01:02:07,000\nspeaker 2: a | b <i>x</i> & c\n"
    )
    assert render(meeting(), "vtt") == (
        "WEBVTT\n\n00:00:01.200 --> 00:00:04.050\n今天天气不错\nnice weather today\n\n"
        "01:02:05.500 --> 01:02:07.000\n<v speaker 2>a | b &lt;i>x&lt;/i> &amp; c\n"
    )


def test_text_json_and_markdown_carry_times_and_say_when_in_progress():
    text = render(meeting(ended=False), "txt")
    assert "in progress: the 2 segment(s) stored so far" in text
    assert "[00:00:01.200 - 00:00:04.050] 今天天气不错\n    nice weather today\n" in text
    body = json.loads(render(meeting(ended=False), "json"))
    assert body["in_progress"] is True and body["segment_count"] == 2
    assert body["segments"][1]["speaker"] == "speaker 2" and body["segments"][0]["end_ms"] == 4050
    md = render(meeting(), "md")
    assert "- status: ended 2023-11-14 23:16:40 UTC" in md
    assert ("| 00:00:01.200 | 00:00:04.050 | 2023-11-14 22:13:21 UTC |  | 今天天气不错 | "
            "nice weather today |") in md  # fmt: skip
    assert "| speaker 2 | a \\| b &lt;i>x&lt;/i> &amp; c |  |" in md  # one cell, no markup


def test_format_names_and_export_names():
    assert [export_format(n) for n in ("SRT", "webvtt", "text", "markdown")] == [
        "srt", "vtt", "txt", "md"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="expected one of srt, vtt, txt, json, md"):
        export_format("docx")
    assert export_name(None, "mtg_1", "vtt") == "mtg_1.vtt"
    assert export_name("会议 notes.md", "mtg_1", "md") == "会议 notes.md"
    for bad in ("../x.srt", "/etc/passwd", "a/b.srt", "..\\x.srt", "..", "", "x\n.srt", "C:x"):
        with pytest.raises(ConfigError, match="without a folder"):
            export_name(bad, "mtg_1", "srt")
    assert set(FORMATS) == {"srt", "vtt", "txt", "json", "md"}


def test_a_speaker_name_is_text_in_every_format():
    name = "<i>Ana</i> & Bo>"
    renamed = meeting()
    renamed = Meeting(renamed.info, [replace(s, speaker=name) for s in renamed.segments])
    assert "<v &lt;i&gt;Ana&lt;/i&gt; &amp; Bo&gt;>今天天气不错" in render(renamed, "vtt")
    assert "| &lt;i>Ana&lt;/i> &amp; Bo> | 今天天气不错 |" in render(renamed, "md")
    assert f"{name}: 今天天气不错" in render(renamed, "srt")
    assert json.loads(render(renamed, "json"))["segments"][0]["speaker"] == name
