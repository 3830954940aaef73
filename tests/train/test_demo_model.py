"""The shipped demo model, scored on held-out speech made at test time.

The utterances are held-out sentences (never in training) spoken by held-out voices (never
heard in training), synthesised here; the thresholds are the issue's, on a smaller set.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mooer.audio import load_audio
from mooer.llm.decoding import OFFLINE
from mooer.model import DEMO_MODEL_DIR, load_model
from mooer.train.corpus import build_corpus
from mooer.train.data import Entry, read_manifest
from mooer.train.demo import EXAMPLES, demo_tasks
from mooer.train.evaluate import chat_parts, decode, evaluate
from mooer.train.synth import HELDOUT_VOICES, synthesize_corpus
from mooer.transcribe import transcribe

EXAMPLE_DIR = Path(__file__).parents[2] / "examples" / "audio"
HELDOUT_UTTERANCES = 60
MAX_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def model(device):
    return load_model(device=str(device))


@pytest.fixture(scope="module")
def heldout_manifest(tmp_path_factory) -> Path:
    # seed 7: another draw from the held-out sentences than the training run's held-out set
    _, heldout = build_corpus(0, HELDOUT_UTTERANCES, seed=7)
    out = tmp_path_factory.mktemp("heldout")
    return synthesize_corpus(heldout, out, HELDOUT_VOICES, seed=7, workers=2, augmented=False)


def test_the_demo_model_is_small_and_in_the_release_flat_layout():
    files = [p for p in DEMO_MODEL_DIR.rglob("*") if p.is_file()]
    names = {p.relative_to(DEMO_MODEL_DIR).as_posix() for p in files}
    assert {"am.mvn", "paraformer-encoder.pth", "adapter_project.pt", "llm/config.json"} <= names
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES


@pytest.fixture(scope="module")
def heldout_summary(model, heldout_manifest) -> dict:
    entries = demo_tasks(read_manifest(heldout_manifest))  # mtl items asked as ast
    return evaluate(model, entries, batch_size=8, options=OFFLINE)[1]


def test_heldout_transcripts_and_translations_meet_the_thresholds(heldout_summary):
    assert heldout_summary["cer_zh"] <= 5.0, heldout_summary
    assert heldout_summary["bleu_zh_en"] >= 50.0, heldout_summary
    # 4.95 % on the model card's 600 utterances; this set has only 18 English ones, where one
    # word is 1 %: a regression guard rather than the target
    assert heldout_summary["wer_en"] <= 10.0, heldout_summary


def test_heldout_chat_meets_the_issue_threshold(heldout_summary):
    assert heldout_summary["chat_exact_match"] >= 90.0, heldout_summary


def test_the_example_recordings_are_understood(model):

    for example in EXAMPLES:
        wav = EXAMPLE_DIR / f"{example.name}.wav"
        if example.task == "chat":
            entry = Entry(example.name, str(wav), "chat", example.text, target=example.answer)
            before, after = chat_parts(entry)
            (answer,) = decode(model, [load_audio(wav)], [before], [after], OFFLINE)
            assert answer == example.answer
            continue
        (result,) = transcribe(model, [str(wav)], task=example.task)
        expected = example.translation if example.task == "ast" else example.text
        assert result.text == expected, example.name
