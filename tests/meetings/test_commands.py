"""``mooer meetings list|show|export|delete`` as a user runs them (``mooer.cli.main`` in this
process: a subprocess would spend its time importing torch, which these commands never use)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from mooer.cli import main

pytest.importorskip("sqlalchemy", reason="the meetings extra (SQLAlchemy) is not installed")
from mooer.meetings.store import MeetingStore, Segment  # noqa: E402

T0 = 1_700_000_000.0


def test_list_show_export_delete(tmp_path, capsys):
    def mooer(*args: str) -> SimpleNamespace:
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    db = str(tmp_path / "m.db")
    store = MeetingStore(db)
    meeting = store.create("funasr", T0)
    store.keep(meeting, Segment("i1", 0, 2000, T0, T0 + 2, "今天天气不错", "nice weather",
                                speaker="speaker 1"))  # fmt: skip
    store.close()

    listed = mooer("meetings", "list", "--db", db)
    assert listed.returncode == 0 and listed.stdout.startswith(f"{meeting}\t")
    assert "1 segments\t2.0 s\tin progress" in listed.stdout
    found = mooer("meetings", "list", "--db", db, "--search", "WEATHER", "--json")
    assert json.loads(found.stdout)["id"] == meeting
    assert mooer("meetings", "list", "--db", db, "--search", "rain").stdout == ""

    shown = mooer("meetings", "show", meeting, "--db", db)
    assert "[00:00:00.000 - 00:00:02.000] speaker 1: 今天天气不错\n    nice weather" in shown.stdout
    out = mooer("meetings", "export", meeting, "--db", db, "--format", "vtt", "--name", "a.vtt",
                "--dir", str(tmp_path))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a.vtt").read_text().startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.000")
    refused = mooer("meetings", "export", meeting, "--db", db, "--name", "../a.srt")
    assert refused.returncode == 2 and refused.stderr.startswith("mooer: error: export name")
    assert not (tmp_path.parent / "a.srt").exists()

    renamed = mooer("meetings", "rename", meeting, "speaker 1", "Ana Li", "--db", db)
    assert renamed.returncode == 0, renamed.stderr
    assert "speaker 1" not in mooer("meetings", "show", meeting, "--db", db).stdout
    assert "] Ana Li: 今天天气不错" in mooer("meetings", "show", meeting, "--db", db).stdout
    missing = mooer("meetings", "rename", meeting, "speaker 9", "X", "--db", db)
    assert missing.returncode == 2 and "has no speaker 'speaker 9'" in missing.stderr

    assert mooer("meetings", "delete", meeting, "--db", db).returncode == 0
    gone = mooer("meetings", "show", meeting, "--db", db)
    assert (
        gone.returncode == 2
        and gone.stderr == f"mooer: error: no meeting {meeting} in sqlite:///{db}\n"
    )
