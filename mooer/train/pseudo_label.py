"""``mooer pseudo-label``: label unlabelled audio with a model and write a training manifest.

Every input gets an ``asr`` entry whose target is the model's transcript. With ``--translate``
the Mandarin ones also get an ``ast`` entry (same audio, the translation as target), translated
either by the LLM in text mode from the transcript (``text``: any instruction-following LLM) or
from the audio with the ``ast`` prompt (``speech``: models trained for speech translation, like
the demo model, whose LLM has never read text instructions).

The manifest is the one ``mooer.train.data`` reads: audio paths relative to the manifest.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mooer.checkpoint import task_serving
from mooer.errors import ConfigError, MooerError
from mooer.llm.decoding import OFFLINE, DecodingOptions, generate_ids
from mooer.llm.prompts import build_prompt_text
from mooer.text import language_of
from mooer.transcribe import Result, read_inputs, transcribe

TRANSLATE_MODES = ("text", "speech")
TEXT_INSTRUCTION = "Translate the following text to english: {} "


@dataclass
class Label:
    """One manifest line (the fields ``mooer.train.data.parse_entry`` reads)."""

    id: str
    audio: str  # relative to the manifest's folder
    duration: float
    lang: str
    task: str
    text: str
    translation: str
    target: str


@torch.inference_mode()
def translate_text(
    model, texts: Sequence[str], options: DecodingOptions = OFFLINE, batch_size: int = 8
) -> list[str]:
    """English translations of ``texts`` by the LLM alone (no audio), one instruction each."""
    out: list[str] = []
    hidden = model.llm.config.hidden_size
    for first in range(0, len(texts), batch_size):
        chunk = texts[first : first + batch_size]
        no_audio = torch.zeros(len(chunk), 0, hidden, device=model.device, dtype=model.llm_dtype)
        lengths = torch.zeros(len(chunk), dtype=torch.long, device=model.device)
        prompts = [build_prompt_text(TEXT_INSTRUCTION.format(t)) for t in chunk]
        ids = generate_ids(model.llm, model.tokenizer, no_audio, lengths, prompts, options)
        out += [model.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids]
    return out


def pseudo_label(
    model,
    inputs: Sequence[tuple[str, str]],
    manifest: str | Path,
    translate: str | None = None,
    batch_size: int = 4,
    options: DecodingOptions = OFFLINE,
    progress: bool = False,
) -> list[Label]:
    """Label ``(name, audio path)`` pairs and write ``manifest`` (jsonl); returns its lines.

    Inputs that cannot be read or give an empty transcript are left out (warned on stderr).
    """
    if translate is not None and translate not in TRANSLATE_MODES:
        raise ConfigError(
            f"translate must be one of {', '.join(TRANSLATE_MODES)}, got {translate!r}"
        )
    names = [n for n, _ in inputs]
    paths = [p for _, p in inputs]
    kwargs = dict(options=options, batch_size=batch_size, names=names, keep_going=True)
    results = transcribe(model, paths, "asr", progress=progress, **kwargs)
    kept: list[tuple[str, Result]] = []
    for path, result in zip(paths, results):
        if result.error or not result.text:
            print(f"skipping {result.audio}: {result.error or 'empty transcript'}", file=sys.stderr)
            continue
        kept.append((path, result))
    zh = [(p, r) for p, r in kept if language_of(r.text) == "zh"]
    translations: dict[str, str] = {}
    if translate == "text":
        texts = translate_text(model, [r.text for _, r in zh], options, batch_size)
        translations = {p: t for (p, _), t in zip(zh, texts)}
    elif translate == "speech":
        spoken = transcribe(model, [p for p, _ in zh], "ast", **{**kwargs, "names": None})
        translations = {p: r.translation or r.text for (p, _), r in zip(zh, spoken)}

    out = Path(manifest)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels: list[Label] = []
    for index, (path, result) in enumerate(kept):
        audio = os.path.relpath(Path(path).resolve(), out.parent.resolve())
        lang = language_of(result.text)
        uid = Path(result.audio).stem or f"utt{index:06d}"
        labels.append(Label(uid, audio, result.duration, lang, "asr", result.text, "", result.text))
        translation = translations.get(path, "")
        if translation:
            labels.append(
                Label(
                    f"{uid}-ast",
                    audio,
                    result.duration,
                    lang,
                    "ast",
                    result.text,
                    translation,
                    translation,
                )
            )
    with out.open("w", encoding="utf-8") as f:
        for label in labels:
            f.write(json.dumps(asdict(label), ensure_ascii=False) + "\n")
    return labels


def pseudo_label_command(
    inputs: Sequence[str],
    out: Path,
    *,
    model: str | None = None,
    llm: str | None = None,
    variant: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    heads: int = 4,
    quantize: str | None = None,
    translate: str | None = None,
    batch_size: int = 4,
) -> int:
    """``mooer pseudo-label``: transcribe (and translate) unlabelled audio into a manifest.

    Without ``variant``, an MTL checkpoint's variant folder is asr/, or with ``translate``
    ``speech`` (asr and ast from the audio) asr_ast_mtl/.
    """
    from mooer.model import load_model

    tasks = ("asr", "ast") if translate == "speech" else ("asr",)
    try:
        loaded = load_model(
            model, llm=llm, task=task_serving(tasks), variant=variant,
            device=device, dtype=dtype, attention_heads=heads, quantize=quantize,
        )  # fmt: skip
        labels = pseudo_label(
            loaded, read_inputs(inputs), out, translate, batch_size, progress=True
        )
    except MooerError as err:
        print(f"mooer pseudo-label: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(labels)} entries to {out}", file=sys.stderr)
    return 0
