from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mooer.cli import main
from mooer.errors import AudioError, ConfigError
from mooer.train.corpus import Utterance, build_corpus
from mooer.train.synth import (
    CLEAN_PAUSE_S,
    HELDOUT_VOICES,
    MANIFEST_FIELDS,
    MAX_PAD_S,
    PAUSE_RANGE_S,
    TRAIN_VOICES,
    VoiceSpec,
    _pink_noise,
    augment,
    read_manifest,
    spoken,
    synthesize_corpus,
    trimmed,
)
from mooer.tts.espeak import available_variants


def _tone(seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64) ** 2))


@pytest.fixture(scope="module")
def small_corpus() -> list[Utterance]:
    train, _ = build_corpus(12, 0, seed=3)
    return train


@pytest.fixture(scope="module")
def manifest(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return synthesize_corpus(small_corpus, out, TRAIN_VOICES, seed=1, workers=1)


def test_heldout_voices_are_never_trained():
    trained = {(v.voice, v.variant) for v in TRAIN_VOICES}
    held = {(v.voice, v.variant) for v in HELDOUT_VOICES}
    assert not trained & held
    assert {v.variant for v in HELDOUT_VOICES}.isdisjoint({v.variant for v in TRAIN_VOICES})
    for voices in (TRAIN_VOICES, HELDOUT_VOICES):
        assert {v.lang for v in voices} == {"en", "zh"}
        assert all(v.variant in available_variants() for v in voices)


@pytest.mark.parametrize("snr_db", [5.0, 20.0])
def test_augment_adds_noise_at_the_requested_snr(snr_db):
    clean = _tone()
    for seed in range(4):  # both white and pink noise get drawn
        noisy = augment(clean, np.random.default_rng(seed), (snr_db, snr_db), (0.0, 0.0))
        measured = 10 * np.log10(_power(clean) / _power(noisy - clean))
        assert measured == pytest.approx(snr_db, abs=0.01)


def test_augment_applies_gain():
    clean = _tone(amplitude=0.1)
    louder = augment(clean, np.random.default_rng(0), (120, 120), (6.0, 6.0))
    assert 10 * np.log10(_power(louder) / _power(clean)) == pytest.approx(6.0, abs=0.01)


def test_augment_scales_down_instead_of_clipping():
    loud = _tone(amplitude=0.9)
    out = augment(loud, np.random.default_rng(0), (120, 120), (6.0, 6.0))
    assert np.abs(out).max() == pytest.approx(0.99, abs=1e-4)
    # Scaled, not clipped: still a sine of the same shape.
    assert np.corrcoef(out, loud)[0, 1] > 0.9999


def test_augment_keeps_length_and_type_and_is_seeded():
    clean = _tone(0.37)
    a = augment(clean, np.random.default_rng(5))
    b = augment(clean, np.random.default_rng(5))
    assert a.dtype == np.float32 and a.shape == clean.shape
    assert np.array_equal(a, b)


def test_pink_noise_has_more_power_at_low_frequencies():
    noise = _pink_noise(16000, np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(noise)) ** 2  # 1 Hz bins at 16 kHz over one second
    low, high = spectrum[100:200].mean(), spectrum[6400:6500].mean()
    assert 20 < low / high < 200  # 1/f: about 64x between 150 Hz and 6.45 kHz


@pytest.mark.parametrize(
    ("samples", "error"),
    [
        (np.zeros(100, dtype=np.int16), AudioError),
        (np.zeros(0, dtype=np.float32), AudioError),
        (np.full(10, np.nan, dtype=np.float32), AudioError),
    ],
)
def test_augment_refuses_bad_audio(samples, error):
    with pytest.raises(error):
        augment(samples, np.random.default_rng(0))


def test_augment_refuses_inverted_ranges():
    with pytest.raises(ConfigError, match="snr_db_range"):
        augment(_tone(), np.random.default_rng(0), snr_db_range=(40, 10))


def test_manifest_lines_match_the_utterances_and_wavs(manifest, small_corpus):
    lines = manifest.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(small_corpus)
    en_voices = {v.name for v in TRAIN_VOICES if v.lang == "en"}
    zh_voices = {v.name for v in TRAIN_VOICES if v.lang == "zh"}
    for line, utt in zip(lines, small_corpus):
        record = json.loads(line)
        assert set(MANIFEST_FIELDS) <= set(record)
        assert record["audio"] == f"wavs/{utt.id}.wav"  # relative to the manifest
        assert (record["id"], record["text"], record["target"]) == (utt.id, utt.text, utt.target)
        assert record["history"] == [list(turn) for turn in utt.history]
        assert record["voice"] in (zh_voices if utt.lang == "zh" else en_voices)
        samples, rate = sf.read(manifest.parent / record["audio"], dtype="int16")
        info = sf.info(manifest.parent / record["audio"])
        assert rate == 16000 and info.subtype == "PCM_16" and samples.ndim == 1
        assert record["duration"] == pytest.approx(len(samples) / 16000, abs=1e-3)
        assert 0.4 < record["duration"] < 8.0
        assert np.abs(samples).max() > 1000  # speech, not silence


def test_read_manifest_resolves_audio(manifest, small_corpus):
    records = read_manifest(manifest)
    assert [r["id"] for r in records] == [u.id for u in small_corpus]
    for record in records:
        assert Path(record["audio"]).is_absolute() and Path(record["audio"]).is_file()


def test_same_seed_same_choices_whatever_the_worker_count(manifest, small_corpus, tmp_path):
    again = synthesize_corpus(small_corpus, tmp_path, TRAIN_VOICES, seed=1, workers=2)
    first, second = read_manifest(manifest), read_manifest(again)
    assert [r["voice"] for r in first] == [r["voice"] for r in second]
    for a, b in zip(first, second):
        # espeak-ng itself varies by a few milliseconds between calls.
        assert a["duration"] == pytest.approx(b["duration"], abs=0.05)


def test_clean_heldout_audio_has_no_padding_or_noise(tmp_path):
    utt = Utterance("u1", "en", "good morning", "", "asr", "good morning")
    manifest = synthesize_corpus([utt], tmp_path, HELDOUT_VOICES, seed=0, augmented=False)
    (record,) = read_manifest(manifest)
    assert record["voice"] in {v.name for v in HELDOUT_VOICES if v.lang == "en"}
    samples, _ = sf.read(record["audio"], dtype="int16")
    quiet = np.abs(samples[:80]).max()  # the first 5 ms: espeak-ng starts in true silence
    assert quiet < 50


@pytest.mark.parametrize("augmented", [False, True])
def test_a_multi_sentence_item_is_its_sentences_with_pauses(tmp_path, augmented):
    parts = ["today is monday", "the bank is on the left", "thank you"]
    utt = Utterance("m1", "en", " ".join(parts), "", "asr", " ".join(parts), parts=parts)
    voices = HELDOUT_VOICES if not augmented else TRAIN_VOICES
    (record,) = read_manifest(synthesize_corpus([utt], tmp_path, voices, 0, 1, augmented))
    samples, _ = sf.read(record["audio"], dtype="float32")
    if not augmented:  # the sentences, trimmed, in the item's one voice, 150 ms apart
        spec = next(v for v in HELDOUT_VOICES if v.name == record["voice"])
        speech = sum(trimmed(spoken(p, spec, spec.rate, spec.pitch)).size for p in parts) / 16000
        assert record["duration"] == pytest.approx(speech + 2 * CLEAN_PAUSE_S, abs=0.03)
        gaps = _silent_runs(samples, 0.1)
        assert len(gaps) >= 2 and all(g < 0.2 for g in gaps)
        return
    # training: a pause of 100-700 ms between sentences, noise and padding as any item
    alone = [spoken(p, TRAIN_VOICES[0], 175, 50) for p in parts]
    assert record["duration"] > sum(trimmed(a).size for a in alone) / 16000 * 0.8
    assert record["duration"] < sum(a.size for a in alone) / 16000 * 1.25 + 2 * (
        PAUSE_RANGE_S[1] + MAX_PAD_S
    )
    assert record["text"] == " ".join(parts)


def _silent_runs(samples: np.ndarray, shortest_s: float) -> list[float]:
    """Lengths in seconds of the runs of near-silence (-60 dBFS) at least ``shortest_s`` long,
    inside the sound (not before its start or after its end)."""
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    quiet = np.diff(loud) / 16000  # the gaps between loud samples
    return [float(q) for q in quiet if q >= shortest_s]


def test_voices_are_checked_before_any_work(small_corpus, tmp_path):
    with pytest.raises(ConfigError, match="m99"):
        synthesize_corpus(small_corpus, tmp_path, [VoiceSpec("en-us", "m99")], seed=0)
    with pytest.raises(ConfigError, match="language 'zh'"):
        zh = [u for u in small_corpus if u.lang == "zh"]
        synthesize_corpus(zh, tmp_path, [VoiceSpec("en-us", "m1")], seed=0, workers=1)
    assert not (tmp_path / "manifest.jsonl").exists()


def test_duplicate_ids_are_refused(tmp_path):
    utt = Utterance("same", "en", "hello", "", "asr", "hello")
    with pytest.raises(ConfigError, match="unique"):
        synthesize_corpus([utt, utt], tmp_path, TRAIN_VOICES, seed=0)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_manifest_names_the_bad_line(manifest, tmp_path):
    good = manifest.read_text(encoding="utf-8").splitlines()[0]
    bad = _write_lines(tmp_path / "m.jsonl", [good, "{not json"])
    with pytest.raises(ConfigError, match=r"m\.jsonl:2.*JSON"):
        read_manifest(bad)
    record = json.loads(good)
    del record["duration"]
    bad = _write_lines(tmp_path / "m.jsonl", [good, good, json.dumps(record)])
    with pytest.raises(ConfigError, match=r"m\.jsonl:3.*duration"):
        read_manifest(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_manifest(tmp_path / "absent.jsonl")


def test_cli_writes_train_and_heldout(tmp_path):
    args = ["--out", str(tmp_path), "--train", "6", "--heldout", "4", "--workers", "1"]
    assert main(["train", "synth", *args]) == 0
    train = read_manifest(tmp_path / "train" / "manifest.jsonl")
    heldout = read_manifest(tmp_path / "heldout" / "manifest.jsonl")
    assert len(train) == 6 and len(heldout) == 4
    assert {r["voice"] for r in heldout} <= {v.name for v in HELDOUT_VOICES}
    assert {r["voice"] for r in train} <= {v.name for v in TRAIN_VOICES}
