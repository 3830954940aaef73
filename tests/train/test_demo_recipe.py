"""The demo model's recipe end to end at toy size: every stage runs, resumes, and exports a
model that the ordinary loader reads (the real run only changes the sizes)."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from mooer.cli import main
from mooer.errors import ConfigError
from mooer.model import load_model
from mooer.train.demo import DemoConfig, average_weights, leg_record

TINY = ["--train", "40", "--heldout", "12", "--ctc-steps", "2", "--llm-steps", "2"]


def demo(args: list[str]) -> int:
    """``mooer train demo ARGS`` as a user runs it."""
    return main(["train", "demo", *args])


def refused(capsys, args: list[str], message: str) -> None:
    """``mooer train demo ARGS`` stops with exit code 2 and one line matching ``message``."""
    assert demo(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert demo(["--out", str(out), "--workers", "1", *TINY]) == 0
    return out


def test_every_stage_runs_and_the_export_loads(run_dir):
    summary = json.loads((run_dir / "model" / "eval" / "summary.json").read_text())
    for key in ("wer_en", "cer_zh", "bleu_zh_en", "chat_exact_match", "rtf"):
        assert key in summary
    assert summary["utterances"] == 12
    model = load_model(run_dir / "model")
    assert model.adapter.llm_dim == model.llm.config.hidden_size
    log = [json.loads(line) for line in open(run_dir / "llm" / "train_log.jsonl")]
    assert log[-1]["step"] == 2


def test_a_finished_run_is_not_redone(run_dir, caplog):
    before = (run_dir / "llm" / "final.pt").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="mooer.train.demo"):
        assert demo(["--out", str(run_dir), *TINY]) == 0
    assert (run_dir / "llm" / "final.pt").stat().st_mtime_ns == before
    assert sum("done before, skipped" in r.getMessage() for r in caplog.records) == 7


def test_a_work_folder_refuses_a_run_that_asks_for_other_data(run_dir, capsys):
    made = json.loads((run_dir / "work_folder.json").read_text())
    assert made == {"seed": 0, "n_train": 40, "n_heldout": 12, "vocab_size": 1200}
    args = ["--out", str(run_dir), *TINY]
    refused(capsys, [*args, "--seed", "1"], r"holds data made with seed 0 \(asked: 1\); give")
    refused(capsys, [*args, "--train", "41", "--stages", "eval"], r"n_train 40 \(asked: 41\)")
    assert json.loads((run_dir / "work_folder.json").read_text()) == made


def test_a_damaged_work_folder_record_is_named(tmp_path, capsys):
    (tmp_path / "work_folder.json").write_text('{"seed": 0,')
    refused(capsys, ["--out", str(tmp_path), *TINY], r"work_folder.json is not valid JSON")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work_folder.json"]  # nothing made


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--main-repeats", "0"],
            r"--main-repeats \(DemoConfig.main_repeats\) must be >= 1, got 0",
        ),
        (["--extra-chat", "-1"], r"--extra-chat \(DemoConfig.extra_chat\) must be >= 0, got -1"),
        (["--train", "0"], r"--train \(DemoConfig.n_train\) must be >= 1, got 0"),
        (["--llm-lr", "0"], r"--llm-lr must be > 0, got 0.0"),
    ],
)
def test_counts_out_of_range_are_refused_by_flag(tmp_path, capsys, flags, message):
    refused(capsys, ["--out", str(tmp_path / "never"), *flags], message)
    assert not (tmp_path / "never").exists()  # refused before anything was made
    assert DemoConfig(chat_repeats=0).chat_repeats == 0  # no chat is allowed


def test_a_later_leg_starts_from_the_earlier_legs_weights(run_dir):
    first = torch.load(run_dir / "llm" / "final.pt")
    leg = ["--stages", "llm", "--llm-leg", "leg2", "--llm-lr", "1e-12"]
    assert (
        demo(["--out", str(run_dir), *TINY, *leg, "--llm-init", str(run_dir / "llm" / "final.pt")])
        == 0
    )
    resumed = torch.load(run_dir / "leg2" / "final.pt")
    assert (
        demo(
            [
                "--out",
                str(run_dir),
                *TINY,
                "--stages",
                "llm",
                "--llm-leg",
                "fresh",
                "--llm-lr",
                "1e-12",
            ]
        )
        == 0
    )
    fresh = torch.load(run_dir / "fresh" / "final.pt")
    name = "llm.model.layers.0.mlp.gate_proj.weight"
    assert (resumed[name] - first[name]).abs().max() < 1e-7  # the first leg's trained weights
    assert (fresh[name] - first[name]).abs().max() > 1e-4  # not the initial weights
    record = leg_record(run_dir / "leg2" / "final.pt")
    assert record["leg"] == "leg2" and list(record["legs"]) == ["llm", "leg2"]
    assert record["legs"]["leg2"]["settings"]["llm_lr"] == 1e-12
    assert record["legs"]["leg2"]["init"] == "llm"
    assert record["legs"]["llm"] == leg_record(run_dir / "llm" / "final.pt")["legs"]["llm"]
    assert record["legs"]["llm"]["settings"]["llm_lr"] == DemoConfig().llm_lr


def test_a_leg_can_grow_the_llm_and_train_only_its_new_layers(run_dir, capsys):
    first = run_dir / "llm" / "final.pt"
    # at a vanishing rate the grown model computes what the 4-layer one did
    leg = ["--stages", "llm", "export", "--llm-leg", "deeper", "--llm-layers", "8"]
    assert (
        demo(["--out", str(run_dir), *TINY, *leg, "--llm-lr", "1e-12", "--llm-init", str(first)])
        == 0
    )
    shallow, deep = load_model(run_dir / "model"), load_model(run_dir / "model-deeper")
    assert (shallow.llm.config.num_hidden_layers, deep.llm.config.num_hidden_layers) == (4, 8)
    ids = torch.arange(3, 40).view(1, -1)  # (1, 37) token ids
    with torch.no_grad():
        assert torch.allclose(shallow.llm(ids).logits, deep.llm(ids).logits, atol=1e-5)
    # --new-layers-only: the embeddings, adapter and trained layers stay, the new layers learn
    leg = ["--stages", "llm", "--llm-leg", "new-only", "--llm-layers", "8", "--new-layers-only"]
    assert demo(["--out", str(run_dir), *TINY, *leg, "--llm-init", str(first)]) == 0
    before, after = torch.load(first), torch.load(run_dir / "new-only" / "final.pt")
    for name in ("adapter.linear1.weight", "llm.model.embed_tokens.weight"):
        assert torch.equal(before[name], after[name])
    for i in range(4):  # trained layer i is layer 2 i, frozen; the layers between have learnt
        old = f"llm.model.layers.{i}.mlp.down_proj.weight"
        assert torch.equal(before[old], after[f"llm.model.layers.{2 * i}.mlp.down_proj.weight"])
        assert after[f"llm.model.layers.{2 * i + 1}.mlp.down_proj.weight"].abs().max() > 1e-4
    settings = leg_record(run_dir / "new-only" / "final.pt")["legs"]["new-only"]["settings"]
    assert (settings["llm_layers"], settings["new_layers_only"]) == (8, True)
    odd = ["--stages", "llm", "--llm-leg", "odd", "--llm-layers", "6", "--llm-init", str(first)]
    refused(
        capsys, ["--out", str(run_dir), *TINY, *odd], r"--llm-layers 6: must be a multiple of the 4"
    )
    grown = [
        "--stages",
        "llm",
        "export",
        "--llm-leg",
        "again",
        "--llm-init",
        str(run_dir / "new-only" / "final.pt"),
    ]
    refused(
        capsys,
        ["--out", str(run_dir), *TINY, *grown],
        r"starts from: an LLM of 8 layers; give --llm-layers 8",
    )
    refused(
        capsys,
        ["--out", str(run_dir), *TINY, "--stages", "export", "--llm-leg", "new-only"],
        r"new-only/final.pt: an LLM of 8 layers; give --llm-layers 8",
    )
    frozen = ["--stages", "llm", "--llm-leg", "frozen", "--new-layers-only"]
    refused(
        capsys, ["--out", str(run_dir), *TINY, *frozen], r"--new-layers-only needs --llm-layers"
    )


def test_chat_questions_are_also_transcribed():
    from mooer.train.data import Entry
    from mooer.train.demo import CachedSet

    chat = Entry(
        "c", "", "chat", "and plus two", target="seven", history=[("two plus three", "five")]
    )
    asr = Entry("a", "", "asr", "go west", target="go west")
    frames = [torch.randn(5, 4), torch.randn(3, 4)]
    items = CachedSet([chat, asr], frames).transcribed("chat")
    assert [(e.task, e.target, e.history) for e in items.entries] == [("asr", "and plus two", [])]
    assert items.frames[0] is frames[0]  # the same audio, not a copy


def test_what_a_leg_trains_on():
    from mooer.train.data import Entry
    from mooer.train.demo import CachedSet, _leg_set

    def chat_set(*questions):
        entries = [Entry(q, "", "chat", q, target="x") for q in questions]
        return CachedSet(entries, [torch.randn(3, 4) for _ in questions])

    main_set = chat_set("two plus three") + CachedSet(
        [Entry("a", "", "asr", "go west", target="go west")], [torch.randn(3, 4)]
    )
    extra = chat_set("and plus two", "what day is it")
    cfg = DemoConfig(chat_repeats=2, text_chat_repeats=0, extra_chat=2)

    def asr_targets(**flags):
        data = _leg_set(dataclasses.replace(cfg, **flags), main_set, extra)
        assert sum(e.task == "chat" for e in data.entries) == 6  # every chat item, twice
        return sorted(e.target for e in data.entries if e.task == "asr")

    assert asr_targets() == ["and plus two", "go west", "two plus three", "what day is it"]
    assert asr_targets(extra_chat_transcripts=False) == ["go west", "two plus three"]
    assert asr_targets(chat_transcripts=False) == ["go west"]
    # the main set weighed against the extra dialogues: its items twice, the extra ones once
    data = _leg_set(dataclasses.replace(cfg, main_repeats=2, chat_repeats=1), main_set, extra)
    counts = {t: sum(e.text == t for e in data.entries) for t in ("go west", "two plus three")}
    assert counts == {"go west": 2, "two plus three": 4}  # the chat item and its transcript
    assert sum(e.text == "and plus two" for e in data.entries) == 2


def test_a_leg_can_be_the_average_of_earlier_legs(run_dir):
    legs = [run_dir / "llm" / "final.pt", run_dir / "fresh" / "final.pt"]
    if not legs[1].exists():  # made by the test above when the module runs whole
        assert demo(["--out", str(run_dir), *TINY, "--stages", "llm", "--llm-leg", "fresh"]) == 0
    args = ["--stages", "llm", "export", "--llm-leg", "avg", "--average", *map(str, legs)]
    assert demo(["--out", str(run_dir), *TINY, *args]) == 0
    first, second = (torch.load(p) for p in legs)
    mean = torch.load(run_dir / "avg" / "final.pt")
    name = "llm.model.layers.0.mlp.gate_proj.weight"
    assert torch.allclose(mean[name], (first[name] + second[name]) / 2)
    assert (run_dir / "model-avg" / "adapter_project.pt").exists()
    # the export names the averaged legs and their settings, not the averaging command's flags
    recipe = json.loads((run_dir / "model-avg" / "mooer.json").read_text())["demo_recipe"]
    recorded = recipe["stage2"]["legs"]
    assert recorded["avg"] == {"average_of": ["llm", "fresh"]}
    assert recorded["llm"]["settings"]["llm_steps"] == 2 and "settings" in recorded["fresh"]
    assert "llm_lr" not in recipe and recipe["n_train"] == 40
    with pytest.raises(ConfigError, match="cannot average"):
        average_weights([legs[0], run_dir / "model" / "paraformer-encoder.pth"])


def test_averaging_keeps_a_tensor_every_leg_shares_bit_for_bit(tmp_path):
    frozen = torch.tensor([0.11984150856733322])  # the float32 mean of five copies is 7e-9 off
    assert not torch.equal(torch.stack([frozen] * 5).mean(0), frozen)
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"leg{i}.pt")
        torch.save({"frozen": frozen.clone(), "trained": torch.tensor([float(i)])}, paths[-1])
    mean = average_weights(paths)
    assert torch.equal(mean["frozen"], frozen)
    assert mean["trained"].item() == 2.0


def test_a_leg_can_add_spoken_chat_dialogues(run_dir):
    from mooer.train.data import read_manifest

    leg = ["--stages", "llm", "--llm-leg", "chatty", "--extra-chat", "6", "--workers", "1"]
    flags = ["--text-chat-draws", "5", "--no-extra-chat-transcripts"]
    assert demo(["--out", str(run_dir), *TINY, *leg, *flags]) == 0
    settings = leg_record(run_dir / "chatty" / "final.pt")["legs"]["chatty"]["settings"]
    assert (settings["extra_chat"], settings["text_chat_draws"]) == (6, 5)
    assert settings["extra_chat_transcripts"] is False
    entries = read_manifest(run_dir / "data" / "chat-6" / "manifest.jsonl")
    assert [(e.id, e.task) for e in entries] == [(f"chat-{i:06d}", "chat") for i in range(6)]
    encoded = torch.load(run_dir / "encoded_chat-6.pt")
    width = torch.load(run_dir / "encoded_train.pt")[0].shape[-1]
    for entry, hidden in zip(entries, encoded, strict=True):
        assert hidden.shape[-1] == width
        assert abs(hidden.shape[0] * 0.06 - entry.duration) < 0.12  # one frame per 60 ms
    assert (run_dir / "chatty" / "final.pt").exists()


def test_a_leg_can_start_from_an_exported_model_and_add_multi_sentence_items(
    run_dir, tmp_path, capsys
):
    from mooer.train.corpus import multi_sentence, multi_sentence_alone
    from mooer.train.data import read_manifest
    from mooer.train.demo import _extra_speech

    # a new work folder, seeded from the exported model: its CMVN, encoder and LLM
    out = tmp_path / "from-model"
    leg = ["--stages", "data", "features", "llm", "--llm-leg", "more", "--llm-lr", "1e-12"]
    flags = ["--llm-init", str(run_dir / "model"), "--multi-sentence", "4", "--workers", "1"]
    assert demo(["--out", str(out), *TINY, *leg, *flags]) == 0
    assert (out / "am.mvn").read_text() == (run_dir / "am.mvn").read_text()
    assert not (out / "ctc" / "train_log.jsonl").exists()  # no stage 1: the model's encoder
    trained = torch.load(run_dir / "llm" / "final.pt")
    resumed = torch.load(out / "more" / "final.pt")
    for name in ("llm.model.layers.0.mlp.gate_proj.weight", "adapter.linear1.weight"):
        assert (resumed[name] - trained[name]).abs().max() < 1e-7  # started from the model
    record = leg_record(out / "more" / "final.pt")
    assert list(record["legs"]) == ["llm", "more"] and record["legs"]["more"]["init"] == "llm"
    assert record["legs"]["more"]["settings"]["multi_sentence"] == 4
    entries = read_manifest(out / "data" / "multi-4" / "manifest.jsonl")
    assert [(e.task, e.lang) for e in entries] == [
        ("asr", "en"), ("asr", "zh"), ("ast", "zh"), ("asr", "en")
    ]  # fmt: skip
    encoded = torch.load(out / "encoded_multi-4.pt")
    for entry, hidden in zip(entries, encoded, strict=True):
        assert abs(hidden.shape[0] * 0.06 - entry.duration) < 0.12  # one frame per 60 ms
    # a leg with sentence marks trains the same audio on marked targets: nothing is spoken again
    spoken = sorted((out / "data" / "multi-4").rglob("*.wav"))
    before = [p.stat().st_mtime_ns for p in spoken]
    marked = ["--stages", "llm", "--llm-leg", "marked", "--sentence-marks"]
    init = ["--llm-init", str(out / "more" / "final.pt")]
    assert demo(["--out", str(out), *TINY, *marked, *init, *flags[2:]]) == 0
    assert [p.stat().st_mtime_ns for p in spoken] == before
    assert leg_record(out / "marked" / "final.pt")["legs"]["marked"]["settings"]["sentence_marks"]
    cfg = DemoConfig(out_dir=str(out), multi_sentence=4, sentence_marks=True)
    targets = [e.target for e in _extra_speech(cfg, objective=None).entries]  # cached frames
    assert targets == [u.target for u in multi_sentence("train", 4, cfg.seed, marks=True)]
    assert "。" in targets[1] and targets[1] != entries[1].target  # the manifest's, unmarked
    # its sentences also alone: each sentence of the items spoken once more, on its own
    alone = ["--stages", "llm", "--llm-leg", "alone", "--sentences-alone", *init, *flags[2:]]
    assert demo(["--out", str(out), *TINY, *alone]) == 0
    assert [p.stat().st_mtime_ns for p in spoken] == before
    heard = read_manifest(out / "data" / "multi-4-alone" / "manifest.jsonl")
    assert [e.text for e in heard] == [s for u in multi_sentence("train", 4) for s in u.parts]
    assert [e.target for e in heard if e.task == "ast"] == [
        u.target for u in multi_sentence_alone("train", 4) if u.task == "ast"
    ]
    assert leg_record(out / "alone" / "final.pt")["legs"]["alone"]["settings"]["sentences_alone"]
    refused(capsys, ["--out", str(out), *TINY, "--sentences-alone"], "needs --multi-sentence")
    not_demo = ["--llm-init", str(run_dir / "ctc" / "final")]
    refused(capsys, ["--out", str(tmp_path / "bad"), *TINY, *leg, *not_demo], "not a demo model")


def test_the_eval_stage_also_scores_sentences_in_a_row(run_dir):
    from mooer.train.data import read_manifest

    summary = json.loads((run_dir / "model" / "eval-multi" / "summary.json").read_text())
    assert summary["utterances"] == 3  # 12 // 5, at least one of each task
    entries = read_manifest(run_dir / "data" / "heldout-multi" / "manifest.jsonl")
    assert [e.task for e in entries] == ["asr", "asr", "ast"]
    assert all(e.duration > 1.0 for e in entries)
