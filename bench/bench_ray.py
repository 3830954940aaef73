"""Live sessions through Ray Serve's proxy against one plain ``mooer serve`` on the same cores.

The same clients and speech as ``bench_server.py`` (real-time PCM16 streams of the example
recordings, server VAD), against, one after the other: ``mooer serve`` (plain), ``mooer serve
--ray --replicas 1`` (the proxy's own cost: same single model worker, one hop more) and
``--replicas R`` (as many model workers). Per session count it prints the latency table of
``bench_session``; at the end the proxy's added latency: the difference of the p50 of end of
speech -> final and of VAD endpoint -> final between ``--replicas 1`` and plain (target: under
20 ms). ``RSS MB``: the plain server's process; for Ray, every process of the local cluster
(its own daemons, proxy and replicas), read from ``/proc``. Each server runs in a session of its
own: Ray starts its processes so, and where the kernel shares CPU by session (autogroup) a
plain server in the clients' session would get a smaller share than Ray's replicas.

    python bench/bench_ray.py [--sessions 1 4 8] [--seconds 20] [--replicas 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import ServerProcess, add_server_args, run_level, serve_args  # noqa: E402
from bench_session import Figures, example_clips, session_streams, table_line  # noqa: E402
from machine import LoadLog, describe, rss_mb  # noqa: E402


def ray_rss_mb() -> float:
    """Resident memory of every Ray process on this machine (daemons, proxy, replicas)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        if b"ray::" in command or b"/ray/" in command or b"raylet" in command:
            total += rss_mb(int(pid))
    return total


def p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--replicas", type=int, default=2, help="the scaled-out run's replicas")
    parser.add_argument("--max-latency", type=float, default=1.0, help="endpoint->final p95, s")
    args = parser.parse_args()

    clips = example_clips(args.wav)
    base = serve_args(args, max(args.sessions))
    setups = {
        "plain": base,
        "ray x1": [*base, "--ray", "--replicas", "1", "--replica-cpus", "0"],
        f"ray x{args.replicas}": [
            *base,
            "--ray",
            "--replicas",
            str(args.replicas),
            "--replica-cpus",
            "0",
        ],  # fmt: skip
    }
    print(describe())
    print(
        f"{args.seconds:.0f} s per session ({len(clips)} utterances, {args.pause:.1f} s pauses) "
        f"in {args.frame_ms} ms binary frames; asr; each server started afresh"
    )
    load = LoadLog()
    results: dict[str, dict[int, Figures]] = {}
    for name, extra in setups.items():
        with ServerProcess(extra, new_session=True) as server:
            run_level(server.realtime_url(), session_streams(clips, 1, 4.0, args.pause), "asr", 20)
            results[name] = {}
            for count in args.sessions:
                load.sample()
                streams = session_streams(clips, count, args.seconds, args.pause)
                figures, errors = run_level(server.realtime_url(), streams, "asr", args.frame_ms)
                load.sample()
                results[name][count] = figures
                rss = server.rss_mb() if name == "plain" else ray_rss_mb()
                columns = [("server", f"{name:>7}")] + figures.columns(args.max_latency, "delta")
                columns = [c for c in columns if not c[0].startswith("cores")] + [
                    ("RSS MB", f"{rss:.0f}")
                ]
                if name == "plain" and count == args.sessions[0]:
                    print(table_line(columns, header=True))
                print(table_line(columns), flush=True)
                for message in sorted(set(errors)):
                    print(f"  server error: {message}")
    print(load.summary())
    print(
        "added by the proxy (ray x1 - plain), p50 ms: sessions: end of speech->final, endpoint->final"
    )
    for count in args.sessions:
        plain, ray = results["plain"][count], results["ray x1"][count]
        speech = p50_ms(ray.end_of_speech) - p50_ms(plain.end_of_speech)
        endpoint = p50_ms(ray.endpoint) - p50_ms(plain.endpoint)
        print(f"  {count}: {speech:+.0f}, {endpoint:+.0f}")


if __name__ == "__main__":
    main()
