from __future__ import annotations

import importlib.util
from pathlib import Path

import librosa  # reference for the mel front end (a funasr dependency)
import numpy as np
import pytest
import soundfile as sf
import torch

from mooer.audio import load_audio
from mooer.errors import AudioError, CheckpointError
from mooer.tts.speaker_encoder import (
    ResNetSpeakerEncoder,
    SpeakerEncoderConfig,
    load_speaker_encoder,
    mel_filterbank,
    speaker_embedding,
    speaker_embedding_from_file,
)

ASSETS = Path(importlib.util.find_spec("s3tokenizer").submodule_search_locations[0]) / "assets"
SPEECH = ASSETS / "BAC009S0764W0121.wav"  # real 16 kHz Mandarin speech
TINY = SpeakerEncoderConfig(layers=(1, 1, 1, 1), filters=(8, 8, 16, 16), proj_dim=24)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(SPEECH)


@pytest.fixture(scope="module")
def encoder() -> ResNetSpeakerEncoder:
    torch.manual_seed(0)
    enc = ResNetSpeakerEncoder(TINY)
    with torch.no_grad():  # trained-looking batch-norm statistics, so eval mode is not identity
        for m in enc.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def test_release_shapes_and_parameter_count_on_meta():
    with torch.device("meta"):
        enc = ResNetSpeakerEncoder(SpeakerEncoderConfig())
    state = enc.state_dict()
    assert sum(p.numel() for p in enc.parameters()) == 8_028_492
    # 295 entries: parameters, batch-norm statistics and the front end's three buffers.
    assert len(state) == 295
    expected = {
        "torch_spec.0.filter": (1, 1, 2),
        "torch_spec.1.spectrogram.window": (400,),
        "torch_spec.1.mel_scale.fb": (257, 64),
        "conv1.weight": (32, 1, 3, 3),
        "conv1.bias": (32,),
        "layer1.0.se.fc.0.weight": (4, 32),
        "layer2.0.downsample.0.weight": (64, 32, 1, 1),
        "layer2.0.downsample.1.running_var": (64,),
        "layer3.5.conv2.weight": (128, 128, 3, 3),
        "layer4.2.se.fc.2.weight": (256, 32),
        "attention.0.weight": (128, 2048, 1),
        "attention.2.running_mean": (128,),
        "attention.3.weight": (2048, 128, 1),
        "fc.weight": (512, 4096),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert "layer1.0.downsample.0.weight" not in state  # stage 1 keeps shape: no projection
    assert not any(k.startswith("instancenorm") for k in state)


def test_filterbank_matches_librosa_htk():
    ours = mel_filterbank(257, 64, 16000).numpy()  # (257, 64)
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=64, htk=True, norm=None)  # (64, 257)
    np.testing.assert_allclose(ours, ref.T, atol=1e-5)


def test_mel_front_end_matches_librosa_on_speech(encoder, speech):
    x = speech[: 3 * 16000]
    emphasised = np.concatenate([[x[0] - 0.97 * x[1]], x[1:] - 0.97 * x[:-1]]).astype(np.float32)
    ref = librosa.feature.melspectrogram(
        y=emphasised, sr=16000, n_fft=512, hop_length=160, win_length=400, window="hamming",
        center=True, pad_mode="reflect", power=2.0, n_mels=64, htk=True, norm=None,
    )  # fmt: skip
    with torch.no_grad():
        ours = encoder.torch_spec(torch.from_numpy(x)[None])[0].numpy()  # (64, 301)
    assert ours.shape == ref.shape == (64, 301)
    np.testing.assert_allclose(np.log(ours + 1e-6), np.log(ref + 1e-6), atol=1e-3)


def test_preemphasis_reflects_the_first_sample():
    enc = ResNetSpeakerEncoder(TINY)
    out = enc.torch_spec[0](torch.tensor([[1.0, 2.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0 - 0.97 * 2.0, 2.0 - 0.97, 4.0 - 1.94]]))


def test_embedding_shape_norm_and_batch_consistency(encoder, speech):
    emb = speaker_embedding(encoder, speech)
    assert emb.shape == (1, 24, 1) and emb.dtype == torch.float32
    assert torch.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        raw = encoder(torch.from_numpy(speech[None]).repeat(2, 1))  # (2, 24)
    torch.testing.assert_close(torch.nn.functional.normalize(raw[:1], dim=1)[..., None], emb)


def test_full_size_encoder_runs(speech):
    torch.manual_seed(0)
    enc = ResNetSpeakerEncoder().eval()
    emb = speaker_embedding(enc, speech[:16000])
    assert emb.shape == (1, 512, 1) and torch.isfinite(emb).all()


def test_other_rates_and_stereo_are_converted_first(encoder, speech):
    """48 kHz stereo of the same speech lands next to the original, far from other speech."""
    base = speaker_embedding(encoder, speech)
    stereo_48k = librosa.resample(speech, orig_sr=16000, target_sr=48000)[:, None].repeat(2, axis=1)
    converted = speaker_embedding(encoder, stereo_48k, sample_rate=48000)
    other = speaker_embedding(encoder, load_audio(ASSETS / "BAC009S0764W0122.wav"))
    to_other = torch.linalg.norm(base - other)
    assert to_other > 0.01
    assert torch.linalg.norm(base - converted) < 0.05 * to_other


def test_from_file_equals_from_array(encoder, speech):
    torch.testing.assert_close(
        speaker_embedding_from_file(encoder, SPEECH), speaker_embedding(encoder, speech)
    )


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros(0, np.float32), "no samples"),
        (np.full(16000, np.nan, np.float32), "NaN"),
        (np.random.default_rng(0).normal(0, 0.1, 4000).astype(np.float32), "0.25 s long"),
        (np.zeros(32000, np.float32), "silent"),
        (np.full(32000, 1e-4, np.float32), "silent"),
    ],
    ids=["empty", "nan", "short", "zeros", "hum"],
)
def test_unusable_prompt_audio(encoder, samples, message):
    with pytest.raises(AudioError, match=message):
        speaker_embedding(encoder, samples)


def test_silent_file_is_named(encoder, tmp_path):
    path = tmp_path / "prompt.wav"
    sf.write(path, np.zeros(16000, np.int16), 16000)
    with pytest.raises(AudioError, match=r"prompt\.wav is silent"):
        speaker_embedding_from_file(encoder, path)


def test_load_round_trip(encoder, speech, tmp_path):
    path = tmp_path / "spk_00112000"
    torch.save({"speaker_encoder": encoder.state_dict()}, path)
    loaded = load_speaker_encoder(path, TINY)
    assert not loaded.training
    torch.testing.assert_close(
        speaker_embedding(loaded, speech), speaker_embedding(encoder, speech)
    )


def test_load_errors_name_the_fault(encoder, tmp_path):
    state = encoder.state_dict()
    del state["torch_spec.1.mel_scale.fb"]
    path = tmp_path / "spk"
    torch.save({"speaker_encoder": state}, path)
    with pytest.raises(CheckpointError, match=r"missing keys torch_spec\.1\.mel_scale\.fb"):
        load_speaker_encoder(path, TINY)
    state = encoder.state_dict()
    state["fc.weight"] = torch.zeros(24, 100)
    torch.save({"speaker_encoder": state}, path)
    with pytest.raises(CheckpointError, match=r"fc\.weight \(24, 100\) \(expected \(24, 256\)\)"):
        load_speaker_encoder(path, TINY)
    torch.save({"generator": {}}, path)
    with pytest.raises(CheckpointError, match="no 'speaker_encoder' entry"):
        load_speaker_encoder(path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_speaker_encoder(path)
