from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from mooer.asr.segmenter import cut
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.errors import AudioError, ConfigError
from mooer.llm.decoding import OFFLINE
from mooer.llm.prompts import build_prompt
from mooer.model import load_model
from mooer.text import join_texts
from mooer.train.metrics import word_errors
from mooer.train.talk import heldout_sentences, spoken_talk
from mooer.transcribe import SEGMENTER, read_inputs, transcribe

GREEDY = replace(OFFLINE, num_beams=1, max_new_tokens=8)


@pytest.fixture(scope="module")
def omni_model(omni_model):
    return omni_model


@pytest.fixture(scope="module")
def demo_model():
    return load_model()  # the bundled demo model: it understands the template sentences


@pytest.fixture(scope="module")
def mtl_model(fabricated):
    root = fabricated("mtl-5k")
    return load_model(root, llm=root.parent / "llm", task="mtl", device="cpu")


def test_read_inputs_scp_and_jsonl(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "wav.scp").write_text("utt1 a.wav\nutt2 /abs/b.wav\n\n")
    (tmp_path / "list.jsonl").write_text('{"id": "x", "audio": "a.wav"}\n{"path": "c.wav"}\n')
    pairs = read_inputs([str(tmp_path / "wav.scp"), str(tmp_path / "list.jsonl"), "plain.wav"])
    assert pairs == [
        ("utt1", str(tmp_path / "a.wav")),
        ("utt2", "/abs/b.wav"),
        ("x", str(tmp_path / "a.wav")),
        ("c.wav", str(tmp_path / "c.wav")),
        ("plain.wav", "plain.wav"),
    ]
    (tmp_path / "bad.scp").write_text("onlykey\n")
    with pytest.raises(ConfigError, match="bad.scp:1"):
        read_inputs([str(tmp_path / "bad.scp")])
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        read_inputs([str(tmp_path / "bad.jsonl")])


def test_batched_equals_one_by_one(omni_model):
    rng = np.random.default_rng(1)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (8000, 24000, 16000)]
    together = transcribe(omni_model, waves, options=GREEDY, batch_size=3, vad=None)
    alone = [transcribe(omni_model, [w], options=GREEDY, vad=None)[0] for w in waves]
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.text for r in together)  # the random model always says something
    assert [r.duration for r in together] == [0.5, 1.5, 1.0]


def test_a_long_utterance_given_whole_is_split_not_truncated(omni_model):
    samples = np.random.default_rng(2).normal(0, 0.05, 65 * SAMPLE_RATE).astype(np.float32)
    (result,) = transcribe(omni_model, [samples], options=GREEDY, vad=None)
    assert len(result.segments) == len(result.segment_texts) == 3
    assert result.segments[-1][1] == 65.0


def test_a_file_is_cut_by_voice_activity_and_its_segments_are_decoded_alone(
    omni_model, aishell_clips, tmp_path
):
    pause = np.zeros(SAMPLE_RATE, np.float32)
    path = tmp_path / "two.flac"
    sf.write(
        path, np.concatenate([pause, aishell_clips[0], pause, aishell_clips[1], pause]), SAMPLE_RATE
    )
    (result,) = transcribe(omni_model, [path], options=GREEDY)
    samples = load_audio(path)
    utterances = cut(samples, SEGMENTER)
    assert len(utterances) >= 2 and result.duration == round(samples.size / SAMPLE_RATE, 3)
    assert result.segments == [
        (round(u.start / SAMPLE_RATE, 3), round(u.end / SAMPLE_RATE, 3)) for u in utterances
    ]
    assert result.segments[0][0] > 0.8 and result.segments[-1][1] < result.duration - 0.8
    alone = transcribe(omni_model, [u.audio for u in utterances], options=GREEDY, vad=None)
    assert result.segment_texts == [r.text for r in alone]
    assert result.text == join_texts(result.segment_texts)
    # The same samples given as an array are cut the same way.
    (array,) = transcribe(omni_model, [samples], options=GREEDY)
    assert (array.segments, array.segment_texts) == (result.segments, result.segment_texts)


def test_silence_gives_empty_text_no_segments_and_no_decode(omni_model, tmp_path, monkeypatch):
    calls = []
    generate = omni_model.generate
    monkeypatch.setattr(
        omni_model, "generate", lambda *a, **k: calls.append(a) or generate(*a, **k)
    )
    silent = tmp_path / "silent.flac"
    sf.write(silent, np.zeros(90 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    hum = np.random.default_rng(4).normal(0, 1e-3, 30 * SAMPLE_RATE).astype(np.float32)
    results = transcribe(omni_model, [silent, hum], task="mtl", options=GREEDY)
    assert [(r.text, r.translation, r.segments) for r in results] == [("", "", [])] * 2
    assert [r.duration for r in results] == [90.0, 30.0]
    assert calls == []


def test_a_long_file_of_sentences_with_short_pauses_loses_none(demo_model):
    sentences = heldout_sentences(8, "en")
    talk = spoken_talk(sentences, (0.15, 0.4), seed=3)
    samples, spans = talk.audio, talk.spans
    (result,) = transcribe(demo_model, [samples])
    # A pause between sentences always ends a segment; a long stop closure inside one may too
    # (espeak's audio of a sentence varies a little from call to call).
    starts = [start * SAMPLE_RATE for start, _ in result.segments]
    for begin, _ in spans:  # every sentence begins a segment (its 0.5 s pad reaches back)
        assert any(-1600 <= begin - start <= 8000 for start in starts), (begin, starts)
    assert len(result.segments) <= len(sentences) + 1
    assert result.segments[-1][1] * SAMPLE_RATE >= spans[-1][1]
    reference = " ".join(said for said, _ in sentences)
    errors = word_errors(reference, result.text)
    # No sentence lost (few words missing); a sentence split at a stop closure can be misread
    assert errors.dels <= 0.1 * errors.ref_len, (result.text, reference)
    assert errors.errors <= 0.3 * errors.ref_len, (result.text, reference)


def test_mtl_answer_gives_transcript_and_translation(mtl_model):
    wave = np.random.default_rng(3).normal(0, 0.1, SAMPLE_RATE).astype(np.float32)
    (r,) = transcribe(mtl_model, [wave], task="mtl", options=GREEDY, vad=None)
    assert r.translation is not None
    raw = mtl_model.generate([wave], [build_prompt("ast")], GREEDY)[0]
    transcript, translation = raw.split("\n", 1) if "\n" in raw else (raw, "")
    assert r.text == transcript.strip() and r.translation == translation.strip()
    assert json.loads(r.to_json())["translation"] == r.translation


def test_bad_inputs(omni_model, tmp_path):
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"definitely not audio" * 10)
    with pytest.raises(AudioError, match="junk.wav"):
        transcribe(omni_model, [junk])
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    results = transcribe(omni_model, [junk, silent], options=GREEDY, keep_going=True)
    assert results[0].error and "junk.wav" in results[0].error
    assert results[1].error is None and results[1].duration == 1.0 and results[1].text == ""
    with pytest.raises(ConfigError, match="unknown task"):
        transcribe(omni_model, [silent], task="dictation")
    tiny = transcribe(omni_model, [np.zeros(100, np.float32)], options=GREEDY)
    assert tiny[0].error is None and tiny[0].segments == []
    with pytest.raises(ConfigError, match="max_seconds"):
        transcribe(omni_model, [silent], max_seconds=0)
