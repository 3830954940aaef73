from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from mooer import tasks
from mooer.audio import SAMPLE_RATE
from mooer.cli import main
from mooer.llm.decoding import OFFLINE
from mooer.llm.prompts import build_prompt
from mooer.model import load_model
from mooer.train.data import Entry
from mooer.train.evaluate import decode, format_table, score_entry, summarize

GREEDY = replace(OFFLINE, num_beams=1, max_new_tokens=6)


def _entry(task: str, lang: str, text: str, translation: str = "", target: str = "") -> Entry:
    return Entry(f"{task}-{text}", "x.wav", task, text, translation, target or text, lang=lang)


def test_scores_match_hand_computed_values():
    scored = [
        # WER: 1 substitution + 1 insertion over 6 words, then 0 over 4 (case and "?" normalised)
        score_entry(
            _entry("asr", "en", "turn left at the second crossing"),
            "turn right at the second crossing please",
        ),
        score_entry(_entry("asr", "en", "where is the bank"), "Where is the bank?"),
        # CER: 1 of 4 characters, then the transcript of an mtl answer, 0 of 4
        score_entry(_entry("asr", "zh", "今天很热"), "今天很冷"),
        score_entry(
            _entry("mtl", "zh", "明天下雨", "it will rain tomorrow"),
            "明天下雨\nit will rain tomorrow",
        ),
        score_entry(
            _entry("ast", "zh", "我想要一个蓝色的包", "i want a blue bag"), "i want a red bag"
        ),
        # chat: exact match after normalisation
        score_entry(_entry("chat", "en", "what is three plus four", target="seven"), "Seven."),
        score_entry(_entry("chat", "en", "what is four plus five", target="nine"), "eight"),
    ]
    assert [(s.errors, s.ref_len) for s in scored[:4]] == [(2, 6), (0, 4), (1, 4), (0, 4)]
    assert scored[3].hyp == "明天下雨" and scored[3].hyp_translation == "it will rain tomorrow"
    summary = summarize(scored, audio_s=20.0, decode_s=1.0)
    assert summary["wer_en"] == 20.0  # 2 / 10
    assert summary["cer_zh"] == 12.5  # 1 / 8
    assert summary["chat_exact_match"] == 50.0
    assert summary["rtf"] == 0.05
    # BLEU over both translations: n-gram matches 8/9, 5/7, 3/5, 1/3; equal lengths, no penalty
    expected = 100 * math.exp(sum(math.log(p) for p in (8 / 9, 5 / 7, 3 / 5, 1 / 3)) / 4)
    assert summary["bleu_zh_en"] == pytest.approx(expected, abs=0.01)
    assert summary["bleu_zh_en_utterances"] == 2 and summary["chat_exact_match_utterances"] == 2


def test_summary_leaves_out_metrics_without_utterances_and_table_lists_the_rest():
    summary = summarize([score_entry(_entry("asr", "en", "hello"), "hello")])
    assert summary == {"utterances": 1, "wer_en": 0.0, "wer_en_utterances": 1}
    lines = format_table({**summary, "chat_exact_match": 90.0, "chat_exact_match_utterances": 10})
    assert lines.splitlines()[0].split() == ["metric", "value", "utterances"]
    assert lines.splitlines()[1].split()[-2:] == ["0", "1"]
    assert lines.splitlines()[2].split()[-2:] == ["90", "10"]


@pytest.fixture(scope="module")
def omni_model(fabricated):
    return load_model(fabricated("omni"), device="cpu")


def test_decode_without_prefix_is_plain_generation(omni_model):
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 24000)]
    prompts = [build_prompt("asr")] * 2
    assert decode(omni_model, waves, ["", ""], prompts, GREEDY) == omni_model.generate(
        waves, prompts, GREEDY
    )


def test_decode_with_history_prefix_is_batch_invariant(omni_model):
    from mooer.llm.conversation import history_prefix, question_suffix

    rng = np.random.default_rng(1)
    waves = [rng.normal(0, 0.1, n).astype(np.float32) for n in (16000, 20000)]
    prefixes = [history_prefix([("what is two plus two", "four")]), history_prefix([])]
    suffixes = [question_suffix()] * 2
    together = decode(omni_model, waves, prefixes, suffixes, GREEDY)
    alone = [
        decode(omni_model, [w], [p], [s], GREEDY)[0] for w, p, s in zip(waves, prefixes, suffixes)
    ]
    assert together == alone


def test_decode_places_the_prefix_before_the_audio(omni_model):
    """An independent greedy loop over [prefix | audio | suffix] embeddings gives the same ids."""
    import torch

    from mooer.llm.conversation import history_prefix, question_suffix

    model, tok = omni_model, omni_model.tokenizer
    wave = np.random.default_rng(2).normal(0, 0.1, 16000).astype(np.float32)
    prefix, suffix = history_prefix([("hi", "hello")]), question_suffix()
    audio, n = model.embed([wave])
    embed = model.llm.get_input_embeddings()

    def ids(text):
        return torch.tensor(tok(text, add_special_tokens=False)["input_ids"])

    x = torch.cat([embed(ids(prefix)), audio[0, : int(n[0])], embed(ids(suffix))])[None]
    chosen = []
    with torch.inference_mode():
        for _ in range(GREEDY.max_new_tokens):
            token = int(model.llm(inputs_embeds=x).logits[0, -1].argmax())
            if token == tok.convert_tokens_to_ids("<|im_end|>"):
                break
            chosen.append(token)
            x = torch.cat([x, embed(torch.tensor([[token]]))], dim=1)
    expected = tok.decode(chosen, skip_special_tokens=True).strip()
    assert decode(model, [wave], [prefix], [suffix], GREEDY) == [expected]


def test_main_writes_hypotheses_and_summary(fabricated, tmp_path, capsys):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    sf.write(
        tmp_path / "a.wav", (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32), SAMPLE_RATE
    )
    lines = [
        {"id": "u1", "audio": "a.wav", "task": "asr", "lang": "en", "text": "hello there"},
        {
            "id": "u2",
            "audio": "a.wav",
            "task": "chat",
            "lang": "en",
            "text": "hi",
            "target": "hello",
            "history": [["what is one plus one", "two"]],
        },
    ]
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "report"
    args = ["--model", str(fabricated("omni")), str(manifest), "--out", str(out), "--beams", "1"]
    assert main(["eval", *args, "--device", "cpu"]) == 0
    hyps = [json.loads(x) for x in (out / "hyps.jsonl").read_text().splitlines()]
    assert [h["id"] for h in hyps] == ["u1", "u2"]
    assert hyps[1]["ref"] == "hello" and hyps[1]["correct"] in (True, False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["utterances"] == 2 and summary["wer_en_utterances"] == 1
    assert summary["audio_seconds"] == 2.0 and summary["rtf"] > 0
    assert "English WER %" in (out / "summary.txt").read_text()
    assert "chat exact match %" in capsys.readouterr().out


def test_main_reports_a_bad_test_set_without_a_traceback(tmp_path, capsys):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"id": "u1", "task": "asr"}\n')
    assert main(["eval", str(manifest)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_main_refuses_text_only_lines_by_name(tmp_path, capsys):
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text('{"id": "t1", "task": "chat_text", "text": "hi", "target": "hello"}\n')
    assert main(["eval", str(manifest)]) == 1
    assert "t1: a chat_text item has no audio to score" in capsys.readouterr().err


def _asr_and_ast_set(folder) -> str:
    """A one-second wav and a test set asking it for a transcript and a translation."""
    sf.write(folder / "a.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    lines = [
        {"id": "t", "audio": "a.wav", "task": "asr", "lang": "zh", "text": "你好"},
        {"id": "s", "audio": "a.wav", "task": "ast", "lang": "zh", "text": "你好",
         "translation": "hello"},
    ]  # fmt: skip
    (folder / "test.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return str(folder / "test.jsonl")


def _eval_args(root, testset: str) -> list[str]:
    return ["eval", testset, "--model", str(root), "--llm", str(root.parent / "llm"),
            "--device", "cpu", "--beams", "1"]  # fmt: skip


def test_an_asr_and_ast_set_is_refused_by_a_folder_without_a_variant_for_both(
    mtl_asr_ast, tmp_path, capsys, loaded_variants
):
    assert main(_eval_args(mtl_asr_ast, _asr_and_ast_set(tmp_path))) == 1
    err = capsys.readouterr().err
    assert f"no variant of {mtl_asr_ast} serves task 'mtl': it has asr, ast" in err
    assert loaded_variants == []


def test_variant_asr_decodes_the_whole_set(mtl_asr_ast, tmp_path, capsys, loaded_variants):
    args = [*_eval_args(mtl_asr_ast, _asr_and_ast_set(tmp_path)), "--variant", "asr"]
    assert main([*args, "--out", str(tmp_path / "report")]) == 0
    assert loaded_variants == ["asr"]
    hyps = (tmp_path / "report" / "hyps.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in hyps) == ["s", "t"]
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["variant"] == "asr"


def test_mtl_items_on_another_variant_are_refused_before_any_decoding(
    fabricated, tmp_path, capsys, monkeypatch
):
    decoded = []
    monkeypatch.setattr(tasks, "decode", lambda *a, **k: decoded.append(a) or [])
    testset = _asr_and_ast_set(tmp_path)
    line = {"id": "m", "audio": "a.wav", "task": "mtl", "lang": "zh", "text": "你好",
            "translation": "hello"}  # fmt: skip
    with open(testset, "a") as f:
        f.write(json.dumps(line) + "\n")
    args = [*_eval_args(fabricated("mtl-5k"), testset), "--variant", "ast"]
    assert main([*args, "--out", str(tmp_path / "report")]) == 1
    assert "task mtl needs the asr_ast_mtl variant" in capsys.readouterr().err
    assert decoded == [] and not (tmp_path / "report").exists()


def test_an_asr_and_ast_set_loads_the_mtl_variant(fabricated, tmp_path, loaded_variants):
    assert main(_eval_args(fabricated("mtl-5k"), _asr_and_ast_set(tmp_path))) == 0
    assert loaded_variants == ["asr_ast_mtl"]


@pytest.mark.parametrize("command", ["eval", "pseudo-label"])
def test_help_lists_the_model_flags(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--model", "--llm", "--variant", "--device", "--dtype", "--heads", "--quantize"):
        assert flag in usage
