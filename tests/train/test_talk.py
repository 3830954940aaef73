"""Continuous speech for tests and benchmarks: held-out sentences, pauses where asked."""

import numpy as np
import pytest

from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.train.corpus import is_heldout
from mooer.train.talk import heldout_sentences, spoken_talk


def test_heldout_sentences_are_heldout_distinct_and_fixed_by_the_seed():
    zh = heldout_sentences(10)
    assert all(is_heldout(en) for _, en in zh) and len(set(zh)) == 10
    assert heldout_sentences(10) == zh != heldout_sentences(10, seed=1)
    en = heldout_sentences(5, "en")
    assert all(said == english and is_heldout(said) for said, english in en)
    with pytest.raises(ConfigError, match="lang"):
        heldout_sentences(3, "fr")
    with pytest.raises(ConfigError, match="n must be"):
        heldout_sentences(0)


def test_pauses_fall_in_the_range_asked_for():
    talk = spoken_talk(heldout_sentences(4, "en"), (0.15, 0.4), seed=2, lead_s=0.25)
    assert talk.spans[0][0] == round(0.25 * SAMPLE_RATE)
    gaps = [b[0] - a[1] for a, b in zip(talk.spans, talk.spans[1:])]
    assert all(0.15 * SAMPLE_RATE - 1 <= g <= 0.4 * SAMPLE_RATE + 1 for g in gaps), gaps
    assert len(set(gaps)) > 1  # drawn, not fixed
    for start, end in talk.spans:  # each span is sound from its first sample to its last
        assert abs(talk.audio[start]) > 1e-3 and abs(talk.audio[end - 1]) > 1e-3
    assert not np.any(np.abs(talk.audio[talk.spans[0][1] + 1 : talk.spans[1][0]]) > 1e-3)
    with pytest.raises(ConfigError, match="pause_s"):
        spoken_talk(heldout_sentences(2), (0.5, 0.2))
    with pytest.raises(ConfigError, match="pause_s"):
        spoken_talk(heldout_sentences(2), 11.0)


def test_a_meeting_gives_every_voice_a_turn_with_pauses_between():
    from mooer.train.talk import MEETING_VOICES, spoken_meeting

    meeting = spoken_meeting(6, seed=3, pause_s=(0.7, 0.9))
    speakers = [who for who, _, _ in meeting.turns]
    assert len(speakers) == 6 and set(speakers) == set(range(len(MEETING_VOICES)))
    assert speakers != [who for who, _, _ in spoken_meeting(6, seed=4).turns]
    gaps = [b[1] - a[2] for a, b in zip(meeting.turns, meeting.turns[1:])]
    assert all(0.7 * SAMPLE_RATE - 1 <= g <= 0.9 * SAMPLE_RATE + 1 for g in gaps), gaps
    assert meeting.audio.size - meeting.turns[-1][2] == SAMPLE_RATE  # ends in 1 s of silence
    with pytest.raises(ConfigError, match="turns"):
        spoken_meeting(2)
