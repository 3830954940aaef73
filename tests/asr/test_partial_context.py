"""Partials in bounded windows: the tokens line up with the whole utterance's, the work per
partial does not grow with the utterance, unbounded context gives the whole encoding, and a long
utterance's partials are spaced further apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mooer.asr.partial_context import PartialContext, PartialEmbeds, token_count
from mooer.audio import SAMPLE_RATE, SAMPLES_PER_TOKEN, ms_to_samples
from mooer.errors import ConfigError
from mooer.model import load_model
from mooer.train.talk import heldout_sentences, spoken_talk

INTERVAL = SAMPLE_RATE * 480 // 1000  # a live session's partial cadence


@pytest.fixture(scope="module")
def model():
    return load_model(device="cpu")  # the bundled demo model


@pytest.fixture(scope="module")
def talk() -> np.ndarray:
    """About 13 s of held-out English sentences with short pauses: one long utterance."""
    return spoken_talk(heldout_sentences(6, "en"), (0.2, 0.3)).audio


def _partials(model, audio: np.ndarray, context: PartialContext):
    """Each partial's embeddings and the length of the window it encoded."""
    state, windows = PartialEmbeds(context), []

    def counted(waves):
        windows.append(len(waves[0]))
        return model.embed(waves)

    with torch.inference_mode():
        out = [state.embed(counted, audio[:end]) for end in range(INTERVAL, audio.size, INTERVAL)]
    return out, windows


def test_a_window_on_a_token_boundary_has_the_whole_utterances_features(model, talk):
    full = model.frontend(talk)  # (T, 560)
    for token in (1, 7, 40):
        window = model.frontend(talk[token * SAMPLES_PER_TOKEN :])
        # the first frame's LFR stack is padded with copies of the window's first fbank frame
        assert torch.equal(window[1:], full[2 * token + 1 :])


def test_unbounded_context_gives_the_whole_utterances_embeddings(model, talk):
    audio = talk[: 4 * SAMPLE_RATE]
    out, windows = _partials(model, audio, PartialContext(left_ms=60_000, redo_ms=60_000))
    for k, embeds in enumerate(out, 1):
        whole, lengths = model.embed([audio[: k * INTERVAL]])
        assert torch.equal(embeds, whole[0, : int(lengths[0])])
    assert windows == [k * INTERVAL for k in range(1, len(out) + 1)]


def test_each_partial_encodes_a_bounded_window(model, talk):
    context = PartialContext()
    out, windows = _partials(model, talk, context)
    assert len(out) >= 24  # 12 s and more
    bound = (context.left_tokens + context.redo_tokens + 2) * SAMPLES_PER_TOKEN + INTERVAL
    assert max(windows) <= bound < talk.size / 3
    # the tokens of the whole utterance so far, the earlier ones kept as they were
    for k, (before, after) in enumerate(zip(out, out[1:]), 1):
        assert len(before) == token_count(k * INTERVAL)
        kept = max(0, len(before) - context.redo_tokens)
        assert torch.equal(after[:kept], before[:kept])


def test_a_shorter_audio_starts_again(model, talk):
    state = PartialEmbeds(PartialContext(left_ms=480))
    with torch.inference_mode():
        state.embed(model.embed, talk[: 6 * SAMPLE_RATE])
        again = state.embed(model.embed, talk[:SAMPLE_RATE])
        whole, lengths = model.embed([talk[:SAMPLE_RATE]])
    assert torch.equal(again, whole[0, : int(lengths[0])])
    assert state.encoded_samples == SAMPLE_RATE


def test_a_long_utterances_partials_come_further_apart():
    context = PartialContext()  # every 480 ms up to 2.88 s, then every 1.44 s
    long = ms_to_samples(2880)
    assert context.interval_after(long - 1, INTERVAL) == INTERVAL
    assert context.interval_after(long, INTERVAL) == ms_to_samples(1440)
    assert context.interval_after(long, ms_to_samples(2000)) == ms_to_samples(2000)
    assert PartialContext(long_interval_ms=0).interval_after(10**6, INTERVAL) == INTERVAL


@pytest.mark.parametrize("name", ["left_ms", "redo_ms", "long_after_ms", "long_interval_ms"])
@pytest.mark.parametrize("value", [-1, 0.5, True, 10**6])
def test_bad_context_names_the_field(name, value):
    with pytest.raises(ConfigError, match=f"PartialContext.{name}"):
        PartialContext(**{name: value})
