from __future__ import annotations

from mooer.server.captions import AppendOnlyText
from mooer.text import join_texts


def test_only_settled_text_is_sent_and_the_final_completes_it():
    stream = AppendOnlyText()
    assert stream.advance("a", "") == ""
    assert stream.advance("a", "the cat") == "the cat"
    assert stream.current("a") == "the cat"
    assert stream.advance("a", "the cat") == ""
    assert stream.advance("a", "the cat sat", final=True) == " sat"
    assert stream.sent == "the cat sat"
    assert stream.current("a") == ""


def test_a_final_that_revises_sent_text_still_brings_the_rest():
    stream = AppendOnlyText()
    stream.advance("a", "the cap")
    assert stream.advance("a", "the dog") == ""  # a partial never takes back sent text
    assert stream.advance("a", "the cat sat", final=True) == " sat"
    assert stream.sent == "the cap sat"
    assert stream.advance("b", "ok", final=True) == " ok"


def test_utterances_are_joined_with_spaces_between_words_only():
    stream = AppendOnlyText()
    pieces = [
        stream.advance("a", "Hello there.", final=True),
        stream.advance("b", "How are you", final=True),
        stream.advance("c", "你好", final=True),
        stream.advance("d", "世界", final=True),
    ]
    assert pieces == ["Hello there.", " How are you", "你好", "世界"]
    assert join_texts(["Hello there.", " How are you ", "", "你好", "世界"]) == (
        "Hello there. How are you你好世界"
    )
