"""Hotwords by context biasing on the demo model: recall of the hotwords, and the cost elsewhere.

Held-out template sentences (never trained on) are spoken by the two held-out espeak-ng voices
of their language (``mooer.train.talk``) and each recording is decoded twice, without and with
one hotword list (``DecodingOptions.hotwords``), by beam search (``OFFLINE``, as files, HTTP
uploads and live finals) and by the token loop (``STREAMING``, as live partials). Reported per
language:

- hotword recall: of the hotwords' occurrences in the sentences that hold one, the share the
  transcript holds (the demo model mishears numbers like "sixteen" as "sixty" in new voices);
- WER (English) or CER (Mandarin) on sentences that hold none of the hotwords: what biasing
  costs elsewhere (issue 16's target: at most 0.5 points worse).

    python bench/bench_hotwords.py [--lang en zh] [--others 100] [--bonus 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from mooer.llm.biasing import BiasingConfig, Hotwords
from mooer.llm.decoding import OFFLINE, STREAMING
from mooer.model import load_model
from mooer.tasks import decode
from mooer.train.corpus import english_sentences, is_heldout, mandarin_pairs
from mooer.train.metrics import cer, normalize_en, normalize_zh, wer
from mooer.train.synth import HELDOUT_VOICES
from mooer.train.talk import spoken_talk

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402  (sibling scripts, not a package)

# A meeting's vocabulary: numbers the demo model confuses with their tens ("sixteen" / "sixty"),
# and Mandarin places and things it confuses with others (学校 / 厕所, 杯子 / 梨).
HOTWORDS = {
    "en": ("thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
    "zh": ("学校", "杯子", "医院", "银行", "图书馆", "飞机场"),
}
MODES = {"beam": OFFLINE, "token loop": STREAMING}


def occurrences(lang: str, text: str, word: str) -> int:
    if lang == "en":
        return normalize_en(text).split().count(word)
    return normalize_zh(text).count(word)


def sentences(lang: str, words: tuple[str, ...], others: int) -> tuple[list[str], list[str]]:
    """Held-out sentences holding a hotword, and the first ``others`` holding none."""
    said = [s for s in english_sentences() if is_heldout(s)] if lang == "en" else []
    if lang == "zh":
        said = [zh for zh, en in mandarin_pairs() if is_heldout(en)]
    holding = [s for s in said if any(occurrences(lang, s, w) for w in words)]
    return holding, [s for s in said if s not in holding][:others]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", nargs="+", choices=["en", "zh"], default=["en", "zh"])
    parser.add_argument("--others", type=int, default=100, help="sentences without hotwords")
    parser.add_argument("--bonus", type=float, default=BiasingConfig().bonus)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    print(describe())
    print(f"bonus {args.bonus}; each sentence spoken by both held-out voices of its language")
    for lang in args.lang:
        words = HOTWORDS[lang]
        hotwords = Hotwords(words, BiasingConfig(bonus=args.bonus))
        holding, others = sentences(lang, words, args.others)
        voices = [v for v in HELDOUT_VOICES if v.lang == lang]
        refs: dict[str, list[str]] = {"hot": [], "other": []}
        hyps: dict[tuple[str, str, bool], list[str]] = {}
        started = time.monotonic()
        for part, group in (("hot", holding), ("other", others)):
            for voice in voices:
                for sentence in group:
                    audio = spoken_talk([(sentence, sentence)], 0.0, voice, 0, 0.3, 0.3).audio
                    embeds, lengths = model.embed([audio])  # (1, Ta, H), (1,)
                    refs[part].append(sentence)
                    for mode, options in MODES.items():
                        for biased in (False, True):
                            chosen = replace(options, hotwords=hotwords if biased else None)
                            (texts,) = decode(
                                model, embeds, lengths, "asr", chosen, step_by_step=mode != "beam"
                            )
                            hyps.setdefault((part, mode, biased), []).append(texts.transcript)
        total = sum(occurrences(lang, s, w) for s in refs["hot"] for w in words)
        metric, name = (wer, "WER") if lang == "en" else (cer, "CER")
        print(
            f"\n{lang}: hotwords {', '.join(words)}; {len(holding)} sentences x {len(voices)}"
            f" voices holding {total} occurrences, {len(others)} x {len(voices)} without"
            f" ({time.monotonic() - started:.0f} s)"
        )
        print(f"| decoding | biasing | hotword recall | {name} without hotwords |")
        print("|---|---|---|---|")
        for mode in MODES:
            for biased in (False, True):
                found = sum(
                    min(occurrences(lang, h, w), occurrences(lang, r, w))
                    for r, h in zip(refs["hot"], hyps[("hot", mode, biased)])
                    for w in words
                )
                error = 100 * metric(refs["other"], hyps[("other", mode, biased)])
                print(
                    f"| {mode} | {'on' if biased else 'off'} | {100 * found / total:.1f} %"
                    f" ({found}/{total}) | {error:.2f} % |"
                )


if __name__ == "__main__":
    main()
