from __future__ import annotations

import numpy as np
import pytest
import torch

from mooer.errors import ConfigError
from mooer.tts.hifigan import HifiganConfig, HifiganGenerator
from mooer.tts.vocoder import StreamingVocoder, vocode

TINY = HifiganConfig(input_channels=12, initial_channels=16, speaker_channels=6)
HOP = TINY.hop
T = 17  # frames in the test utterance


def lively_generator() -> HifiganGenerator:
    """Random weights scaled by fan-in so the tiny head's output swings like speech (std ~0.4);
    PyTorch's default init gives a nearly constant output that would hide seams."""
    torch.manual_seed(0)
    gen = HifiganGenerator(TINY).eval()
    with torch.no_grad():
        for p in gen.parameters():
            if p.dim() > 1:
                p.normal_(0, 1.5 / p[0].numel() ** 0.5)
            else:
                p.zero_()
    return gen


@pytest.fixture(scope="module")
def setup():
    """In float64 chunked vocoding is bit-exact, so any context shortfall shows; float32 is below."""
    gen = lively_generator().double()
    latents = torch.randn(T, TINY.input_channels)
    speaker = torch.randn(1, TINY.speaker_channels, 1)
    whole = vocode(gen, latents, speaker)
    return gen, latents, speaker, whole


def stream(voc: StreamingVocoder, latents: torch.Tensor, sizes: list[int]) -> list[np.ndarray]:
    outs, start = [], 0
    for n in sizes:
        outs.append(voc.push(latents[start : start + n]))
        start += n
    assert start == len(latents)
    outs.append(voc.flush())
    return outs


def test_vocode_length_and_type(setup):
    _, _, _, whole = setup
    assert whole.dtype == np.float32 and whole.shape == (T * HOP,)
    assert np.abs(whole).max() <= 1.0
    assert whole.std() > 0.1


@pytest.mark.parametrize("chunk", [1, 2, 3, 8, 40])
def test_one_frame_at_a_time_equals_whole(setup, chunk):
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=chunk)
    out = np.concatenate(stream(voc, latents, [1] * T))
    assert out.shape == whole.shape
    np.testing.assert_allclose(out, whole, atol=1e-7, rtol=0)


def test_float32_streaming_is_within_one_16_bit_step():
    gen = lively_generator()
    latents, speaker = torch.randn(T, TINY.input_channels), torch.randn(1, TINY.speaker_channels, 1)
    whole = vocode(gen, latents, speaker)
    voc = StreamingVocoder(gen, speaker, chunk_frames=2)
    out = np.concatenate(stream(voc, latents, [1] * T))
    np.testing.assert_allclose(out, whole, atol=1 / 32768, rtol=0)


@pytest.mark.parametrize("sizes", [[5, 5, 5, 2], [1, 10, 2, 4], [T], [0, 4, 0, 13]])
def test_uneven_pushes_equal_whole(setup, sizes):
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=3)
    np.testing.assert_allclose(
        np.concatenate(stream(voc, latents, sizes)), whole, atol=1e-7, rtol=0
    )


def test_too_little_context_leaves_seams(setup):
    """The seam-free result depends on the context: with none, chunk edges differ audibly."""
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=2, left_context=0, right_context=0)
    out = np.concatenate(stream(voc, latents, [1] * T))
    assert np.abs(out - whole).max() > 0.05


def test_first_audio_after_chunk_plus_right_context(setup):
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=2)
    assert voc.right_context == TINY.context_frames == 4
    outs = [voc.push(latents[i : i + 1]) for i in range(8)]
    lengths = [len(o) for o in outs]
    assert lengths == [0, 0, 0, 0, 0, 2 * HOP, 0, 2 * HOP]
    np.testing.assert_allclose(outs[5], whole[: 2 * HOP], atol=1e-7, rtol=0)
    assert voc.sample_rate == 22050


def test_state_keeps_only_left_context(setup):
    gen, latents, speaker, _ = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=2)
    for i in range(T):
        voc.push(latents[i : i + 1])
        assert voc.state.pending.shape[0] <= voc.left_context + voc.right_context + 2


def test_reset_and_flush_start_a_new_utterance(setup):
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=1)
    voc.push(latents[:9])
    voc.reset()  # barge-in: drop the first attempt
    first = np.concatenate(stream(voc, latents, [4] * 4 + [1]))
    second = np.concatenate(stream(voc, latents, [T]))  # flush reset the state
    np.testing.assert_allclose(first, whole, atol=1e-7, rtol=0)
    np.testing.assert_allclose(second, whole, atol=1e-7, rtol=0)
    assert voc.flush().shape == (0,)


def test_numpy_latents_accepted(setup):
    gen, latents, speaker, whole = setup
    np.testing.assert_allclose(vocode(gen, latents.numpy(), speaker), whole, atol=1e-6, rtol=0)


def test_bad_shapes_and_settings(setup):
    gen, latents, speaker, _ = setup
    with pytest.raises(ConfigError, match=r"latents must have shape \(T, 12\), got \(3, 5\)"):
        vocode(gen, torch.zeros(3, 5), speaker)
    with pytest.raises(ConfigError, match="speaker vector"):
        vocode(gen, latents, torch.zeros(1, 6))
    with pytest.raises(ConfigError, match="chunk_frames"):
        StreamingVocoder(gen, speaker, chunk_frames=0)
    with pytest.raises(ConfigError, match="contexts"):
        StreamingVocoder(gen, speaker, left_context=-1)
    assert vocode(gen, torch.zeros(0, 12), speaker).shape == (0,)
