"""The demo model's LLM on the CPU: decode speed and held-out scores per setting, side by side.

Settings: fp32 with 1 and 2 torch threads, bf16 autocast (where the CPU has AVX-512 BF16 or
AMX), and dynamic int8 of the LLM's Linear layers (as ``--quantize int8`` does to the encoder).
Each decodes the same held-out sentences (a voice the model never heard) with the offline
settings (beam 4) and the live partials' token loop (greedy); the settings take turns per
sentence, so load from other processes falls on all of them.

    python bench/bench_llm_cpu.py [--sentences 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

from mooer.asr.quantize import quantize_int8
from mooer.llm.decoding import OFFLINE, STREAMING
from mooer.model import load_model
from mooer.tasks import decode
from mooer.train.metrics import cer, wer
from mooer.train.talk import heldout_sentences, spoken_talk

sys.path.insert(0, str(Path(__file__).parent))
from machine import describe  # noqa: E402  (a sibling script, not a package)


def bf16_supported() -> bool:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = f.read()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=20, help="per language")
    args = parser.parse_args()
    print(describe())
    load = os.getloadavg()[0]
    fp32 = load_model(device="cpu")
    int8 = load_model(device="cpu")
    quantize_int8(int8.llm)
    settings = {  # name -> (model, threads, autocast)
        "fp32 1 thread": (fp32, 1, False),
        "fp32 2 threads": (fp32, 2, False),
        "int8 LLM 1 thread": (int8, 1, False),
    }
    if bf16_supported():
        settings["bf16 autocast 1 thread"] = (fp32, 1, True)
    clips = []
    for lang in ("en", "zh"):
        for said, _ in heldout_sentences(args.sentences, lang, seed=2):
            clips.append((lang, said, spoken_talk([(said, said)], 0.0, lead_s=0.2, tail_s=0.2)))
    hyps = {name: {"offline": [], "partial": []} for name in settings}
    seconds = {name: {"offline": 0.0, "partial": 0.0} for name in settings}
    with torch.inference_mode():
        for _, _, talk in clips:
            embeds, lengths = fp32.embed([talk.audio])
            for name, (model, threads, autocast) in settings.items():
                torch.set_num_threads(threads)
                cast = (
                    torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
                )
                for kind, options in (("offline", OFFLINE), ("partial", STREAMING)):
                    start = time.perf_counter()
                    with cast:
                        [texts] = decode(
                            model, embeds, lengths, "asr", options, step_by_step=kind == "partial"
                        )
                    seconds[name][kind] += time.perf_counter() - start
                    hyps[name][kind].append(texts.transcript or "")
    refs = {lang: [s for lg, s, _ in clips if lg == lang] for lang in ("en", "zh")}
    print(
        f"demo model, {len(clips)} held-out sentences ({args.sentences} en, {args.sentences} zh);"
        " decode seconds in all (the encoder excluded); WER en / CER zh of the offline decode"
    )
    print(f"{'setting':>24} {'offline s':>9} {'partials s':>10} {'WER en':>7} {'CER zh':>7}")
    base = "fp32 1 thread"
    for name in settings:
        out = hyps[name]["offline"]
        en = wer(refs["en"], [h for (lg, _, _), h in zip(clips, out) if lg == "en"])
        zh = cer(refs["zh"], [h for (lg, _, _), h in zip(clips, out) if lg == "zh"])
        same = sum(a == b for a, b in zip(out, hyps[base]["offline"]))
        print(
            f"{name:>24} {seconds[name]['offline']:>9.2f} {seconds[name]['partial']:>10.2f} "
            f"{en * 100:>6.2f}% {zh * 100:>6.2f}%  ({same}/{len(out)} as {base})"
        )
    print(f"1-min load average: {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
