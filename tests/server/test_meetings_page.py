"""The meetings page in headless Chromium against a real server holding a recorded meeting (its
audio kept), and the review API's refusals: no key, a path for a meeting id or export name, SQL
in a search; on SQLite and on PostgreSQL. Needs Chromium and playwright, as test_page.py does
(skipped without)."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets

from mooer.audio import SAMPLE_RATE
from mooer.server.pcm import encode_pcm16
from tests.meetings.conftest import empty_store, postgres_url  # noqa: F401  (a fixture)

sa = pytest.importorskip("sqlalchemy", reason="the meetings extra (SQLAlchemy) is not installed")

KEY = "review-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TRANSLATED = "conversation.item.input_audio_translation.completed"
NAME = "<img src=x onerror=\"window.pwned=1\"> Ana & 'Bo'"  # a name that is also markup


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request, tmp_path_factory) -> Iterator[str]:
    """An empty store on each backend (PostgreSQL: the cluster tests/meetings starts)."""
    with empty_store(request.param, tmp_path_factory.mktemp("review"), request) as url:
        yield url


@pytest.fixture(scope="module")
def review_server(start_server, db):
    return start_server(api_key=KEY, meetings_db=db, record_audio=True)


@pytest.fixture(scope="module")
def recorded(review_server, db, speech):
    """A transcribed and translated meeting of both recordings, its audio kept; the speakers a
    speaker labeller would give (set here in the store); and a second, typed-in meeting."""
    from mooer.meetings.store import MeetingStore, Segment

    async def run():
        url = (f"ws://{review_server.host}:{review_server.port}/v1/realtime"
               f"?intent=transcription&record=1&api_key={KEY}")  # fmt: skip
        session = {"type": "transcription", "mooer": {"task": "asr+ast"},
                   "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}  # fmt: skip
        async with websockets.connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            pcm = encode_pcm16(np.concatenate(speech))
            for i in range(0, len(pcm), 6400):  # 200 ms frames
                await ws.send(pcm[i : i + 6400])
            await ws.send(json.dumps({"type": "session.close"}))
            events = []
            while not events or events[-1]["type"] != "session.closed":
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 90)))
        return events

    events = asyncio.run(run())
    meeting_id = events[0]["session"]["mooer"]["meeting_id"]
    assert sum(e["type"] == TRANSLATED for e in events) >= 2
    store = MeetingStore(db)
    try:
        kept = store.get(meeting_id).segments
        for i, s in enumerate(kept):  # a later final of the same item fills in the speaker
            store.keep(meeting_id, replace(s, transcript=None, translation=None, language=None,
                                           speaker=f"speaker {i % 2 + 1}"))  # fmt: skip
        other = store.create("funasr", kept[0].wall_start - 3600)
        store.keep(other, Segment("i1", 0, 1500, kept[0].wall_start - 3600,
                                  kept[0].wall_start - 3598.5, "the quarterly budget"))  # fmt: skip
        store.end(other, kept[0].wall_start - 3590)
        return meeting_id, other, store.get(meeting_id)
    finally:
        store.close()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_the_page_lists_shows_searches_renames_exports_and_plays(review_server, recorded, db,
                                                                  tmp_path):  # fmt: skip
    sync_api = pytest.importorskip("playwright.sync_api")
    meeting_id, other, meeting = recorded
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
        )
        try:
            page = browser.new_page(accept_downloads=True)
            listings = []  # the page's requests for the list, in order
            page.on("request", lambda r: "/v1/meetings?" in r.url and listings.append(r.url))
            page.goto(f"{review_server.url}/meetings")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            items = page.locator("#meetings li")
            items.first.wait_for()
            assert items.evaluate_all("l => l.map(e => e.dataset.id)") == [meeting_id, other]

            # a meeting: its segments in order, times, speakers, transcript beside translation;
            # the click, which leaves the key's field, does not list again (a list that came
            # back between mouse down and up would replace the entry and lose the click)
            listed = len(listings)
            page.click(f"#meetings li[data-id='{meeting_id}']")
            rows = page.locator("#segments tr")
            rows.first.wait_for()
            assert len(listings) == listed
            assert rows.count() == len(meeting.segments)
            for i, s in enumerate(meeting.segments):
                cells = rows.nth(i).locator("td").all_text_contents()
                start = f"00:00:{s.start_ms // 1000:02d}.{s.start_ms % 1000:03d}"
                assert cells[0].startswith(start)
                assert cells[1:4] == [s.speaker, s.transcript, s.translation]

            # search goes through the API: only the meeting that holds the word, SQL is text
            page.fill("#search", "Quarterly")
            page.click("#search-form button")
            page.wait_for_function("document.querySelectorAll('#meetings li').length == 1")
            assert items.first.get_attribute("data-id") == other
            page.fill("#search", "' OR '1'='1")
            page.click("#search-form button")
            page.wait_for_function("document.querySelectorAll('#meetings li').length == 0")
            assert page.is_visible("#none")

            # rename a speaker to a name that is markup: stored as given, shown as text
            page.select_option("#speaker", "speaker 1")
            page.fill("#new-name", NAME)
            page.click("#rename-form button")
            page.wait_for_function(
                "[...document.querySelectorAll('#segments td.speaker')]"
                f".some(td => td.textContent == {json.dumps(NAME)})"
            )
            assert page.evaluate("window.pwned") is None
            assert page.locator("#segments img").count() == 0

            # export: the file the browser downloads is the server's export
            page.select_option("#format", "vtt")
            with page.expect_download() as caught:
                page.click("#export")
            download = caught.value
            assert download.suggested_filename == f"{meeting_id}.vtt"
            download.save_as(tmp_path / "got.vtt")
            vtt = (tmp_path / "got.vtt").read_text()
            assert vtt.startswith("WEBVTT\n\n")
            assert "<v &lt;img src=x onerror=\"window.pwned=1\"&gt; Ana &amp; 'Bo'>" in vtt

            # play: the segment's audio comes back as FLAC
            first = meeting.segments[0].item_id
            with page.expect_response(lambda r: r.url.endswith(f"/{first}/audio")) as answer:
                rows.first.locator("button.play").click()
            response = answer.value
            assert response.status == 200 and response.headers["content-type"] == "audio/flac"
            page.wait_for_function("window.mooerPlayed.length == 1")
            played = page.evaluate("window.mooerPlayed[0]")
            assert played["status"] == 200 and played["bytes"] > 1000
        finally:
            browser.close()

    from mooer.meetings.store import MeetingStore

    store = MeetingStore(db)
    try:
        speakers = [s.speaker for s in store.get(meeting_id).segments]
    finally:
        store.close()
    assert speakers == [NAME if s.speaker == "speaker 1" else s.speaker for s in meeting.segments]


def test_segment_audio_is_what_was_said_and_goes_with_the_meeting(review_server, recorded, speech):
    meeting_id, _, meeting = recorded
    base = f"{review_server.url}/v1/meetings"
    heard = np.concatenate(speech)
    for s in meeting.segments:
        got = httpx.get(f"{base}/{meeting_id}/segments/{s.item_id}/audio", headers=AUTH)
        assert got.status_code == 200 and got.headers["content-type"] == "audio/flac"
        audio, rate = sf.read(io.BytesIO(got.content), dtype="float32")
        start = s.start_ms * SAMPLE_RATE // 1000
        assert rate == SAMPLE_RATE and abs(audio.size - (s.end_ms - s.start_ms) * 16) <= 16
        assert np.abs(audio - heard[start : start + audio.size]).max() < 1e-3


def test_the_review_api_refuses_without_the_key_and_takes_paths_and_sql_as_text(review_server,
                                                                                   recorded):  # fmt: skip
    meeting_id, other, meeting = recorded
    base = f"{review_server.url}/v1/meetings"
    item = meeting.segments[0].item_id
    for method, path in [("GET", ""), ("GET", f"/{meeting_id}"),
                         ("GET", f"/{meeting_id}/export"), ("PATCH", f"/{meeting_id}/speakers"),
                         ("GET", f"/{meeting_id}/segments/{item}/audio"),
                         ("DELETE", f"/{meeting_id}")]:  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            answer = httpx.request(method, base + path, headers=headers)
            assert answer.status_code == 401, (method, path, answer.text)
    assert httpx.get(f"{review_server.url}/meetings").status_code == 200  # the page, no data

    def error(answer, status):
        assert answer.status_code == status, answer.text
        return answer.json()["error"]

    for bad in ("..%2F..%2Fetc%2Fpasswd", "..", "mtg_..", "%27%20OR%201%3D1", "%00"):
        for path in (f"/{bad}/export", f"/{bad}/segments/{item}/audio", f"/{bad}"):
            answer = httpx.get(base + path, headers=AUTH)  # no route, or not a meeting id
            assert answer.status_code == 404, (path, answer.text)
            assert answer.text == "Not Found" or answer.json()["error"]["code"] == (
                "meeting_not_found"
            )
    for name in ("../x.srt", "/etc/passwd", "a/b.srt", "..\\x"):
        answer = httpx.get(f"{base}/{meeting_id}/export", params={"name": name}, headers=AUTH)
        assert error(answer, 400)["param"] == "name"
    assert error(httpx.get(f"{base}/{meeting_id}/segments/%27%20OR%201%3D1/audio", headers=AUTH), 404)[
        "code"] == "not_found"  # fmt: skip
    assert error(httpx.get(f"{base}/{other}/segments/i1/audio", headers=AUTH), 404)[
        "message"].endswith("kept no audio of segment i1")  # fmt: skip
    for search in ("' OR '1'='1", "%", "_", "budget'; DROP TABLE segments; --"):
        found = httpx.get(base, params={"search": search}, headers=AUTH).json()["data"]
        assert found == []
    assert [m["id"] for m in httpx.get(base, params={"search": "budget"},
                                       headers=AUTH).json()["data"]] == [other]  # fmt: skip

    rename = f"{base}/{meeting_id}/speakers"
    for body, param in [({"old": "speaker 2"}, "new"), ({"new": "x"}, "old"),
                        ({"old": "speaker 2", "new": " x"}, "new"),
                        ({"old": "speaker 2", "new": "x" * 65}, "new")]:  # fmt: skip
        assert error(httpx.patch(rename, json=body, headers=AUTH), 400)["param"] == param
    assert error(httpx.patch(rename, content=b"{", headers=AUTH), 400)["code"] == "invalid_json"
    huge = httpx.patch(rename, content=b" " * 100_000, headers=AUTH)
    assert "over 4096 bytes" in error(huge, 400)["message"]
    missing = httpx.patch(rename, json={"old": "nobody", "new": "x"}, headers=AUTH)
    assert error(missing, 404)["message"] == f"meeting {meeting_id} has no speaker 'nobody'"
