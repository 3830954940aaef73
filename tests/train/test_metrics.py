from __future__ import annotations

import math

import pytest

from mooer.errors import ConfigError
from mooer.train.metrics import (
    ErrorCounts,
    bleu,
    cer,
    char_errors,
    normalize_en,
    normalize_zh,
    wer,
    word_errors,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Hello, World!", "hello world"),
        ("  It's   3.5 dollars.  ", "its 3.5 dollars"),
        ("twenty-one / twenty two", "twenty one twenty two"),
        ('1,000 people; "quoted"', "1000 people quoted"),
        ("Seven.", "seven"),
    ],
)
def test_normalize_en(text, normal):
    assert normalize_en(text) == normal


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("今天星期三，天气很好。", "今天星期三天气很好"),
        ("我 喜欢 GPU！", "我喜欢gpu"),
        ("“你好”？《书》", "你好书"),
    ],
)
def test_normalize_zh(text, normal):
    assert normalize_zh(text) == normal


def test_word_errors_by_hand():
    # the cat sat on the mat -> the cat sit on mat: "sat"->"sit", "the" deleted.
    assert word_errors("the cat sat on the mat", "the cat sit on mat") == ErrorCounts(1, 1, 0, 6)
    assert word_errors("hello world", "hello big world") == ErrorCounts(0, 0, 1, 2)


def test_wer_is_a_corpus_rate():
    refs = ["the cat sat on the mat", "hello world"]
    hyps = ["the cat sit on mat", "hello big world"]
    # (1 + 1 + 1) edits over 8 reference words, not the mean of 2/6 and 1/2.
    assert wer(refs, hyps) == pytest.approx(3 / 8)


def test_wer_ignores_case_and_punctuation_unless_told():
    assert wer(["Hello, world."], ["hello world"]) == 0.0
    assert wer(["Hello, world."], ["hello world"], normalize=False) == 1.0


def test_cer_on_mandarin_with_punctuation():
    # 今天星期三天气很好 (9) -> 今天星期四天气好: 三->四 substituted, 很 deleted.
    assert char_errors("今天星期三，天气很好。", "今天星期四天气好") == ErrorCounts(1, 1, 0, 9)
    assert cer(["今天星期三，天气很好。", "你好"], ["今天星期四天气好", "你好！"]) == pytest.approx(
        2 / 11
    )


def test_empty_hypothesis_is_all_deletions_and_empty_reference_all_insertions():
    assert word_errors("a b c", "") == ErrorCounts(0, 3, 0, 3)
    assert word_errors("", "a b") == ErrorCounts(0, 0, 2, 0)
    assert wer(["a b c", ""], ["a b c", "x"]) == pytest.approx(1 / 3)


def test_rate_without_any_reference_is_refused():
    assert wer([""], [""]) == 0.0
    with pytest.raises(ConfigError, match="empty"):
        wer([""], ["extra words"])


def test_bleu_by_hand():
    # Precisions 5/6, 3/5, 2/4, 1/3; equal lengths so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) == pytest.approx(
        expected, abs=0.01
    )
    refs = ["today is wednesday", "it is cold on monday"]
    assert bleu(refs, refs) == pytest.approx(100.0)


def test_bleu_chinese_tokenisation_by_hand():
    # Characters: precisions 5/5, 3/4, 2/3, 1/2; hypothesis 5 vs reference 6 -> BP e^(1-6/5).
    expected = 100 * (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25 * math.exp(1 - 6 / 5)
    assert bleu(["今天天气很好"], ["今天天气好"], tokenize="zh") == pytest.approx(
        expected, abs=0.01
    )
    # Without Chinese tokenisation the whole string is one token, and no 4-gram can match.
    assert bleu(["今天天气很好"], ["今天天气好"], tokenize="13a") == 0.0


@pytest.mark.parametrize(
    ("refs", "hyps", "match"),
    [
        (["a", "b"], ["a"], "2 references but 1"),
        ([], [], "no references"),
        ("a b", "a b", "lists"),
    ],
)
def test_bad_inputs(refs, hyps, match):
    with pytest.raises(ConfigError, match=match):
        wer(refs, hyps)


def test_unknown_bleu_tokenizer():
    with pytest.raises(ConfigError, match="klingon"):
        bleu(["a"], ["a"], tokenize="klingon")


def test_error_counts_add_up():
    total = ErrorCounts(1, 2, 3, 10) + ErrorCounts(0, 1, 0, 5)
    assert total == ErrorCounts(1, 3, 3, 15)
    assert total.errors == 7 and total.rate == pytest.approx(7 / 15)


def test_diarization_errors_by_hand():
    from mooer.train.metrics import diarization_errors

    reference = [("ann", 0.0, 2.0), ("bob", 3.0, 5.0), ("ann", 6.0, 8.0)]
    # other names, same turns: the mapping makes it perfect (0.25 s collars: 1.5 s per turn)
    perfect = diarization_errors(reference, [(7, 0.0, 2.0), (8, 3.0, 5.0), (7, 6.0, 8.0)])
    assert perfect.der == 0.0 and perfect.speech_s == pytest.approx(
        3 * 1.5, abs=0.02
    )  # less the collars
    # the last turn given to bob: 2 s less the collars either end are confused
    wrong = diarization_errors(reference, [(7, 0.0, 2.0), (8, 3.0, 5.0), (8, 6.0, 8.0)])
    assert wrong.confusion_s == pytest.approx(1.5, abs=0.02) and wrong.missed_s == 0.0
    assert wrong.der == pytest.approx(1.5 / 4.5, abs=0.01)
    # a turn not labelled at all is missed; a label in the silence is a false alarm
    gaps = diarization_errors(reference, [(7, 0.0, 2.0), (8, 3.0, 5.5), (7, 6.0, 8.0)][:2])
    assert gaps.missed_s == pytest.approx(1.5, abs=0.02)
    assert gaps.false_alarm_s == pytest.approx(0.25, abs=0.02)  # 5.25-5.5 is past the collar
    assert diarization_errors(reference, [], collar_s=0.0).der == 1.0
