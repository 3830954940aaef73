"""Live sessions in real time: endpoint-to-final latency, and how many sessions one engine keeps up with.

Each session gets real speech in 20 ms chunks at the pace a microphone would send it (one feeder
thread for all sessions, streams offset so that their speech does not line up). A count of
sessions keeps up when the 95th percentile of the time from the VAD's end-of-utterance decision
to the final transcript stays under ``--max-latency``. ``lag`` is how late the feeder ever was
(a busy machine starves it; then the audio arrived later than real time).

The model is ``--model`` (a release-layout folder), else the bundled demo model, else a tiny
fabricated one (random words that never end on their own, so answers are capped at
``--max-new-tokens`` to make their length realistic).

    python bench/bench_session.py [--seconds 15] [--sessions 1 2 4 8] [--threads 1] [--mode asr]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mooer.agent.engine import Engine, available_cores, default_threads
from mooer.agent.session import SessionConfig
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.model import DEMO_MODEL_DIR, load_model

sys.path.insert(0, str(Path(__file__).parent))
from bench_vad import CHUNK, default_stream  # noqa: E402  (a sibling script, not a package)

TICK = CHUNK / SAMPLE_RATE  # 20 ms


@dataclass
class Outcome:
    sessions: int
    latencies: list[float]
    replies: list[float]  # chat: end of utterance -> first reply text
    partials: int
    skipped: int
    drain_s: float  # from the last chunk fed to the last SessionClosed
    feeder_lag_s: float  # how late the feeder ever was

    def keeps_up(self, max_latency: float) -> bool:
        return bool(self.latencies) and self.p(95) <= max_latency

    def p(self, q: float, of: str = "latencies") -> float:
        values = getattr(self, of)
        return float(np.percentile(values, q)) if values else float("nan")


def run(model, config: SessionConfig, streams: list[np.ndarray], threads: int) -> Outcome:
    """Feed ``streams`` (one per session) in real time; close; collect the sessions' stats."""
    engine = Engine(model, threads=threads)
    sessions = [engine.open(config) for _ in streams]
    lag = 0.0
    start = time.perf_counter()
    for k, at in enumerate(range(0, max(s.size for s in streams), CHUNK)):
        wait = start + k * TICK - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        lag = max(lag, -wait)
        for session, stream in zip(sessions, streams):
            session.feed(stream[at : at + CHUNK])
    fed = time.perf_counter()
    for session in sessions:
        session.close()
    for session in sessions:
        session.wait_closed(120)
    drain = time.perf_counter() - fed
    engine.close()
    return Outcome(
        sessions=len(sessions),
        latencies=[x for s in sessions for x in s.stats.final_latency_s],
        replies=[x for s in sessions for x in s.stats.reply_latency_s],
        partials=sum(s.stats.partials for s in sessions),
        skipped=sum(s.stats.partials_skipped for s in sessions),
        drain_s=drain,
        feeder_lag_s=lag,
    )


def open_model(args: argparse.Namespace, workdir: Path):
    if args.model is not None:
        return load_model(args.model, llm=args.llm, device=args.device), str(args.model), None
    if (DEMO_MODEL_DIR / "adapter_project.pt").exists():
        return load_model(device=args.device), "demo model", None
    from mooer.fabricate import fabricate

    root = fabricate(workdir, layout="omni")
    return load_model(root, device=args.device), "fabricated omni (random)", args.max_new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--llm", type=Path, default=None, help="Qwen2 folder of an MTL release")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="asr", choices=("asr", "ast", "asr+ast", "chat"))
    parser.add_argument("--seconds", type=float, default=15.0, help="audio per session")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=None, help="the engine's torch threads")
    parser.add_argument("--partial-ms", type=int, default=480)
    parser.add_argument("--max-latency", type=float, default=1.0, help="p95 limit, seconds")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="fabricated model only")
    parser.add_argument("--wav", type=Path, default=None)
    args = parser.parse_args()

    workdir = tempfile.TemporaryDirectory()  # a fabricated model's files, kept while it runs
    model, name, cap = open_model(args, Path(workdir.name))
    config = SessionConfig(mode=args.mode, partial_interval_ms=args.partial_ms)
    if cap is not None:
        config = dataclasses.replace(
            config,
            partial_options=dataclasses.replace(config.partial_options, max_new_tokens=cap),
            final_options=dataclasses.replace(config.final_options, max_new_tokens=cap),
            chat_options=dataclasses.replace(config.chat_options, max_new_tokens=cap),
        )
    threads = args.threads or default_threads(model)
    torch.set_num_threads(1)  # the feeder's VAD; the engine's worker sets its own

    clip = load_audio(args.wav) if args.wav else default_stream()
    stream = np.resize(clip, int(args.seconds * SAMPLE_RATE))
    run(model, config, [stream[: 3 * SAMPLE_RATE]], threads)  # warm up

    print(
        f"model: {name}; mode {args.mode}; engine threads {threads} of {available_cores()} "
        f"cores; {args.seconds:.0f} s per session in 20 ms chunks, partials every "
        f"{args.partial_ms} ms" + (f"; answers capped at {cap} tokens" if cap else "")
    )
    header = (
        f"{'sessions':>8} {'finals':>6} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} "
        f"{'partials':>8} {'skipped':>7} {'drain s':>7} {'lag ms':>6} {'reply p50':>9}  keeps up"
    )
    print(header)
    best = 0
    for count in args.sessions:
        streams = [np.roll(stream, k * SAMPLE_RATE // 3) for k in range(count)]
        out = run(model, config, streams, threads)
        ok = out.keeps_up(args.max_latency)
        best = count if ok else best
        print(
            f"{count:>8} {len(out.latencies):>6} {out.p(50) * 1e3:>7.0f} {out.p(95) * 1e3:>7.0f} "
            f"{max(out.latencies, default=float('nan')) * 1e3:>7.0f} {out.partials:>8} "
            f"{out.skipped:>7} {out.drain_s:>7.2f} {out.feeder_lag_s * 1e3:>6.0f} "
            f"{out.p(50, 'replies') * 1e3:>9.0f}  "
            f"{'yes' if ok else 'no'}"
        )
    print(f"real-time sessions kept up with (p95 <= {args.max_latency:.1f} s): {best}")


if __name__ == "__main__":
    main()
