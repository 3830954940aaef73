from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

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
    """In float64 streaming matches to ~1e-15, so any missing state shows; float32 is below."""
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


def rms(error: np.ndarray) -> float:
    return float(np.sqrt(np.mean(error**2)))


def test_float32_streaming_is_as_accurate_as_whole_vocoding():
    """In float32 the layers round differently when run piecewise (overlap-add, shorter
    convolutions); measured against float64, streaming is no worse than the whole pass."""
    gen = lively_generator()
    latents, speaker = torch.randn(T, TINY.input_channels), torch.randn(1, TINY.speaker_channels, 1)
    whole = vocode(gen, latents, speaker)
    truth = vocode(lively_generator().double(), latents, speaker)
    voc = StreamingVocoder(gen, speaker, chunk_frames=2)
    out = np.concatenate(stream(voc, latents, [1] * T))
    assert np.abs(out - whole).max() < 4 / 32768  # a few 16-bit steps; a seam is thousands
    assert rms(out - truth) <= 1.25 * rms(whole - truth)


@pytest.mark.parametrize(
    ("chunk", "sizes"),
    [(3, [5, 5, 5, 2]), (3, [1, 10, 2, 4]), (3, [T]), (3, [0, 4, 0, 13]), (5, [3, 7, 1, 6]),
     (7, [2, 1, 1, 9, 4]), (1, [16, 1]), (2, [1] * 8 + [9])],
)  # fmt: skip
def test_uneven_pushes_equal_whole(setup, chunk, sizes):
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=chunk)
    np.testing.assert_allclose(
        np.concatenate(stream(voc, latents, sizes)), whole, atol=1e-7, rtol=0
    )


def test_audio_is_released_lookahead_behind_the_latents(setup):
    """After n frames, exactly n * hop - lookahead samples are out (chunk_frames=1)."""
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=1)
    assert voc.lookahead == 3770 and voc.right_context == 4  # same time structure as released
    out = 0
    for n in range(1, T + 1):
        out += len(voc.push(latents[n - 1 : n]))
        assert out == max(0, n * HOP - voc.lookahead if n > voc.right_context else 0)


def test_lookahead_is_the_receptive_field_reach(setup):
    """A frame changes the audio from lookahead samples before its own start: releasing any
    earlier would be wrong, waiting much longer would be latency for nothing. (The first few
    samples of the reach get products of many kernels' edge taps, below float64 resolution.)"""
    gen, latents, speaker, _ = setup
    voc = StreamingVocoder(gen, speaker)
    k = 10
    bumped = latents.clone()
    bumped[k] += 1.0
    with torch.inference_mode():
        x = torch.stack([latents, bumped]).double()  # (2, T, C_in)
        wav = gen(x, speaker.double().expand(2, -1, -1))  # (2, T * hop)
    first_changed = torch.nonzero(wav[0] != wav[1])[0].item()
    assert 0 <= first_changed - (k * HOP - voc.lookahead) < 64


def test_first_audio_after_chunk_plus_right_context(setup):
    gen, latents, speaker, whole = setup
    voc = StreamingVocoder(gen, speaker, chunk_frames=2)
    outs = [voc.push(latents[i : i + 1]) for i in range(8)]
    first = 6 * HOP - voc.lookahead  # 2374 samples: all final audio at the 6th frame
    assert [len(o) for o in outs] == [0, 0, 0, 0, 0, first, 0, 2 * HOP]
    np.testing.assert_allclose(outs[5], whole[:first], atol=1e-7, rtol=0)
    assert voc.sample_rate == 22050


def test_streaming_costs_what_whole_vocoding_costs():
    """One frame at a time, every layer computes only its new samples: no recomputed context."""
    gen, speaker = lively_generator(), torch.randn(1, TINY.speaker_channels, 1)
    latents = torch.randn(24, TINY.input_channels)
    with FlopCounterMode(display=False) as whole:
        vocode(gen, latents, speaker)
    voc = StreamingVocoder(gen, speaker, chunk_frames=1)
    per_push = []
    with FlopCounterMode(display=False) as streamed:
        for i in range(len(latents)):
            before = streamed.get_total_flops()
            voc.push(latents[i : i + 1])
            per_push.append(streamed.get_total_flops() - before)
        voc.flush()
    assert streamed.get_total_flops() <= 1.001 * whole.get_total_flops()
    assert len(set(per_push[6:])) == 1  # steady state: the same work for every frame


def held_elements(obj: object, seen: set[int] | None = None) -> int:
    """Elements of every tensor the vocoder's streaming state reaches, weights excluded."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (torch.nn.Module, torch.nn.Parameter)):
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if isinstance(obj, (list, tuple)):
        return sum(held_elements(o, seen) for o in obj)
    if hasattr(obj, "__dict__"):
        return sum(held_elements(o, seen) for o in vars(obj).values())
    return 0


def test_state_does_not_grow_with_the_utterance(setup):
    gen, _, speaker, _ = setup
    latents = torch.randn(60, TINY.input_channels, dtype=torch.float64)
    voc = StreamingVocoder(gen, speaker, chunk_frames=3)
    sizes = {}
    for i in range(60):
        voc.push(latents[i : i + 1])
        sizes[i + 1] = held_elements(voc)
    assert sizes[18] == sizes[30] == sizes[60]  # same place in a chunk, same state


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


def test_a_different_utterance_after_reset_mid_chunk(setup):
    """State left by an utterance cut mid-chunk (held samples in every layer) does not leak."""
    gen, latents, speaker, _ = setup
    other = torch.randn(11, TINY.input_channels, dtype=torch.float64)
    voc = StreamingVocoder(gen, speaker, chunk_frames=3)
    for i in range(7):
        voc.push(latents[i : i + 1])
    voc.reset()
    out = np.concatenate(stream(voc, other, [1] * 11))
    np.testing.assert_allclose(out, vocode(gen, other, speaker), atol=1e-7, rtol=0)


def test_short_utterances(setup):
    """Utterances shorter than the lookahead come out whole at flush; no input, no output."""
    gen, latents, speaker, _ = setup
    voc = StreamingVocoder(gen, speaker)
    for n in (1, 2, 3):
        out = np.concatenate(stream(voc, latents[:n], [1] * n))
        np.testing.assert_allclose(out, vocode(gen, latents[:n], speaker), atol=1e-7, rtol=0)
    assert voc.push(latents[:0]).shape == (0,) and voc.flush().shape == (0,)


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
    assert vocode(gen, torch.zeros(0, 12), speaker).shape == (0,)
