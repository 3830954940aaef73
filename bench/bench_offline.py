"""Offline transcription, hf vs vllm: utterances per second of ``mooer transcribe`` over many files.

Writes ``--files`` 16 kHz WAV files (half Mandarin, half English), each one held-out sentence
spoken by a held-out espeak-ng voice of the demo model, then transcribes all of them with
``mooer.transcribe.transcribe`` (what ``mooer transcribe --batch-size N FILES...`` runs) on each
backend in turn, in one process on the same machine; loading the model (and starting vLLM) is
outside the timing. hf runs its default (beam 4, as ``mooer transcribe``) and greedy; vLLM
decodes greedily (it has no beam search on prompt embeddings). Reports utterances per second,
the real-time factor, and on how many files each run's text equals hf greedy's.

    /opt/mooer-vllm/bin/python bench/bench_offline.py [--files 200] [--batch-size 32]

The vllm rows need vLLM (run with the vLLM venv's python); without it only hf runs.
``VLLM_CPU_KVCACHE_SPACE`` is 1 GiB unless set.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch
from machine import describe

from mooer.audio import SAMPLE_RATE
from mooer.llm.decoding import OFFLINE
from mooer.model import load_model
from mooer.train.talk import heldout_sentences, spoken_talk
from mooer.transcribe import transcribe

GREEDY = replace(OFFLINE, num_beams=1)


def write_files(folder: Path, count: int) -> tuple[list[Path], float]:
    """``count`` one-sentence recordings in ``folder``; their paths and total seconds."""
    sentences = heldout_sentences(count - count // 2, "zh") + heldout_sentences(count // 2, "en")
    paths, samples = [], 0
    for i, (said, _) in enumerate(sentences):
        audio = spoken_talk([(said, said)], 0.0, lead_s=0.3, tail_s=0.5).audio
        path = folder / f"utt{i:03d}.wav"
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
        samples += audio.size
    return paths, samples / SAMPLE_RATE


def timed(model, paths: list[Path], batch_size: int, options) -> tuple[float, list[str], int]:
    """Seconds to transcribe ``paths``, each file's text, and the utterances decoded."""
    started = time.perf_counter()
    results = transcribe(model, paths, "asr", options, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    return elapsed, [r.text for r in results], sum(len(r.segments) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32, help="as mooer transcribe's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--backends", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{describe()}; {args.threads} torch threads, batch size {args.batch_size}")
    runs: list[tuple[str, str, object]] = []
    if "hf" in args.backends:
        runs += [("hf", "beam 4", OFFLINE), ("hf", "greedy", GREEDY)]
    if "vllm" in args.backends:
        if importlib.util.find_spec("vllm") is None:
            print("vllm: not installed here (run with /opt/mooer-vllm/bin/python)")
        else:
            runs.append(("vllm", "greedy", GREEDY))
    with tempfile.TemporaryDirectory() as folder:
        paths, seconds = write_files(Path(folder), args.files)
        print(f"{len(paths)} files, {seconds:.1f} s of speech")
        print(f"{'backend':<8} {'decoding':<8} {'load s':>7} {'run s':>7} {'utt/s':>7} {'RTF':>7}"
              f" {'= hf greedy':>11}")  # fmt: skip
        reference: list[str] | None = None
        for backend, decoding, options in runs:
            started = time.perf_counter()
            model = load_model(device="cpu", dtype="fp32", llm_backend=backend)
            load_s = time.perf_counter() - started
            try:
                timed(model, paths[:2], args.batch_size, options)  # warm up
                elapsed, texts, utterances = timed(model, paths, args.batch_size, options)
            finally:
                model.llm_backend.close()
            if decoding == "greedy" and reference is None:
                reference, same = texts, "ref"
            else:
                same = "-" if reference is None else sum(a == b for a, b in zip(texts, reference))
            print(
                f"{backend:<8} {decoding:<8} {load_s:>7.1f} {elapsed:>7.1f} "
                f"{utterances / elapsed:>7.2f} {elapsed / seconds:>7.4f} {same!s:>11}",
                flush=True,
            )


if __name__ == "__main__":  # vLLM spawns its engine process
    main()
