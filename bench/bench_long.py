"""A long file of continuous speech through ``mooer transcribe`` and through HTTP (demo model).

The file: held-out template sentences (never trained on) spoken by a held-out espeak-ng voice,
one after another with pauses drawn from 150-700 ms (``mooer.train.talk``). It is
transcribed by ``mooer transcribe --json`` in a child process, then uploaded to ``mooer serve``
(another child) at ``/v1/audio/transcriptions`` as ``verbose_json``. Reported: % words right
(100 - WER against the sentences joined), sentences found word for word in a segment, and
whether the HTTP text and segments are identical to the CLI's (issue 13's offline target:
>= 95 % words right, identical text through HTTP).

    python bench/bench_long.py [--sentences 48] [--lang en] [--seed 1] [--keep FILE.wav]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import soundfile as sf

from mooer.audio import SAMPLE_RATE
from mooer.text import join_texts
from mooer.train.metrics import cer, normalize_en, normalize_zh, wer
from mooer.train.talk import heldout_sentences, spoken_talk

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import ServerProcess  # noqa: E402  (sibling scripts, not a package)
from machine import describe  # noqa: E402

PAUSES_S = (0.15, 0.7)  # the shortest and longest pause between two sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=48)
    parser.add_argument("--lang", choices=["en", "zh"], default="en")
    parser.add_argument("--seed", type=int, default=1, help="of the pauses")
    parser.add_argument("--keep", help="also write the file here")
    args = parser.parse_args()
    sentences = [said for said, _ in heldout_sentences(args.sentences, args.lang)]
    samples = spoken_talk([(s, s) for s in sentences], PAUSES_S, seed=args.seed).audio
    print(describe())
    print(
        f"{len(sentences)} held-out {args.lang} sentences, pauses {PAUSES_S[0]}-{PAUSES_S[1]} s:"
        f" {samples.size / SAMPLE_RATE:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep or Path(tmp) / "continuous.wav")
        sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")

        started = time.monotonic()
        command = [sys.executable, "-m", "mooer.cli", "transcribe", "--json", str(path)]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
        cli = json.loads(proc.stdout)
        cli_s = time.monotonic() - started

        with ServerProcess() as server, open(path, "rb") as f:
            started = time.monotonic()
            reply = httpx.post(
                f"{server.http}/v1/audio/transcriptions",
                files={"file": (path.name, f)},
                data={"model": "mooer", "response_format": "verbose_json"},
                timeout=1800,
            )
            http_s = time.monotonic() - started
        reply.raise_for_status()
        http = reply.json()

    reference = join_texts(sentences)
    error = 100 * (wer if args.lang == "en" else cer)([reference], [cli["text"]])  # %
    normalize = normalize_en if args.lang == "en" else normalize_zh
    found = {normalize(text) for text in cli["segment_texts"]}
    exact = sum(normalize(s) in found for s in sentences)
    http_segments = [[s["start"], s["end"]] for s in http["segments"]]
    same = http["text"] == cli["text"] and http_segments == cli["segments"]
    unit = "words" if args.lang == "en" else "characters"
    print(
        f"mooer transcribe: {len(cli['segments'])} segments in {cli_s:.1f} s (model load included)"
    )
    print(
        f"  {100 - error:.1f} % {unit} right ({'WER' if args.lang == 'en' else 'CER'} {error:.2f} %)"
    )
    print(f"  {exact} of {len(sentences)} sentences word for word in a segment")
    print(f"HTTP verbose_json: {len(http_segments)} segments in {http_s:.1f} s")
    print(f"  text and segments identical to mooer transcribe: {same}")
    if not same:
        print(f"  CLI:  {cli['text']}\n  HTTP: {http['text']}")


if __name__ == "__main__":
    main()
