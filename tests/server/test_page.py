"""The browser page in headless Chromium, its microphone fed from a WAV file.

Needs Chromium and the playwright package (neither is a dependency of mooer); skipped without
them. CI installs them with ``apt-get install -y chromium`` and ``pip install playwright``
(playwright drives the system Chromium; no browser download).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import soundfile as sf

from mooer.audio import SAMPLE_RATE

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")

FINAL = "conversation.item.input_audio_transcription.completed"
TRANSLATED = "conversation.item.input_audio_translation.completed"


@contextmanager
def _page(server, speech, tmp_path) -> Iterator:
    """The page in headless Chromium, its microphone the first recording then 2 s of silence."""
    mic = tmp_path / "mic.wav"  # Chromium plays it in a loop as the microphone
    silence = np.zeros(2 * SAMPLE_RATE, dtype=np.float32)
    sf.write(mic, np.concatenate([speech[0], silence]), SAMPLE_RATE, subtype="PCM_16")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}",
                "--autoplay-policy=no-user-gesture-required",
                "--no-sandbox",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/")
            yield page
        finally:
            browser.close()


def test_microphone_to_live_captions_and_translation(server, speech, tmp_path):
    with _page(server, speech, tmp_path) as page:
        assert page.text_content("#state") == "disconnected"
        page.select_option("#task", "asr+ast")
        page.click("#toggle")
        page.wait_for_function(f"window.mooerEvents.includes('{TRANSLATED}')", timeout=90_000)
        events = page.evaluate("window.mooerEvents")
        assert page.text_content("#state") == "connected"
        transcript = page.locator("#transcript p:not(.partial)").all_text_contents()
        translation = page.locator("#translation p:not(.partial)").all_text_contents()
        page.click("#toggle")
        page.wait_for_function("document.querySelector('#state').textContent == 'disconnected'")
    assert events[:2] == ["session.created", "session.updated"]
    assert events.index("input_audio_buffer.speech_started") < events.index(FINAL)
    assert transcript and transcript[0].strip()
    assert translation and translation[0].strip()


def test_spoken_chat_replies_are_scheduled_for_playback(server, speech, tmp_path):
    with _page(server, speech, tmp_path) as page:
        page.select_option("#task", "chat")
        assert page.is_checked("#speak")
        page.click("#toggle")
        page.wait_for_function("window.mooerEvents.includes('response.done')", timeout=90_000)
        events = page.evaluate("window.mooerEvents")
        played = page.evaluate("window.mooerAudio")
        reply = page.locator("#chat .assistant").first.text_content()
        # The microphone's loop speaks again while the reply (longer than the 3 s of silence)
        # is still playing: the page cuts it off.
        page.wait_for_function("window.mooerAudio.cutOff > 0", timeout=30_000)
        assert page.evaluate("player.sources.size") == 0
        page.click("#toggle")
    assert "response.output_audio.delta" in events
    assert 0 < played["chunks"] <= events.count("response.output_audio.delta")
    assert played["seconds"] > 0.5  # speech, scheduled at 24 kHz
    assert reply.strip()  # the audio transcript is written in the bubble
