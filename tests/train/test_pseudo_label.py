from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from mooer.cli import main
from mooer.llm.decoding import OFFLINE
from mooer.model import load_model
from mooer.text import language_of
from mooer.train.data import read_manifest
from mooer.train.pseudo_label import pseudo_label, translate_text

EXAMPLES = Path(__file__).parents[2] / "examples" / "audio"
GREEDY = replace(OFFLINE, num_beams=1)


@pytest.fixture(scope="module")
def demo_model():
    return load_model(device="cpu")


def test_language_of_follows_the_script():
    assert language_of("今天星期三") == "zh"
    assert language_of("today is wednesday") == "en"
    assert language_of("") == "en"


def test_labels_examples_into_a_manifest_the_trainer_reads(demo_model, tmp_path):
    wavs = [EXAMPLES / "zh_weather.wav", EXAMPLES / "en_directions.wav"]
    out = tmp_path / "labels" / "manifest.jsonl"
    labels = pseudo_label(
        demo_model, [(w.name, str(w)) for w in wavs], out, translate="speech", options=GREEDY
    )
    assert [(x.task, x.lang, x.target) for x in labels] == [
        ("asr", "zh", "星期一会下雨"),
        ("ast", "zh", "it will rain on monday"),
        ("asr", "en", "the park is to the north"),
    ]
    entries = read_manifest(out)
    assert [e.id for e in entries] == ["zh_weather", "zh_weather-ast", "en_directions"]
    assert [Path(e.audio).resolve() for e in entries] == [w.resolve() for w in (wavs[0], *wavs)]
    assert entries[1].text == "星期一会下雨" and entries[1].translation == "it will rain on monday"


def test_unreadable_inputs_are_left_out(demo_model, tmp_path, capsys):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    good = EXAMPLES / "en_directions.wav"
    out = tmp_path / "m.jsonl"
    labels = pseudo_label(
        demo_model, [("broken", str(broken)), ("good", str(good))], out, options=GREEDY
    )
    assert [x.id for x in labels] == ["good"]
    assert "broken" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == 1


def test_text_mode_translation_gives_one_answer_per_transcript(fabricated):
    model = load_model(fabricated("omni"), device="cpu")
    options = replace(GREEDY, max_new_tokens=4)
    answers = translate_text(model, ["今天很热", "明天下雨", "你好"], options, batch_size=2)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    # a batch decodes as its items one by one
    assert answers[2:] == translate_text(model, ["你好"], options)


def test_main_writes_the_manifest(tmp_path):
    out = tmp_path / "out.jsonl"
    args = [str(EXAMPLES / "en_directions.wav"), "--out", str(out), "--device", "cpu"]
    assert main(["pseudo-label", *args]) == 0
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert line["text"] == line["target"] == "the park is to the north"
    assert line["task"] == "asr" and line["lang"] == "en"


def _label_args(root, out: Path) -> list[str]:
    wav = str(EXAMPLES / "en_directions.wav")
    return ["pseudo-label", wav, "--out", str(out), "--model", str(root),
            "--llm", str(root.parent / "llm"), "--device", "cpu"]  # fmt: skip


def test_translating_from_speech_loads_a_variant_for_asr_and_ast(
    fabricated, mtl_asr_ast, tmp_path, capsys, loaded_variants
):
    speech = ["--translate", "speech", "--batch-size", "1"]
    assert main([*_label_args(mtl_asr_ast, tmp_path / "a.jsonl"), *speech]) == 1
    assert f"no variant of {mtl_asr_ast} serves task 'mtl'" in capsys.readouterr().err
    assert main([*_label_args(fabricated("mtl-5k"), tmp_path / "b.jsonl"), *speech]) == 0
    assert main(_label_args(mtl_asr_ast, tmp_path / "c.jsonl")) == 0
    assert loaded_variants == ["asr_ast_mtl", "asr"]
