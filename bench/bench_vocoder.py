"""Real-time factor of the full-size MooER HiFi-GAN head on the CPU, whole vs streaming.

Random weights (speed does not depend on them), latents for 2 s and 10 s of 22.05 kHz audio.
Streaming pushes one latent frame at a time, as the LLM produces them. RTF = compute time /
audio duration (below 1 is faster than real time). Each figure is the best of ``--repeats``
runs after a warm-up pass (the first call with a new input length also pays oneDNN's set-up);
on a shared machine the spread between runs is large, so the load average is printed too.

    python bench/bench_vocoder.py --threads 2 --seconds 2 10 --chunk-frames 4
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from machine import cpu_model

from mooer.tts.hifigan import HifiganConfig, HifiganGenerator
from mooer.tts.vocoder import StreamingVocoder, vocode


def bench_whole(gen: HifiganGenerator, latents: torch.Tensor, speaker: torch.Tensor) -> float:
    start = time.perf_counter()
    vocode(gen, latents, speaker)
    return time.perf_counter() - start


def bench_stream(
    gen: HifiganGenerator, latents: torch.Tensor, speaker: torch.Tensor, chunk: int
) -> tuple[float, float, int]:
    """(total compute s, compute s until the first audio, frames received before it)."""
    voc = StreamingVocoder(gen, speaker, chunk_frames=chunk)
    first_s, first_frames = math.nan, 0
    start = time.perf_counter()
    for i in range(len(latents)):
        audio = voc.push(latents[i : i + 1])
        if len(audio) and math.isnan(first_s):
            first_s, first_frames = time.perf_counter() - start, i + 1
    voc.flush()
    return time.perf_counter() - start, first_s, first_frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, nargs="+", default=[2.0, 10.0])
    ap.add_argument("--chunk-frames", type=int, nargs="+", default=[4])
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
    print(f"generator: {sum(p.numel() for p in gen.parameters()) / 1e6:.2f} M parameters, "
          f"{cfg.hop} samples/frame at {cfg.sample_rate} Hz, context {cfg.context_frames} frames")  # fmt: skip
    print(f"{'audio':>6} {'mode':>18} {'compute s':>10} {'RTF':>6} {'first audio after':>24}")
    for seconds in args.seconds:
        frames = math.ceil(seconds / frame_s)
        latents = torch.randn(frames, cfg.input_channels)
        audio_s = frames * frame_s
        took = min(bench_whole(gen, latents, speaker) for _ in range(args.repeats + 1))
        print(f"{audio_s:5.1f}s {'whole':>18} {took:10.2f} {took / audio_s:6.2f} {'-':>24}")
        for chunk in args.chunk_frames:
            runs = (bench_stream(gen, latents, speaker, chunk) for _ in range(args.repeats + 1))
            took, first_s, first_frames = min(runs)
            first = f"{first_frames} frames + {first_s:.2f} s"
            mode = f"stream chunk={chunk}"
            print(f"{audio_s:5.1f}s {mode:>18} {took:10.2f} {took / audio_s:6.2f} {first:>24}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
