"""Spoken replies and translations in the command-line client: written to a wav against a real
server, and the play queue the speakers pull from."""

from __future__ import annotations

import base64
import sys

import numpy as np
import pytest
import soundfile as sf

from mooer.errors import ConfigError, MooerError
from mooer.server.commands import stream_main
from mooer.server.reply_audio import PcmQueue, ReplyAudio
from mooer.speak import text_to_speech
from mooer.tts.backend import split_sentences


def test_stream_in_chat_writes_the_spoken_replies_to_a_wav(server, speech_file, tmp_path, capsys):
    out = tmp_path / "replies.wav"
    assert stream_main(str(speech_file), server=server.url, mode="chat", audio_out=str(out)) == 0
    lines = capsys.readouterr()
    replies = [line for line in lines.out.splitlines() if line.startswith("mooer: ")]
    assert replies and all(len(line) > len("mooer: ") for line in replies)  # the transcript
    info = sf.info(out)
    assert (info.format, info.subtype, info.samplerate, info.channels) == (
        "WAV",
        "PCM_16",
        24000,
        1,
    )
    audio, _ = sf.read(out, dtype="int16")
    assert audio.size > 24000 // 2 and np.abs(audio).max() > 1000  # speech, not silence
    assert f"s of spoken replies to {out}" in lines.err


@pytest.mark.parametrize("mode", ["ast", "asr+ast"])
def test_stream_in_ast_writes_the_spoken_translations_to_a_wav(
    server, speech_file, tmp_path, capsys, mode
):
    """The shared server's model has a head that says nothing: espeak-ng speaks each final
    translation, and the last one still arrives after its final (session.close drains it)."""
    out = tmp_path / "translations.wav"
    assert stream_main(str(speech_file), server=server.url, mode=mode, audio_out=str(out)) == 0
    lines = capsys.readouterr()
    translations = [line.split("\t")[-1] for line in lines.out.splitlines()]
    expected = sum(
        text_to_speech(sentence, "en", sample_rate=24000)[0].size
        for line in translations
        for sentence in split_sentences(line)
    )
    audio, rate = sf.read(out, dtype="int16")
    assert rate == 24000 and expected > 24000 // 2
    assert abs(audio.size - expected) <= expected // 100  # espeak-ng varies a little
    assert f"s of spoken translations to {out}" in lines.err


def test_a_transcript_is_not_spoken(server, speech_file, tmp_path):
    out = tmp_path / "replies.wav"
    with pytest.raises(ConfigError, match="--mode chat, ast, asr\\+ast, not 'asr'"):
        stream_main(str(speech_file), server=server.url, mode="asr", audio_out=str(out))
    assert not out.exists()


def test_play_without_sounddevice_says_what_to_install(monkeypatch, speech_file, tmp_path):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if not installed
    with pytest.raises(MooerError, match=r"--play needs the sounddevice package: pip install"):
        stream_main(str(speech_file), server="http://127.0.0.1:1", mode="chat", play=True)


def test_an_unwritable_audio_out_is_named(speech_file, tmp_path):
    bad = tmp_path / "no-such-dir" / "replies.wav"
    with pytest.raises(ConfigError, match="no-such-dir"):
        stream_main(str(speech_file), server="http://127.0.0.1:1", mode="chat", audio_out=str(bad))


def test_the_play_queue_is_gap_free_and_clears_at_once():
    queue = PcmQueue()
    queue.push(np.arange(1, 6, dtype=np.int16))
    queue.push(np.arange(6, 9, dtype=np.int16))
    block = np.full(4, -1, dtype=np.int16)
    assert queue.pull(block) == 4 and block.tolist() == [1, 2, 3, 4]
    assert queue.pull(block) == 4 and block.tolist() == [5, 6, 7, 8]  # across the chunks
    assert queue.queued == 0
    assert queue.pull(block) == 0 and block.tolist() == [0, 0, 0, 0]  # silence when starved

    queue.push(np.arange(1, 100, dtype=np.int16))
    queue.pull(block)
    queue.clear()  # barge-in
    assert queue.queued == 0 and queue.pull(block) == 0 and not block.any()


class _NoDevice:
    """Speakers without a sound device (there is none here): the queue PortAudio would pull."""

    def __init__(self) -> None:
        self.queue = PcmQueue()

    def close(self) -> None:
        pass


def _audio_event(kind: str) -> dict:
    return {"type": kind, "delta": base64.b64encode(np.ones(100, "<i2").tobytes()).decode()}


def test_barge_in_cuts_a_reply_off_but_not_a_translation(tmp_path):
    speakers = _NoDevice()
    with ReplyAudio(tmp_path / "a.wav") as out:
        out.speakers = speakers
        out.handle(_audio_event("conversation.item.input_audio_translation.audio.delta"))
        out.handle({"type": "input_audio_buffer.speech_started"})
        assert speakers.queue.queued == 100  # an interpreter goes on
        out.handle(_audio_event("response.output_audio.delta"))
        out.handle({"type": "input_audio_buffer.speech_started"})
        assert speakers.queue.queued == 0  # a reply stops at once
    assert sf.info(tmp_path / "a.wav").frames == 200  # the file keeps both
