from __future__ import annotations

import re
from collections import Counter

import pytest

from mooer.errors import ConfigError
from mooer.train import corpus
from mooer.train.corpus import (
    TASK_MIX,
    build_corpus,
    chat_dialogues,
    chinese_number,
    english_number,
    english_ordinal,
    english_sentences,
    is_heldout,
    mandarin_pairs,
    more_chat,
    multi_sentence,
    multi_sentence_alone,
    sentences_in_a_row,
)

WORD_VALUE = {english_number(n): n for n in range(100)}
DAY_NAMES = [en for _, en in corpus.DAYS]


@pytest.fixture(scope="module")
def split():
    return build_corpus(3000, 600, seed=7)


@pytest.mark.parametrize(
    ("n", "words"),
    [(0, "zero"), (13, "thirteen"), (20, "twenty"), (21, "twenty one"), (99, "ninety nine")],
)
def test_english_number(n, words):
    assert english_number(n) == words


@pytest.mark.parametrize(
    ("n", "words"),
    [(1, "first"), (3, "third"), (12, "twelfth"), (13, "thirteenth"), (20, "twentieth")]
    + [(22, "twenty second"), (30, "thirtieth"), (31, "thirty first")],
)
def test_english_ordinal(n, words):
    assert english_ordinal(n) == words


@pytest.mark.parametrize(
    ("n", "counting", "numeral"),
    [(0, False, "零"), (2, False, "二"), (2, True, "两"), (10, False, "十"), (12, True, "十二")]
    + [(20, False, "二十"), (22, True, "二十二"), (99, False, "九十九")],
)
def test_chinese_number(n, counting, numeral):
    assert chinese_number(n, counting) == numeral


def test_numbers_out_of_range_are_refused():
    with pytest.raises(ConfigError, match="100"):
        english_number(100)
    with pytest.raises(ConfigError, match="-1"):
        chinese_number(-1)


def test_pairs_are_aligned_translations():
    pairs = dict(mandarin_pairs())
    assert pairs["今天星期三"] == "today is wednesday"
    assert pairs["我要买两个苹果"] == "i want to buy two apples"
    assert pairs["我要买一个鸡蛋"] == "i want to buy one egg"
    assert pairs["现在两点半"] == "it is half past two"
    assert pairs["今天是五月十二号"] == "today is may twelfth"
    assert pairs["我想要一个橙色的杯子"] == "i want an orange cup"
    assert pairs["二加三等于五"] == "two plus three is five"


def test_text_conventions():
    for sentence in english_sentences():
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", sentence), sentence
    for zh, _ in mandarin_pairs():
        assert re.fullmatch(r"[\u4e00-\u9fff]+", zh), zh
    for dialogue in chat_dialogues():
        for question, answer in dialogue:
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", question), question
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", answer), answer


def test_vocabulary_is_small():
    texts = english_sentences() + [q for d in chat_dialogues() for turn in d for q in turn]
    words = {w for text in texts for w in text.split()}
    characters = {c for zh, _ in mandarin_pairs() for c in zh}
    assert 150 < len(words) < 400
    assert 100 < len(characters) < 300


def test_chat_answers_are_right():
    for dialogue in chat_dialogues():
        question, answer = dialogue[0]
        if m := re.fullmatch(r"what is (.+) (plus|minus|times) (.+)", question):
            a, op, b = WORD_VALUE[m[1]], m[2], WORD_VALUE[m[3]]
            assert WORD_VALUE[answer] == {"plus": a + b, "minus": a - b, "times": a * b}[op]
        if m := re.fullmatch(r"what day comes (after|before) (\w+)", question):
            step = 1 if m[1] == "after" else -1
            assert answer == DAY_NAMES[(DAY_NAMES.index(m[2]) + step) % 7]


def test_follow_ups_depend_on_the_first_answer():
    follow_ups = [d for d in chat_dialogues() if len(d) == 2]
    kinds = Counter()
    for (_, first), (question, answer) in follow_ups:
        if m := re.fullmatch(r"and (plus|minus) (\w+)", question):
            k = WORD_VALUE[m[2]] * (1 if m[1] == "plus" else -1)
            assert WORD_VALUE[answer] == WORD_VALUE[first] + k
            kinds["arithmetic"] += 1
        elif question == "what about the day after that":
            assert answer == DAY_NAMES[(DAY_NAMES.index(first) + 1) % 7]
            kinds["day"] += 1
        elif question == "and the opposite of that":
            assert (first, answer) in corpus.OPPOSITES or (answer, first) in corpus.OPPOSITES
            kinds["opposite"] += 1
    assert kinds["arithmetic"] > 100 and kinds["day"] == 7 and kinds["opposite"] == 40


def test_same_seed_same_corpus_other_seed_other_corpus(split):
    train, heldout = split
    again = build_corpus(3000, 600, seed=7)
    assert (train, heldout) == again
    other = build_corpus(3000, 600, seed=8)
    assert [u.text for u in other[0]] != [u.text for u in train]


def test_sizes_ids_and_task_mix(split):
    train, heldout = split
    assert len(train) == 3000 and len(heldout) == 600
    assert len({u.id for u in train + heldout}) == 3600
    mix = Counter((u.task, u.lang) for u in train)
    assert mix == {kind: round(3000 * share) for kind, share in TASK_MIX.items()}
    mix = Counter((u.task, u.lang) for u in heldout)
    assert mix == {kind: round(600 * share) for kind, share in TASK_MIX.items()}


def test_mix_counts_add_up_for_awkward_sizes():
    for n in (1, 7, 13):
        train, heldout = build_corpus(n, n, seed=0)
        assert len(train) == n and len(heldout) == n


def test_targets_follow_the_task(split):
    for u in split[0] + split[1]:
        expected = {
            "asr": u.text,
            "ast": u.translation,
            "mtl": f"{u.text}\n{u.translation}",
        }.get(u.task, u.target)
        assert u.target == expected
        assert (u.translation != "") == (u.lang == "zh")
        assert u.history == [] or u.task == "chat"
    assert any(u.history for u in split[0])


def test_heldout_sentences_never_occur_in_training(split):
    train, heldout = split
    seen = {u.text for u in train} | {u.translation for u in train} | {u.target for u in train}
    for u in heldout:
        if u.task == "chat":
            root = u.history[0][0] if u.history else u.text
            assert root not in seen
        else:
            assert u.text not in seen and (u.translation or u.text) not in seen


def test_more_chat_continues_the_corpus_chat_draws(split):
    def dialogues(items):
        return Counter((u.text, tuple(u.history), u.target) for u in items if u.task == "chat")

    extra = more_chat(3000, 100, seed=7)
    assert [u.id for u in extra] == [f"chat-{i:06d}" for i in range(100)]
    assert {u.task for u in extra} == {"chat"}
    assert not any(is_heldout(u.history[0][0] if u.history else u.text) for u in extra)
    # 600 chat items in 3000, 700 in 3500: more_chat draws exactly the 100 that come next
    bigger, _ = build_corpus(3500, 0, seed=7)
    assert dialogues(split[0]) + dialogues(extra) == dialogues(bigger)
    assert more_chat(3000, 0) == []
    with pytest.raises(ConfigError, match=r"^n=-1: expected an integer >= 0$"):
        more_chat(3000, -1)


def test_heldout_split_is_stable_and_about_ten_percent():
    keys = english_sentences()
    share = sum(map(is_heldout, keys)) / len(keys)
    assert 0.07 < share < 0.13
    assert is_heldout("today is wednesday") == is_heldout("today is wednesday")


def test_heldout_has_little_repetition(split):
    _, heldout = split
    distinct = {(u.task, u.text, tuple(u.history)) for u in heldout}
    assert len(distinct) > 0.9 * len(heldout)


@pytest.mark.parametrize(("n_train", "n_heldout"), [(-1, 10), (10, 2.5)])
def test_bad_sizes(n_train, n_heldout):
    with pytest.raises(ConfigError, match="n_"):
        build_corpus(n_train, n_heldout, seed=0)


def test_text_chat_items_leave_heldout_questions_out():
    from mooer.train.demo import text_chat_set

    texts = text_chat_set(width=8, repeats=2)
    first_questions = {(e.history[0][0] if e.history else e.text) for e in texts.entries}
    dialogues = chat_dialogues()
    assert not any(is_heldout(q) for q in first_questions)
    kept = [d for d in dialogues if not is_heldout(d[0][0])]
    assert len(texts.entries) == 2 * len(kept) and 0 < len(kept) < len(dialogues)
    assert {e.task for e in texts.entries} == {"chat_text"}
    assert all(f.shape == (0, 8) for f in texts.frames)  # no audio: the text is the question
    e = texts.entries[0]
    assert (tuple(e.history) + ((e.text, e.target),)) == kept[0]


def test_a_leg_with_openings_trains_the_greeting_without_audio():
    from mooer.train.corpus import OPENING
    from mooer.train.demo import DemoConfig, _leg_set, opening_set, text_chat_set

    openings = opening_set(8, 4).entries
    assert [(e.task, e.target, e.audio, e.text) for e in openings] == [
        ("opening", OPENING, "", "")
    ] * 4
    # Every other one greets after a training dialogue, as after a history synced by a client.
    assert [bool(e.history) for e in openings] == [False, True, False, True]
    assert all(not is_heldout(e.history[0][0]) for e in openings[1::2])
    speech = text_chat_set(width=8, repeats=1)  # stands in for the encoded main set
    cfg = DemoConfig(text_chat_repeats=0, chat_transcripts=False, openings=3)
    leg = _leg_set(cfg, speech, None)
    assert [e.task for e in leg.entries].count("opening") == 3
    assert len(leg.entries) == len(speech.entries) + 3


def test_greeted_chat_is_asked_after_the_assistants_greeting():
    import torch

    from mooer.train.corpus import OPENING
    from mooer.train.data import Entry
    from mooer.train.demo import CachedSet, DemoConfig, _leg_set, greeted_set

    asked = [("what is two plus two", "four")]
    entries = [
        Entry("q", "q.wav", "chat", "what is two plus two", target="four", lang="en"),
        Entry("t", "t.wav", "asr", "hello", target="hello", lang="en"),
        Entry("f", "f.wav", "chat", "and plus one", target="five", history=asked, lang="en"),
    ]
    frames = [torch.full((5 + i, 8), float(i), dtype=torch.float16) for i in range(3)]
    speech = CachedSet(entries, frames)
    greeted = greeted_set(speech, 40, seed=0)
    spoken, text = greeted.entries[:40], greeted.entries[40:]
    assert {e.task for e in spoken} == {"chat"} and {e.task for e in text} == {"chat_text"}
    for e, f in zip(spoken, greeted.frames[:40]):  # a chat recording, its own turns kept last
        (own,) = [i for i, x in enumerate(entries) if x.text == e.text]
        assert torch.equal(f, frames[own]) and e.target == entries[own].target
        assert e.history[len(e.history) - len(entries[own].history) :] == entries[own].history
    assert all(f.shape == (0, 8) for f in greeted.frames[40:])
    heard = []
    for e in greeted.entries:
        (at,) = [i for i, (q, _) in enumerate(e.history) if q is None]  # one greeting each
        heard.append(e.history[at][1])
        assert OPENING.startswith(heard[-1]) and heard[-1]  # whole, or cut to what was heard
        before, own = e.history[:at], e.history[at + 1 :]  # a dialogue synced before it,
        assert not before or not is_heldout(before[0][0])  # every other time
        assert not is_heldout(own[0][0] if own else e.text)  # training dialogues only
    assert [bool(e.history[0][0]) for e in greeted.entries][:6] == [False, True] * 3
    assert 0.5 < heard.count(OPENING) / len(heard) < 1
    cfg = DemoConfig(text_chat_repeats=0, chat_transcripts=False, greeted_chat=3)
    leg = _leg_set(cfg, speech, None)
    assert [e.id for e in leg.entries].count("greeted-000000") == 1
    assert len(leg.entries) == len(entries) + 2 + 6  # chat twice (chat_repeats 2), 3 + 3 greeted


def test_client_openings_are_told_to_greet_or_follow_a_context_message():
    from mooer.train.corpus import OPENING
    from mooer.train.demo import OPENING_INSTRUCTIONS, client_opening_set, context_message

    openings = client_opening_set(8, 12, seed=0).entries
    assert {(e.task, e.target, e.audio) for e in openings} == {("opening", OPENING, "")}
    told = [e.text.split("\n")[-1] for e in openings]
    assert [bool(t) for t in told] == [False, True] * 6  # every other one is told what to do
    assert set(told[1::2]) <= set(OPENING_INSTRUCTIONS)
    assert any(e.text.startswith("You are a helpful assistant.\n") for e in openings)
    for i, e in enumerate(openings):  # after nothing, a synced dialogue, or it as one message
        if i % 3 == 0:
            assert e.history == []
        elif i % 3 == 1:
            assert e.history and all(q and a for q, a in e.history)
            assert not is_heldout(e.history[0][0])
        else:
            ((message, answer),) = e.history
            assert answer is None and '"role": "assistant"' in message
    dialogue = [("what is two plus two", "four")]
    assert '"content": "what is two plus two"' in context_message(dialogue)


def test_after_greeting_asks_the_heldout_chat_after_the_opening():
    from mooer.train.corpus import OPENING
    from mooer.train.data import Entry
    from mooer.train.demo import after_greeting

    entries = [
        Entry("a", "a.wav", "asr", "hello", target="hello"),
        Entry("c", "c.wav", "chat", "and plus one", target="five", history=[("q", "four")]),
    ]
    (chat,) = after_greeting(entries)
    assert chat.history == [(None, OPENING), ("q", "four")] and chat.audio == "c.wav"


def test_drawn_text_chat_items_keep_spoken_chats_template_mix():
    from mooer.train.demo import text_chat_set

    drawn = more_chat(0, 2000, seed=0)
    texts = text_chat_set(width=8, repeats=0, drawn=drawn)
    turns = [(e.text, e.target, [tuple(t) for t in e.history]) for e in texts.entries]
    assert turns == [(u.text, u.target, [tuple(t) for t in u.history]) for u in drawn]
    assert any(e.history for e in texts.entries)  # follow-ups keep their first turn

    def opposites(entries):  # a small template: 145 of the 8,427 training dialogues
        return sum("opposite" in e.text for e in entries) / len(entries)

    assert opposites(texts.entries) > 3 * opposites(text_chat_set(width=8, repeats=1).entries)


@pytest.mark.parametrize("split_name", ["train", "heldout"])
def test_multi_sentence_items_join_sentences_of_their_split(split_name):
    from mooer.text import join_texts

    english_of = dict(mandarin_pairs())
    items = multi_sentence(split_name, 60, seed=0)
    assert [(u.id, u.task, u.lang) for u in items[:3]] == [
        ("multi-000000", "asr", "en"),
        ("multi-000001", "asr", "zh"),
        ("multi-000002", "ast", "zh"),
    ]
    assert {len(u.parts) for u in items} == {2, 3}
    for u in items:
        assert u.text == join_texts(u.parts)
        if u.lang == "en":
            assert u.text == " ".join(u.parts) and u.translation == ""
            keys = u.parts
        else:  # Mandarin joined without a space; the translation joins the parts' English
            assert u.text == "".join(u.parts) and " " not in u.text
            keys = [english_of[part] for part in u.parts]
            assert u.translation == " ".join(keys)
        assert u.target == (u.translation if u.task == "ast" else u.text)
        # the split's sentences only: no held-out sentence is ever trained on
        assert [is_heldout(k) for k in keys] == [split_name == "heldout"] * len(keys)
    assert multi_sentence(split_name, 60, seed=0) == items
    assert multi_sentence(split_name, 60, seed=1) != items
    with pytest.raises(ConfigError, match="split must be one of train, heldout"):
        multi_sentence("valid", 3)


def test_the_sentences_in_a_row_can_be_heard_alone():
    items = multi_sentence("train", 30, seed=0)
    alone = multi_sentence_alone("train", 30, seed=0)
    assert len(alone) == sum(len(u.parts) for u in items)
    by_item = {}
    for u in alone:
        by_item.setdefault(u.id.rsplit("-", 1)[0], []).append(u)
    for item in items:
        sentences = by_item[item.id]
        assert [u.id for u in sentences] == [f"{item.id}-{j}" for j in range(len(item.parts))]
        assert [u.text for u in sentences] == item.parts  # the same sentences, one each
        for u in sentences:
            assert (u.task, u.lang, u.parts, u.history) == (item.task, item.lang, [], [])
            assert u.target == (u.translation if u.task == "ast" else u.text)
            assert u.target and u.target in item.target  # a sentence of the item's answer
    assert multi_sentence_alone("train", 30, seed=1) != alone


def test_sentence_marks_end_each_sentence_in_a_row_but_the_last():
    from mooer.train.metrics import normalize_en, normalize_zh

    assert sentences_in_a_row(["明天见", "现在八点半"]) == "明天见。现在八点半"
    assert sentences_in_a_row(["go north", "it rains", "hi"]) == "go north. it rains. hi"
    assert sentences_in_a_row(["one", " "]) == "one" and sentences_in_a_row(["", ""]) == ""
    english_of = dict(mandarin_pairs())
    plain, marked = multi_sentence("train", 30, seed=0), multi_sentence("train", 30, 0, True)
    for p, m in zip(plain, marked, strict=True):
        assert (m.id, m.task, m.parts) == (p.id, p.task, p.parts)  # the same speech
        assert m.text == sentences_in_a_row(m.parts)
        if m.lang == "zh":
            assert m.text.count("。") == len(m.parts) - 1 and normalize_zh(m.text) == p.text
            assert m.translation == sentences_in_a_row([english_of[s] for s in m.parts])
        else:  # English: no translation, not even a mark
            assert m.translation == ""
        assert normalize_en(m.translation) == p.translation  # scored alike: marks only differ
        assert m.target == (m.translation if m.task == "ast" else m.text)
