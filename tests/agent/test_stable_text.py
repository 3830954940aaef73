"""The append-only output policy against hypotheses that waver, contradict and cut words."""

from __future__ import annotations

import random

import pytest

from mooer.agent.stable_text import StableText, continuation, revises
from mooer.errors import ConfigError
from mooer.server.captions import AppendOnlyText
from mooer.text import has_chinese, units
from mooer.train.corpus import english_sentences, mandarin_pairs

ENGLISH = english_sentences()[:400]
MANDARIN = [zh for zh, _ in mandarin_pairs()][:400]


def _units(text: str) -> list[str]:
    return [u.strip() for u in units(text)]


def _cut(sentence: str, rng: random.Random) -> str:
    """A partial hypothesis: a prefix of ``sentence``, often ending inside a word."""
    return sentence[: rng.randint(1, len(sentence))].rstrip()


def _hypotheses(rng: random.Random, pool: list[str]) -> tuple[list[str], str]:
    """Partials that grow towards one sentence, jump to others and cut words; then a final
    that may be any sentence."""
    target = rng.choice(pool)
    partials = []
    for _ in range(rng.randint(1, 8)):
        source = target if rng.random() < 0.6 else rng.choice(pool)
        partials.append(_cut(source, rng))
    final = target if rng.random() < 0.5 else rng.choice(pool)
    return partials, final


@pytest.mark.parametrize("pool", [ENGLISH, MANDARIN], ids=["english", "mandarin"])
def test_what_the_client_assembles_is_whole_units_of_the_hypotheses(pool):
    rng = random.Random(13)
    revised = 0
    for _ in range(400):
        partials, final = _hypotheses(rng, pool)
        track = StableText()
        assembled = "".join(track.update(p) for p in partials)
        assert assembled == track.stable
        committed = assembled
        assembled += track.finish(final)
        assert assembled == track.stable
        # No piece of a word: each unit is the final's, or one that a partial went on past.
        whole = set(_units(final))
        for text in partials:
            pieces = _units(text)
            whole |= set(pieces if has_chinese(text) else pieces[:-1])
        assert set(_units(assembled)) <= whole, (partials, final, assembled)
        if not revises(committed, final):
            assert assembled == final  # the final went on from the commits: nothing differs
        revised += revises(committed, final)
    assert revised > 20  # the sequences did contradict their commits


@pytest.mark.parametrize(
    ("first", "second", "committed"),
    [
        ("hello wor", "hello world", "hello"),
        ("hello world how", "hello world who", "hello world"),
        ("hello world", "hello world", "hello"),  # the last word may go on
        ("hello world.", "hello world, and", "hello"),
        ("你好吗", "你好呀", "你好"),  # a Chinese character is whole by itself
        ("今天 fine", "今天 fun", "今天"),
        ("abc", "xyz", ""),
    ],
)
def test_two_hypotheses_agree_on_whole_words_or_characters(first, second, committed):
    track = StableText()
    assert track.update(first) == ""
    assert track.update(second) == committed == track.stable


def test_only_units_two_hypotheses_agree_on_are_committed():
    track = StableText()
    assert track.update("my room is num") == ""
    assert track.update("see you at half past") == ""  # disagrees from the first word
    assert track.update("see you at half past thir") == "see you at half"  # "past" may go on
    assert track.update("see you at half past thirteen") == " past"  # "thir" was cut
    # The garbling: a hallucinated commit, then a final that shares no word with it.
    assert track.finish("my room is number thirteen") == " my room is number thirteen"
    assert "rteen" not in track.stable.split()


def test_three_hypotheses_must_agree_when_asked():
    track = StableText(agree=3)
    assert [track.update(p) for p in ["one egg", "one egg costs", "one apple costs"]] == [
        "",
        "",
        "one",
    ]
    with pytest.raises(ConfigError, match="agree"):
        StableText(agree=1)


@pytest.mark.parametrize(
    ("sent", "final", "added"),
    [
        ("", "one egg", "one egg"),
        ("one egg", "one egg costs five yuan", " costs five yuan"),
        ("it is", "today is august eleventh", " august eleventh"),  # past the shared "is"
        ("the cap", "the cat sat", " sat"),  # a replaced word stands for its replacement
        ("one apple costs", "one pear costs two yuan", " two yuan"),
        ("see you at half past", "my room is number thirteen", " my room is number thirteen"),
        ("a b c d", "a b", ""),  # the final is shorter than what was sent: nothing to add
        ("今天天", "明天天气很好", "气很好"),
        ("今天", "today", "today"),  # no space after Chinese (mooer.text.separator)
    ],
)
def test_continuation_appends_whole_units_of_the_final(sent, final, added):
    assert continuation(sent, final) == added
    assert continuation(sent + added, final) == ""  # sending it again adds nothing


def test_the_server_stream_never_splices_a_final_inside_a_word():
    revised = []
    stream = AppendOnlyText(lambda: revised.append(1))
    assert stream.advance("a", "see you at half past") == "see you at half past"
    assert stream.advance("a", "my room is number thirteen", final=True) == (
        " my room is number thirteen"
    )
    assert stream.revisions == len(revised) == 1
    assert stream.advance("b", "today is", final=False) == " today is"
    assert stream.advance("b", "today is monday", final=True) == " monday"
    assert stream.revisions == 1
    assert stream.sent == "see you at half past my room is number thirteen today is monday"
