from __future__ import annotations

import threading

import numpy as np
import pytest

from mooer.errors import ConfigError
from mooer.tts import espeak
from mooer.tts.espeak import SAMPLE_RATE_ESPEAK, available_variants, synthesize

SENTENCE = "today is wednesday the third of march"


def _seconds(samples: np.ndarray) -> float:
    return len(samples) / SAMPLE_RATE_ESPEAK


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_english_is_loud_int16_of_plausible_length():
    samples = synthesize(SENTENCE)
    assert samples.dtype == np.int16 and samples.ndim == 1
    # Eight words at 175 words per minute: about 2.7 s of speech, minus pauses espeak skips.
    assert 1.0 < _seconds(samples) < 4.0
    assert _rms(samples) > 500


def test_mandarin_is_spoken_not_skipped():
    samples = synthesize("今天星期三天气很好", voice="cmn", variant="f2")
    # Nine syllables: one to four seconds. An unsupported script would give near silence.
    assert 1.0 < _seconds(samples) < 4.0
    assert _rms(samples) > 500


def test_faster_rate_gives_shorter_audio():
    slow = synthesize(SENTENCE, rate=120)
    fast = synthesize(SENTENCE, rate=350)
    assert _seconds(fast) < 0.6 * _seconds(slow)


def test_variants_change_the_voice():
    plain = synthesize(SENTENCE, variant=None)
    female = synthesize(SENTENCE, variant="+f3")
    assert len(plain) != len(female) or not np.array_equal(plain, female)


def test_same_request_gives_the_same_duration():
    # espeak-ng varies its samples slightly from call to call (it is not seedable from here).
    durations = [len(synthesize("hello there", variant="m2")) for _ in range(3)]
    assert max(durations) - min(durations) < 0.01 * durations[0]


def test_variant_list_comes_from_the_data_folder():
    variants = available_variants()
    assert {f"m{i}" for i in range(1, 9)} <= set(variants)
    assert {f"f{i}" for i in range(1, 6)} <= set(variants)
    assert "m9" not in variants


@pytest.mark.parametrize("variant", ["m9", "f6", "nonsense"])
def test_unknown_variant_is_refused(variant):
    with pytest.raises(ConfigError, match=variant):
        synthesize("hello", variant=variant)


def test_unknown_voice_is_refused():
    with pytest.raises(ConfigError, match="xx-yy"):
        synthesize("hello", voice="xx-yy")


@pytest.mark.parametrize(("key", "value"), [("rate", 20), ("rate", 1000), ("pitch", 101)])
def test_out_of_range_parameters_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        synthesize("hello", **{key: value})


def test_blank_text_gives_no_samples():
    assert len(synthesize("  \n")) == 0


def test_other_english_voices_exist():
    assert {"en-us", "en-029", "en-gb-scotland", "cmn"} <= set(espeak.available_voices())
    assert _rms(synthesize("good morning", voice="en-029")) > 500


def test_two_threads_both_get_their_full_audio():
    # Durations far apart, so audio that went to the wrong caller would show.
    texts = {"en": (SENTENCE, "en-us"), "zh": ("你好", "cmn")}
    expected = {key: len(synthesize(text, voice)) for key, (text, voice) in texts.items()}
    assert expected["en"] > 2 * expected["zh"]
    results: dict[str, list[np.ndarray]] = {key: [] for key in texts}

    def work(key: str) -> None:
        text, voice = texts[key]
        for _ in range(5):
            results[key].append(synthesize(text, voice))

    threads = [threading.Thread(target=work, args=(key,)) for key in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key, outputs in results.items():
        assert len(outputs) == 5
        for samples in outputs:
            assert abs(len(samples) - expected[key]) < 0.02 * expected[key]
