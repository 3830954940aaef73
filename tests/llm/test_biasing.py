"""Context biasing by hotwords: the prefix tree's credit, the bonus in the scores, and decoding
on the bundled demo model (it hears 学校 as 厕所 in a held-out voice)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from mooer.audio import load_audio
from mooer.errors import ConfigError
from mooer.llm.backend import EmbedsBackend, HFBackend, check_hotwords
from mooer.llm.biasing import (
    UNSPACED_CHAR,
    BiasingConfig,
    HotwordBias,
    Hotwords,
    HotwordTree,
    hotwords_from_funasr,
    hotwords_from_lines,
    hotwords_from_text,
)
from mooer.llm.decoding import OFFLINE, STREAMING
from mooer.model import DEMO_MODEL_DIR, load_model
from mooer.tasks import decode
from mooer.train.synth import HELDOUT_VOICES
from mooer.train.talk import spoken_talk

BONUS = BiasingConfig().bonus
ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Held-out voices that the demo model mishears (recorded once: espeak-ng's audio varies
# from call to call, and with it what the model hears): file, what was said, the hotword.
HEARD_WRONG = [("hotword_xuexiao.wav", "学校在哪里", "学校")]  # cmn+m7: 厕所在哪里
M7 = next(v for v in HELDOUT_VOICES if v.variant == "m7" and v.lang == "en")


def walk(tree: HotwordTree, pieces: list[bytes | None]) -> list[float]:
    """The credit change of each piece in turn, from the start of an answer."""
    node, changes = tree.start, []
    for piece in pieces:
        node, change = tree.step(node, piece)
        changes.append(change)
    return changes


def test_a_whole_hotword_keeps_its_bonus():
    tree = HotwordTree(Hotwords(("sixteen",)))
    changes = walk(tree, [b"six", b"teen", b" years", None])
    assert changes[0] == pytest.approx(BONUS * (3 / 7) ** 2)  # the share of its characters, squared
    assert sum(changes[:2]) == pytest.approx(BONUS)
    assert changes[2:] == [0.0, 0.0]  # kept after the word and at the end of the answer


def test_a_failed_partial_match_is_taken_back():
    tree = HotwordTree(Hotwords(("sixteen",)))
    changes = walk(tree, [b"six", b"ty", b" years"])
    assert changes[0] > 0
    assert sum(changes[:2]) == pytest.approx(0.0)
    held = BONUS * (4 / 7) ** 2
    assert walk(tree, [b" sixt", None]) == pytest.approx([held, -held])


def test_latin_words_match_at_a_word_start_and_mandarin_ones_anywhere():
    latin = HotwordTree(Hotwords(("teen",)))
    assert walk(latin, [b"sixteen"]) == [0.0]
    assert walk(latin, [b"a teen"]) == pytest.approx([BONUS])
    mandarin = HotwordTree(Hotwords(("杯子",)))
    # the demo tokenizer spells 一个杯子 as one token
    value = 2 * UNSPACED_CHAR * BONUS  # per character
    assert walk(mandarin, ["一个杯子".encode()]) == pytest.approx([value])
    assert walk(mandarin, ["一个杯".encode(), "八".encode()]) == pytest.approx(
        [value / 4, -value / 4]  # half the characters: a quarter of the value
    )


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR / "llm")


def test_the_bonus_follows_each_hypothesis(tokenizer):
    (banana,) = tokenizer(" banana", add_special_tokens=False)["input_ids"]
    (yuan,) = tokenizer(" yuan", add_special_tokens=False)["input_ids"]
    (s,) = tokenizer("s", add_special_tokens=False)["input_ids"]
    bias = HotwordBias(tokenizer, Hotwords(("bananas",)))
    vocab = len(tokenizer)
    scores = bias(torch.tensor([[yuan, banana], [banana, yuan]]), torch.zeros(2, vocab))
    held = BONUS * (6 / 7) ** 2  # " banana" spelled six of seven characters
    assert scores[0, s] == pytest.approx(BONUS - held)  # completes the word
    assert scores[0, yuan] == pytest.approx(-held)  # the partial match fails
    assert scores[1, s] == 0.0  # the other hypothesis holds nothing
    assert scores[1, banana] == pytest.approx(held)
    # tokens that spell none of the word are left exactly as they were
    assert scores[1, yuan] == 0.0 and scores[1, tokenizer.convert_tokens_to_ids("<|im_end|>")] == 0


def test_hotword_lists_from_each_source():
    assert hotwords_from_funasr('{"sixteen": 20, "New York": 5}').words == ("sixteen", "New York")
    assert hotwords_from_funasr("sixteen sixty").words == ("sixteen", "sixty")
    assert hotwords_from_funasr("") is None
    assert hotwords_from_text("sixteen, sixty；学校 sixty", "prompt").words == (
        "sixteen",
        "sixty",
        "学校",
    )
    assert hotwords_from_text("  ", "prompt") is None
    assert hotwords_from_lines("sixteen 20\nNew York\n\n", "file").words == ("sixteen", "New York")


def test_bad_hotword_lists_name_their_field():
    with pytest.raises(ConfigError, match="hotwords.*weight of 'sixteen'"):
        hotwords_from_funasr('{"sixteen": "high"}')
    with pytest.raises(ConfigError, match="prompt: hotwords: 101 given, at most 100"):
        hotwords_from_text(" ".join(f"w{i}" for i in range(101)), "prompt")
    with pytest.raises(ConfigError, match="prompt: hotwords: .* 41 characters long, at most 40"):
        hotwords_from_text("x" * 41, "prompt")
    with pytest.raises(ConfigError, match="BiasingConfig.bonus"):
        BiasingConfig(bonus=float("nan"))


def test_the_vllm_backend_refuses_hotwords_by_name():
    check_hotwords(HFBackend())
    with pytest.raises(ConfigError, match="not supported on the vllm LLM backend"):
        check_hotwords(EmbedsBackend())


@pytest.fixture(scope="module")
def demo():
    return load_model()


def _transcript(demo, encoded, options) -> str:
    (found,) = decode(demo, *encoded, "asr", options, step_by_step=options.num_beams == 1)
    return found.transcript


@pytest.mark.parametrize("options", [OFFLINE, STREAMING], ids=["beam", "token-loop"])
@pytest.mark.parametrize(("name", "said", "word"), HEARD_WRONG)
def test_a_hotword_brings_a_misheard_word_back(demo, options, name, said, word):
    encoded = demo.embed([load_audio(ASSETS / name)])  # (1, Ta, H), (1,)
    assert _transcript(demo, encoded, options) != said
    biased = replace(options, hotwords=Hotwords((word,)))
    assert _transcript(demo, encoded, biased) == said


@pytest.mark.parametrize("options", [OFFLINE, STREAMING], ids=["beam", "token-loop"])
def test_hotwords_absent_from_the_speech_change_nothing(demo, options):
    biased = replace(options, hotwords=Hotwords(("Zurich", "杯子")))
    for sentence in ["where is the bank", "what time is it", "the bank is on the left"]:
        audio = spoken_talk([(sentence, sentence)], 0.0, voice=M7, lead_s=0.3, tail_s=0.3).audio
        encoded = demo.embed([audio])  # espeak-ng varies from call to call: one recording
        assert _transcript(demo, encoded, biased) == _transcript(demo, encoded, options)
