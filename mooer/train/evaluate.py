"""``mooer eval --model DIR TESTSET.jsonl``: decode a test set and score it.

Each utterance is scored by what its task asks for, on normalised text (``mooer.train.metrics``):

=====  ==========================================  =======================================
task   decoded with                                scored as
=====  ==========================================  =======================================
asr    the ``asr`` prompt                          WER (English) / CER (Mandarin) of text
ast    the ``ast`` prompt                          BLEU of the translation
mtl    the ``ast`` prompt, answer ``asr\\nast``      CER/WER of the transcript + BLEU
chat   history as text, audio, ``Answer my...``    exact match of the normalised answer
=====  ==========================================  =======================================

Writes ``hyps.jsonl`` (one line per utterance), ``summary.json`` and ``summary.txt`` (a table)
into ``--out``; the real-time factor is decoding time (features to text) over audio time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mooer import tasks
from mooer.audio import SAMPLE_RATE
from mooer.checkpoint import task_serving
from mooer.errors import ConfigError, MooerError
from mooer.llm.decoding import OFFLINE, DecodingOptions, generate_ids
from mooer.llm.prompts import split_mtl
from mooer.tasks import TASKS, Texts
from mooer.train.data import TEXT_TASKS, Entry, read_audio, read_manifest
from mooer.train.metrics import bleu, char_errors, normalize_en, word_errors


@dataclass
class Scored:
    """One decoded utterance: its references, what the model said, and its edit counts."""

    id: str
    task: str
    lang: str
    ref: str  # the transcript (asr, mtl) or the expected answer (chat); "" for ast
    hyp: str
    ref_translation: str = ""  # ast, mtl
    hyp_translation: str = ""
    errors: int = 0  # word (en) or character (zh) edits of the transcript
    ref_len: int = 0
    correct: bool | None = None  # chat: the answer matches exactly


def score_entry(entry: Entry, answer: str | Texts) -> Scored:
    """Compare one decoded answer with the entry's references: the ``mooer.tasks`` texts of a
    speech task, or raw answer text (``"{transcript}\\n{translation}"`` for mtl)."""
    if isinstance(answer, str):
        answer = answer.strip()
        transcript, translation = split_mtl(answer) if entry.task == "mtl" else (answer, answer)
    else:
        transcript, translation = answer.transcript or "", answer.translation or ""
        answer = translation if entry.task == "ast" else transcript
    scored = Scored(entry.id, entry.task, entry.lang, "", answer)
    if entry.task in ("ast", "mtl"):
        scored.ref_translation, scored.hyp_translation = entry.translation, translation
    if entry.task in ("asr", "mtl"):
        scored.ref, scored.hyp = entry.text, transcript
        counts = (word_errors if entry.lang == "en" else char_errors)(entry.text, transcript)
        scored.errors, scored.ref_len = counts.errors, counts.ref_len
    if entry.task == "chat":
        scored.ref = entry.target
        scored.correct = normalize_en(answer) == normalize_en(entry.target)
    return scored


def summarize(scored: Sequence[Scored], audio_s: float = 0.0, decode_s: float = 0.0) -> dict:
    """Corpus scores: WER (en) and CER (zh) in %, BLEU (0..100), chat exact match in %, RTF.

    A metric with no utterances to score is left out.
    """
    summary: dict[str, float | int] = {"utterances": len(scored)}
    for lang, name in (("en", "wer_en"), ("zh", "cer_zh")):
        items = [s for s in scored if s.task in ("asr", "mtl") and s.lang == lang]
        ref_len = sum(s.ref_len for s in items)
        if ref_len:
            summary[name] = round(100 * sum(s.errors for s in items) / ref_len, 2)
            summary[f"{name}_utterances"] = len(items)
    translated = [s for s in scored if s.task in ("ast", "mtl")]
    if translated:
        refs = [s.ref_translation for s in translated]
        summary["bleu_zh_en"] = round(bleu(refs, [s.hyp_translation for s in translated]), 2)
        summary["bleu_zh_en_utterances"] = len(translated)
    chats = [s for s in scored if s.task == "chat"]
    if chats:
        summary["chat_exact_match"] = round(
            100 * sum(bool(s.correct) for s in chats) / len(chats), 2
        )
        summary["chat_exact_match_utterances"] = len(chats)
    if audio_s > 0:
        summary["audio_seconds"] = round(audio_s, 2)
        summary["decode_seconds"] = round(decode_s, 2)
        summary["rtf"] = round(decode_s / audio_s, 4)
    return summary


_LABELS = {
    "wer_en": "English WER %",
    "cer_zh": "Mandarin CER %",
    "bleu_zh_en": "zh->en BLEU",
    "chat_exact_match": "chat exact match %",
    "rtf": "real-time factor",
}


def format_table(summary: dict) -> str:
    """The summary as an aligned text table: metric, value, utterances scored."""
    rows = [("metric", "value", "utterances")]
    for key, label in _LABELS.items():
        if key in summary:
            count = summary.get(f"{key}_utterances", summary["utterances"])
            rows.append((label, f"{summary[key]:g}", str(count)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in rows)


def chat_parts(entry: Entry) -> tuple[str, str]:
    """(text before the audio, text after it) of a chat entry, as ``conversation`` lays it out."""
    from mooer.llm.conversation import history_prefix, question_suffix

    return history_prefix(entry.history), question_suffix()


@torch.inference_mode()
def decode(
    model,
    waves: Sequence[np.ndarray],
    prefixes: Sequence[str],
    suffixes: Sequence[str],
    options: DecodingOptions = OFFLINE,
) -> list[str]:
    """Answers for a batch laid out as ``prefix text | audio | suffix text``.

    The prefix embeddings are joined to the audio embeddings, so the splicing and left padding of
    ``mooer.llm.decoding`` place both before the suffix prompt.
    """
    audio, lengths = model.embed(waves)  # (B, Ta, H), (B,)
    embed = model.llm.get_input_embeddings()
    items = []
    for b, prefix in enumerate(prefixes):
        ids = model.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        head = embed(torch.tensor(ids, dtype=torch.long, device=audio.device)).to(audio.dtype)
        items.append(torch.cat([head, audio[b, : int(lengths[b])]]))  # (F_b + Ta_b, H)
    joined = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)  # (B, F + Ta, H)
    joined_lengths = torch.tensor([len(x) for x in items], device=audio.device)
    ids = generate_ids(model.llm, model.tokenizer, joined, joined_lengths, list(suffixes), options)
    return [model.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids]


def evaluate(
    model,
    entries: Sequence[Entry],
    batch_size: int = 8,
    options: DecodingOptions = OFFLINE,
    progress: bool = False,
) -> tuple[list[Scored], dict]:
    """Decode and score ``entries`` -> (per-utterance results, summary)."""
    if not entries:
        raise ConfigError("the test set is empty")
    text_only = [e for e in entries if e.task in TEXT_TASKS]
    if text_only:
        raise ConfigError(
            f"{text_only[0].id}: a {text_only[0].task} item has no audio to score "
            "(eval scores speech)"
        )
    waves = [read_audio(e) for e in entries]
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
    unknown = [e for e in entries if e.task != "chat" and e.task not in TASKS]
    if unknown:
        raise ConfigError(f"{unknown[0].id}: unknown task {unknown[0].task!r}")
    for task in {e.task for e in entries} - {"chat"}:
        tasks.check_task(model, task)  # before any decoding: mtl on another variant
    # One task per batch, similar lengths together: less padding, prefixes of similar size
    answers: dict[int, str | Texts] = {}
    started = time.perf_counter()
    bar = tqdm(total=len(entries), unit="utt", disable=not progress, file=sys.stderr)
    for task in sorted({e.task for e in entries}):
        order = sorted(
            (i for i, e in enumerate(entries) if e.task == task), key=lambda i: len(waves[i])
        )
        for first in range(0, len(order), batch_size):
            chunk = order[first : first + batch_size]
            batch = [waves[i] for i in chunk]
            if task == "chat":
                parts = [chat_parts(entries[i]) for i in chunk]
                decoded = decode(
                    model, batch, [p for p, _ in parts], [s for _, s in parts], options
                )
            else:
                embeds, lengths = model.embed(batch)  # (B, Ta, H), (B,)
                decoded = tasks.decode(model, embeds, lengths, task, options)
            answers.update(zip(chunk, decoded))
            bar.update(len(chunk))
    bar.close()
    decode_s = time.perf_counter() - started
    scored = [score_entry(e, answers[i]) for i, e in enumerate(entries)]
    summary = summarize(scored, audio_s, decode_s)
    if model.paths is not None and model.paths.variant:  # which MTL folder gave these scores
        summary["variant"] = model.paths.variant
    return scored, summary


def write_report(scored: Sequence[Scored], summary: dict, out_dir: str | Path) -> Path:
    """hyps.jsonl, summary.json and summary.txt into ``out_dir``; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "hyps.jsonl").open("w", encoding="utf-8") as f:
        for s in scored:
            f.write(json.dumps(asdict(s), ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.txt").write_text(format_table(summary) + "\n", encoding="utf-8")
    return out


def eval_command(
    testset: str | Path,
    *,
    model: str | None = None,
    llm: str | None = None,
    variant: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    heads: int = 4,
    quantize: str | None = None,
    out: Path | None = None,
    batch_size: int = 8,
    beams: int = OFFLINE.num_beams,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
) -> int:
    """``mooer eval``: decode a test-set manifest and report WER/CER/BLEU/chat accuracy/RTF.

    Without ``variant``, an MTL checkpoint's variant folder is the one serving every task of the
    set (``checkpoint.task_serving``): none decodes an item with another task's LoRA.
    """
    from dataclasses import replace

    from mooer.model import load_model

    try:
        entries = read_manifest(testset)
        if tasks:
            entries = [e for e in entries if e.task in tasks]
        entries = entries[:limit] if limit else entries
        loaded = load_model(
            model, llm=llm, task=task_serving(e.task for e in entries), variant=variant,
            device=device, dtype=dtype, attention_heads=heads, quantize=quantize,
        )  # fmt: skip
        options = replace(OFFLINE, num_beams=beams)
        scored, summary = evaluate(loaded, entries, batch_size, options, progress=True)
    except MooerError as err:
        print(f"mooer eval: {err}", file=sys.stderr)
        return 1
    if out is not None:
        write_report(scored, summary, out)
    print(format_table(summary))
    print(json.dumps(summary))
    return 0
