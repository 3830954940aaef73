from __future__ import annotations

import numpy as np
import pytest
import torch

from mooer.asr.frontend import Cmvn, Frontend, fbank, lfr, num_frames
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.errors import AudioError, CheckpointError, ConfigError


@pytest.fixture(scope="module")
def cmvn() -> Cmvn:
    rng = np.random.default_rng(0)
    return Cmvn(rng.normal(-8, 2, 560), rng.uniform(0.1, 0.5, 560))


@pytest.fixture(scope="module")
def cmvn_file(cmvn, tmp_path_factory):
    path = tmp_path_factory.mktemp("cmvn") / "am.mvn"
    cmvn.save(path)
    return path


def funasr_features(samples: np.ndarray, cmvn_file) -> torch.Tensor:
    from funasr.frontends.wav_frontend import WavFrontend

    reference = WavFrontend(
        cmvn_file=str(cmvn_file),
        fs=16000,
        window="hamming",
        n_mels=80,
        frame_length=25,
        frame_shift=10,
        lfr_m=7,
        lfr_n=6,
        dither=0.0,
    )
    feats, lengths = reference(torch.from_numpy(samples)[None], torch.tensor([len(samples)]))
    return feats[0, : lengths[0]]


def test_matches_funasr_on_real_speech(aishell_wav, cmvn, cmvn_file):
    samples = load_audio(aishell_wav)
    ours = Frontend(cmvn)(samples)
    assert ours.shape == (num_frames(len(samples)), 560)
    torch.testing.assert_close(ours, funasr_features(samples, cmvn_file), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("num_samples", [400, 1360, 16000 * 3 + 123])
def test_matches_funasr_on_noise(cmvn, cmvn_file, num_samples):
    samples = np.random.default_rng(num_samples).uniform(-0.5, 0.5, num_samples).astype(np.float32)
    ours = Frontend(cmvn)(samples)
    torch.testing.assert_close(ours, funasr_features(samples, cmvn_file), atol=1e-4, rtol=1e-5)


def test_ten_seconds_give_998_fbank_and_167_lfr_frames():
    samples = np.random.default_rng(1).uniform(-0.1, 0.1, 10 * SAMPLE_RATE).astype(np.float32)
    feats = fbank(samples)
    assert feats.shape == (998, 80)
    assert lfr(feats).shape == (167, 560)
    assert num_frames(10 * SAMPLE_RATE) == 167
    assert Frontend(Cmvn.identity())(samples).shape == (167, 560)


@pytest.mark.parametrize("num_samples", [0, 399, 400, 559, 560, 1360, 1361, 16000, 160000])
def test_num_frames_counts_what_the_front_end_makes(num_samples):
    samples = np.zeros(num_samples, np.float32)
    assert len(lfr(fbank(samples))) == num_frames(num_samples)


def test_fbank_puts_a_tone_in_the_right_mel_bin():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    low, high = (fbank((0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)) for f in (300, 4000))
    assert low.mean(0).argmax() < 20 < 50 < high.mean(0).argmax()


def test_lfr_stacks_seven_frames_every_six_with_edge_padding():
    feats = np.arange(10, dtype=np.float32)[:, None]  # frame i holds the value i
    out = lfr(feats)  # ceil(10 / 6) = 2 frames
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 1, 2, 3])  # 3 copies of frame 0 in front
    np.testing.assert_array_equal(out[1], [3, 4, 5, 6, 7, 8, 9])
    np.testing.assert_array_equal(lfr(feats[:8])[1], [3, 4, 5, 6, 7, 7, 7])  # last frame repeated


def test_silence_gives_finite_frames():
    feats = Frontend(Cmvn.identity())(np.zeros(SAMPLE_RATE, np.float32))
    assert feats.shape == (num_frames(SAMPLE_RATE), 560) and torch.isfinite(feats).all()


def test_batch_pads_and_reports_lengths(cmvn):
    frontend = Frontend(cmvn)
    rng = np.random.default_rng(2)
    clips = [rng.uniform(-0.3, 0.3, n).astype(np.float32) for n in (16000, 5000, 30000)]
    feats, lengths = frontend.batch(clips)
    assert feats.shape == (3, num_frames(30000), 560) and lengths.dtype == torch.int64
    assert lengths.tolist() == [num_frames(len(c)) for c in clips]
    torch.testing.assert_close(feats[1, : lengths[1]], frontend(clips[1]))
    assert feats[1, lengths[1] :].abs().sum() == 0


def test_cmvn_round_trips_through_the_released_text_format(cmvn, cmvn_file):
    from funasr.frontends.wav_frontend import load_cmvn

    text = cmvn_file.read_text()
    assert text.startswith(
        "<Nnet>\n<Splice> 560 560\n[ 0 ]\n<AddShift> 560 560\n<LearnRateCoef> 0 [ "
    )
    assert text.endswith("]\n</Nnet>\n")
    loaded = Cmvn.load(cmvn_file)
    np.testing.assert_array_equal(loaded.shift, cmvn.shift)
    np.testing.assert_array_equal(loaded.rescale, cmvn.rescale)
    reference = load_cmvn(str(cmvn_file)).numpy()
    np.testing.assert_array_equal(reference, np.stack([cmvn.shift, cmvn.rescale]))


def test_cmvn_identity_changes_nothing():
    feats = np.random.default_rng(3).normal(size=(4, 560)).astype(np.float32)
    np.testing.assert_array_equal(Cmvn.identity().apply(feats), feats)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no well-formed <AddShift>"),
        ("<Nnet> <AddShift> 2 2 <LearnRateCoef> 0 [ 1 2 ] </Nnet>", "no well-formed <Rescale>"),
        (
            "<AddShift> 3 3 <LearnRateCoef> 0 [ 1 2 ] <Rescale> 3 3 <LearnRateCoef> 0 [ 1 2 3 ]",
            "<AddShift> declares 3x3 but holds 2",
        ),
        (
            "<AddShift> 2 2 <LearnRateCoef> 0 [ 1 x ] <Rescale> 2 2 <LearnRateCoef> 0 [ 1 2 ]",
            "non-number",
        ),
        (
            "<AddShift> 2 2 <LearnRateCoef> 0 [ 1 2 ] <Rescale> 2 2 <LearnRateCoef> 0 [ 1 nan ]",
            "NaN",
        ),
    ],
)
def test_malformed_cmvn_file(tmp_path, text, message):
    path = tmp_path / "am.mvn"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=message):
        Cmvn.load(path)


def test_missing_cmvn_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.mvn"):
        Cmvn.load(tmp_path / "missing.mvn")


def test_cmvn_of_the_wrong_size_is_refused():
    with pytest.raises(ConfigError, match="80 dims"):
        Frontend(Cmvn.identity(80))


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros(399, np.float32), "shorter than one 25 ms frame"),
        (np.full(1000, np.nan, np.float32), "NaN"),
        (np.zeros(0, np.float32), "no samples"),
    ],
)
def test_unusable_audio(samples, message):
    with pytest.raises(AudioError, match=message):
        Frontend(Cmvn.identity())(samples)
