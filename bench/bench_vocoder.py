"""Real-time factor of the full-size MooER HiFi-GAN head on the CPU, whole vs streaming.

Random weights (speed does not depend on them), latents for 2 s and 10 s of 22.05 kHz audio.
Streaming pushes one latent frame at a time, as the LLM produces them; ``x whole`` is its
compute time over whole-utterance vocoding of the same latents (the target is <= 1.3).
RTF = compute time / audio duration (below 1 is faster than real time). Each figure is the
best of ``--repeats`` runs after a warm-up pass, the modes taking turns so that a busy spell
on a shared machine hits them alike; the process CPU time is shown beside the wall time since
it is less affected by other load, and the load average is printed too.

    python bench/bench_vocoder.py --threads 1 --seconds 2 10 --chunk-frames 1 4 8

Measured with ``--seconds 2 10 --repeats 2 --chunk-frames 1 4 8``: AMD EPYC, 2 cores shared
with other jobs (load average 5.3), torch 2.13.0 CPU, 1 thread; wall times swing with the load,
so the CPU-time ratio is the steadier figure. Lookahead 3770 samples (3.68 frames, 171 ms).

     audio            mode  wall s   RTF x whole  cpu s x whole      first audio after
      2.0s           whole    1.48  0.72    1.00   0.95    1.00                      -
      2.0s  stream chunk=1    3.00  1.47    2.03   1.94    2.04      5 frames + 0.25 s
      2.0s  stream chunk=4    1.65  0.81    1.12   0.99    1.04      8 frames + 0.21 s
      2.0s  stream chunk=8    1.93  0.95    1.31   0.95    1.00     12 frames + 0.54 s
     10.0s           whole    6.03  0.60    1.00   3.97    1.00                      -
     10.0s  stream chunk=1   14.54  1.45    2.41   9.58    2.42      5 frames + 0.16 s
     10.0s  stream chunk=4    4.66  0.46    0.77   4.22    1.06      8 frames + 0.19 s
     10.0s  stream chunk=8    5.38  0.54    0.89   3.85    0.97     12 frames + 0.23 s

Streaming at the default 4-frame chunks costs what whole-utterance vocoding costs (1.04-1.06x
CPU time). The earlier method, which vocoded every chunk with 4 frames of context on each side,
cost 2.3x at 4-frame chunks and 7.1x at 1-frame chunks (2 s of audio, same machine and hour).
One frame per run still costs 2-2.4x: conv_pre's 51 MB of weights are read for every run,
however few its outputs.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, replace

import torch
from machine import cpu_model

from mooer.tts.hifigan import HifiganConfig, HifiganGenerator
from mooer.tts.vocoder import StreamingVocoder, vocode


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    first_s: float = math.nan  # wall time until the first audio
    first_frames: int = 0  # latent frames pushed before it


def bench_whole(gen: HifiganGenerator, latents: torch.Tensor, speaker: torch.Tensor) -> Run:
    start, cpu = time.perf_counter(), time.process_time()
    vocode(gen, latents, speaker)
    return Run(time.perf_counter() - start, time.process_time() - cpu)


def bench_stream(
    gen: HifiganGenerator, latents: torch.Tensor, speaker: torch.Tensor, chunk: int
) -> Run:
    voc = StreamingVocoder(gen, speaker, chunk_frames=chunk)
    first_s, first_frames = math.nan, 0
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(len(latents)):
        audio = voc.push(latents[i : i + 1])
        if len(audio) and math.isnan(first_s):
            first_s, first_frames = time.perf_counter() - start, i + 1
    voc.flush()
    return Run(time.perf_counter() - start, time.process_time() - cpu, first_s, first_frames)


def one_round(
    gen: HifiganGenerator, latents: torch.Tensor, speaker: torch.Tensor, chunks: list[int]
) -> dict[str, Run]:
    """Every mode once, in turn."""
    runs = {"whole": bench_whole(gen, latents, speaker)}
    for chunk in chunks:
        runs[f"stream chunk={chunk}"] = bench_stream(gen, latents, speaker, chunk)
    return runs


def best(runs: list[Run]) -> Run:
    """Fastest wall and CPU time (each over all runs); the first audio of the fastest run."""
    fastest = min(runs, key=lambda r: r.wall_s)
    return replace(fastest, cpu_s=min(r.cpu_s for r in runs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, nargs="+", default=[2.0, 10.0])
    ap.add_argument("--chunk-frames", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = HifiganConfig()
    gen = HifiganGenerator(cfg).eval()
    speaker = torch.nn.functional.normalize(torch.randn(1, cfg.speaker_channels, 1), dim=1)
    frame_s = cfg.hop / cfg.sample_rate  # 46.4 ms of audio per latent frame

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    lookahead = StreamingVocoder(gen, speaker).lookahead
    lookahead_ms = lookahead / cfg.sample_rate * 1e3
    print(f"generator: {sum(p.numel() for p in gen.parameters()) / 1e6:.2f} M parameters, "
          f"{cfg.hop} samples/frame at {cfg.sample_rate} Hz, streaming lookahead {lookahead} "
          f"samples ({lookahead / cfg.hop:.2f} frames, {lookahead_ms:.0f} ms)")  # fmt: skip
    print(f"{'audio':>6} {'mode':>15} {'wall s':>7} {'RTF':>5} {'x whole':>7} "
          f"{'cpu s':>6} {'x whole':>7} {'first audio after':>22}")  # fmt: skip
    for seconds in args.seconds:
        frames = math.ceil(seconds / frame_s)
        latents = torch.randn(frames, cfg.input_channels)
        audio_s = frames * frame_s
        rounds = [
            one_round(gen, latents, speaker, args.chunk_frames) for _ in range(args.repeats + 1)
        ]
        rounds = rounds[1:]  # the first is the warm-up
        whole = best([rd["whole"] for rd in rounds])
        for mode in rounds[0]:
            r = best([rd[mode] for rd in rounds])
            if mode == "whole":
                first = "-"
            elif r.first_frames:
                first = f"{r.first_frames} frames + {r.first_s:.2f} s"
            else:
                first = "only at flush"
            print(f"{audio_s:5.1f}s {mode:>15} {r.wall_s:7.2f} {r.wall_s / audio_s:5.2f} "
                  f"{r.wall_s / whole.wall_s:7.2f} {r.cpu_s:6.2f} {r.cpu_s / whole.cpu_s:7.2f} "
                  f"{first:>22}")  # fmt: skip
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
