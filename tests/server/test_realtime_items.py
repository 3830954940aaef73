"""The conversation items of /v1/realtime: truncate's cut of a spoken reply, the client's
messages read into the chat memory's terms."""

from __future__ import annotations

import pytest

from mooer.server.connection import ProtocolError
from mooer.server.realtime_items import Speech, read_message

RATE = 24000


def _spoken(*parts: tuple[str, int]) -> Speech:
    """A reply whose audio deltas each follow their text: (text, milliseconds of audio; 0: text
    never spoken)."""
    speech = Speech(RATE)
    for text, ms in parts:
        speech.add_text(text)
        if ms:
            speech.add_audio(b"\0\0" * (RATE * ms // 1000))
    return speech


def test_truncate_keeps_the_words_heard():
    speech = _spoken(("Hello there. ", 1000), ("How are you today?", 1000))
    assert speech.duration_ms == 2000
    # Half of the second sentence's audio: half its characters, back to a word's end.
    assert speech.truncate(1500) == "Hello there. How are"
    assert speech.duration_ms == 1500 and len(speech.pcm) == RATE * 3 // 2 * 2
    speech.add_text(" more")  # what the reply says after the cut is not kept
    speech.add_audio(b"\0\0" * 10)
    assert speech.transcript == "Hello there. How are" and speech.duration_ms == 1500


@pytest.mark.parametrize(
    ("end_ms", "heard"),
    [(0, ""), (500, "Hello"), (1000, "Hello there."), (2000, "Hello there. How are you today?")],
)
def test_truncate_at_the_edges(end_ms, heard):
    speech = _spoken(("Hello there. ", 1000), ("How are you today?", 1000), (" unspoken", 0))
    assert speech.truncate(end_ms) == heard


def test_chinese_is_cut_by_characters():
    assert _spoken(("今天天气不错", 1200)).truncate(600) == "今天天"


def test_a_word_cut_short_is_not_kept():
    # Half of "sixteen" was heard: "six" would be another number, so nothing of it is kept.
    assert _spoken(("fifteen ", 500), ("sixteen", 1000)).truncate(1000) == "fifteen"


def test_client_messages_are_read_by_role():
    role, text, item = read_message(
        {
            "id": "a1",
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": " Four. ", "audio": "AAAA"}],
        }
    )
    assert (role, text, item["id"]) == ("assistant", "Four.", "a1")
    assert item["content"] == [{"type": "output_audio", "transcript": " Four. "}]  # no audio kept
    for bad, param in [
        ({"type": "function_call", "name": "f"}, "item.type"),
        ({"type": "message", "role": "tool", "content": []}, "item.role"),
        (
            {"type": "message", "role": "system", "content": [{"type": "output_text"}]},
            "item.content[0].type",
        ),
        (
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "audio": "AA"}],
            },
            "item.content[0].transcript",
        ),
        ({"type": "message", "role": "user", "content": []}, "item.content"),
    ]:
        with pytest.raises(ProtocolError) as error:
            read_message(bad)
        assert error.value.param == param
