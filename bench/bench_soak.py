"""Server memory over a long run: clients stream speech without a break while RSS is sampled.

``mooer serve`` runs in a child process on loopback (see ``bench_server.ServerProcess``).
``--clients`` clients stream the example recordings with pauses at the pace of speech through
``/v1/realtime``; each ends its session after ``--session-s`` seconds and opens a new one at
once, so the run covers both long-lived sessions and the churn of opening and closing them. The
server's resident memory (VmRSS) is sampled every ``--every`` seconds; the report gives its start,
end and peak, and its slope (least squares) over the whole run and after ``--warmup-s``. A server
whose memory is flat has a slope near 0 MB/min after the warm-up.

    python bench/bench_soak.py [--minutes 10] [--clients 4] [--session-s 60] [--every 5]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import (  # noqa: E402  (sibling scripts, not a package)
    ServerProcess,
    add_server_args,
    serve_args,
    stream_session,
)
from bench_session import SpeechStream, Timeline, example_clips  # noqa: E402
from machine import LoadLog, describe  # noqa: E402


@dataclass
class Tally:
    """What the clients got from the server so far."""

    sessions: int = 0
    utterances: int = 0
    finals: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, timeline: Timeline) -> None:
        ended = [u for u in timeline.items.values() if not math.isnan(u.endpoint)]
        self.sessions += 1
        self.utterances += len(ended)
        self.finals += sum(not math.isnan(u.final) for u in ended)
        self.errors += timeline.errors


@dataclass
class Sample:
    minute: float  # since the soak began
    rss_mb: float
    load: float


def slope(samples: Sequence[Sample]) -> float:
    """Least-squares growth of RSS, MB per minute (NaN with fewer than two samples)."""
    if len(samples) < 2:
        return math.nan
    x = np.array([s.minute for s in samples])
    y = np.array([s.rss_mb for s in samples])
    return float(np.polyfit(x, y, 1)[0])


async def client(
    url: str,
    clips: Sequence[np.ndarray],
    args: argparse.Namespace,
    deadline: float,
    seed: int,
    tally: Tally,
) -> None:
    """Session after session until ``deadline``, each delayed by a random lead."""
    rng = np.random.default_rng(seed)
    while (left := deadline - time.perf_counter()) > 2.0:
        lead = float(rng.uniform(0.0, 2.0))
        stream = SpeechStream.build(clips, min(args.session_s, left), args.pause, lead)
        timeline = Timeline(stream)
        await stream_session(url, stream, timeline, "asr", args.frame_ms)
        tally.add(timeline)


async def soak(server: ServerProcess, clips: Sequence[np.ndarray], args) -> list[Sample]:
    start = time.perf_counter()
    deadline = start + args.minutes * 60
    tally, load = Tally(), LoadLog()
    samples: list[Sample] = []
    tasks = [
        asyncio.create_task(client(server.realtime_url(), clips, args, deadline, k, tally))
        for k in range(args.clients)
    ]
    print(f"{'minute':>6} {'RSS MB':>7} {'load':>5} {'sessions':>8} {'finals':>9} {'errors':>6}")
    while True:
        now = time.perf_counter()
        samples.append(Sample((now - start) / 60, server.rss_mb(), load.sample()))
        s = samples[-1]
        print(
            f"{s.minute:6.2f} {s.rss_mb:7.1f} {s.load:5.1f} {tally.sessions:8d} "
            f"{tally.finals:4d}/{tally.utterances:<4d} {len(tally.errors):6d}",
            flush=True,
        )
        if now >= deadline or all(t.done() for t in tasks):
            break
        await asyncio.sleep(min(args.every, max(0.0, deadline - now)))
    await asyncio.gather(*tasks)  # every client's last session, with its finals
    samples.append(Sample((time.perf_counter() - start) / 60, server.rss_mb(), load.sample()))
    print(load.summary())
    print(
        f"clients got {tally.finals} finals for {tally.utterances} utterances in "
        f"{tally.sessions} sessions; {len(tally.errors)} errors"
    )
    for message in sorted(set(tally.errors)):
        print(f"  server error: {message}")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--session-s", type=float, default=60.0, help="audio per session")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup-s", type=float, default=60.0, help="left out of the late slope")
    args = parser.parse_args()

    clips = example_clips(args.wav)
    with ServerProcess(serve_args(args, args.clients)) as server:
        loaded = server.rss_mb()
        print(describe())
        print(
            f"mooer serve (pid {server.pid}, {args.model or 'demo model'}) on loopback, "
            f"{loaded:.0f} MB once loaded; {args.clients} clients streaming speech for "
            f"{args.minutes:g} min, a new session every {args.session_s:g} s; RSS every "
            f"{args.every:g} s"
        )
        samples = asyncio.run(soak(server, clips, args))
    rss = [s.rss_mb for s in samples]
    late = [s for s in samples if s.minute * 60 >= args.warmup_s]
    print(
        f"server RSS: start {rss[0]:.1f} MB, end {rss[-1]:.1f} MB, peak {max(rss):.1f} MB; "
        f"slope {slope(samples):+.2f} MB/min over the run, {slope(late):+.2f} MB/min after "
        f"the first {args.warmup_s:g} s"
    )


if __name__ == "__main__":
    main()
