"""Live sessions through Ray Serve's proxy against one plain ``mooer serve`` on the same cores.

``--mode interleaved`` (the default) isolates the proxy's own cost: one Ray Serve replica that
also serves its app straight from its own process on a second port (uvicorn in the replica's
event loop: the same hub, model worker and process), and a plain ``mooer serve`` beside it, all
three idle but up; each round runs every session count through the proxy, straight to the
replica and to the plain server, in an order rotated every round, so the machine's load falls
on all three alike. It prints end of speech -> final and VAD endpoint -> final per route, and
the p50 differences: proxy - direct (the proxy hop alone, the target: under 20 ms) and
proxy - plain, pooled over the rounds and as the median of each round's difference; and the
cores that the proxy's and the replica's processes used while each route ran (the hop's CPU:
the proxy's own, and the replica's through the proxy less straight to it), which a loaded
machine blurs less than it blurs latency.

``--mode sequential``: the same clients and speech as ``bench_server.py`` (real-time PCM16 streams of the example
recordings, server VAD), against, one after the other: ``mooer serve`` (plain), ``mooer serve
--ray --replicas 1`` (the proxy's own cost: same single model worker, one hop more) and
``--replicas R`` (as many model workers). Per session count it prints the latency table of
``bench_session``; at the end the proxy's added latency: the difference of the p50 of end of
speech -> final and of VAD endpoint -> final between ``--replicas 1`` and plain (target: under
20 ms). ``RSS MB``: the plain server's process; for Ray, every process of the local cluster
(its own daemons, proxy and replicas), read from ``/proc``. Each server runs in a session of its
own: Ray starts its processes so, and where the kernel shares CPU by session (autogroup) a
plain server in the clients' session would get a smaller share than Ray's replicas.

    python bench/bench_ray.py [--rounds 4] [--sessions 1 4] [--seconds 20]
    python bench/bench_ray.py --mode sequential [--sessions 1 4 8] [--seconds 20] [--replicas 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import ServerProcess, add_server_args, free_port, run_level, serve_args  # noqa: E402
from bench_session import Figures, example_clips, session_streams, table_line  # noqa: E402
from machine import CpuWatch, LoadLog, describe, rss_mb  # noqa: E402

from mooer.server.ray_serve import MooerReplica  # noqa: E402


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


def own_ray_process(title: str) -> int:
    """The pid of this run's Ray worker titled ``title`` (``ray::ProxyActor``: Ray titles a
    worker by its actor's class), among this process's descendants, not another run's."""
    import psutil  # Ray ships it

    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error, IndexError):
            if process.cmdline()[0].startswith(title):
                return process.pid
    raise SystemExit(f"no Ray process {title} below this one")


def p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


class DirectReplica(MooerReplica):
    """A replica that also serves its app on ``direct_port``, from its own process and loop."""

    def __init__(self, recipe, direct_port: int) -> None:
        import uvicorn

        from mooer.server.app import create_app

        super().__init__(recipe)
        config = uvicorn.Config(create_app(self.hub), host="127.0.0.1", port=direct_port,
                                log_level="warning", lifespan="off")  # fmt: skip
        self._direct = asyncio.get_running_loop().create_task(uvicorn.Server(config).serve())


def interleaved(args: argparse.Namespace, clips: list) -> None:
    """The proxy's added latency: see the module's docstring."""
    from ray import serve

    from mooer.server.commands import HubRecipe
    from mooer.server.config import ServerConfig
    from mooer.server.ray_serve import RayOptions, deploy, start_ray, undeploy

    # headroom: a level's sessions may still be closing when the next level's connect
    most = 2 * max(args.sessions)
    config = ServerConfig(port=free_port(), max_sessions=most)
    recipe = HubRecipe(config, model=args.model, llm=args.llm, device=args.device,
                       threads=args.threads)  # fmt: skip
    options = RayOptions(replicas=1, replica_cpus=0)
    direct_port = free_port()
    start_ray(options)
    deployment = serve.deployment(**options.deployment_options(config))
    deploy(deployment(serve.ingress()(DirectReplica)).bind(recipe, direct_port), config)
    # CPU of the proxy's and the replica's processes per level: the hop's own cost, on any load
    watched = {"proxy": own_ray_process("ray::ProxyActor"),
               "replica": own_ray_process("ray::ServeReplica")}  # fmt: skip
    cores: dict[tuple[str, int], list[dict[str, float]]] = {}
    realtime = "/v1/realtime?intent=transcription"
    routes = {
        "proxy": f"ws://127.0.0.1:{config.port}{realtime}",
        "direct": f"ws://127.0.0.1:{direct_port}{realtime}",
    }
    load = LoadLog()
    figures: dict[tuple[str, int], list[Figures]] = {}
    try:
        with ServerProcess(serve_args(args, most), new_session=True) as plain:
            routes["plain"] = plain.realtime_url()
            for url in routes.values():  # warm: first decodes, connections, caches
                run_level(url, session_streams(clips, 1, 4.0, args.pause), "asr", 20)
            names = list(routes)
            for round_ in range(args.rounds):
                order = names[round_ % 3 :] + names[: round_ % 3]
                for count in args.sessions:
                    for name in order:
                        idle(routes[name])
                        load.sample()
                        streams = session_streams(clips, count, args.seconds, args.pause)
                        watches = {what: CpuWatch(pid) for what, pid in watched.items()}
                        level, errors = run_level(routes[name], streams, "asr", args.frame_ms)
                        used = {what: w.share().process for what, w in watches.items()}
                        figures.setdefault((name, count), []).append(level)
                        cores.setdefault((name, count), []).append(used)
                        speech = p50_ms(level.end_of_speech)
                        print(f"round {round_ + 1} {name:>6} x{count}: finals {level.finals}/"
                              f"{level.utterances}, end of speech->final p50 {speech:.0f} ms, "
                              f"cores: proxy {used['proxy']:.2f}, replica {used['replica']:.2f}, "
                              f"load {load.samples[-1]:.1f}", flush=True)  # fmt: skip
                        for message in sorted(set(errors)):
                            print(f"  server error: {message}")
    finally:
        undeploy()
    print(describe())
    print(load.summary())
    report(figures, args.sessions, args.rounds)
    print("cores used while a route ran (mean of the rounds): proxy's process, replica's process")
    for (name, count), levels in sorted(cores.items(), key=lambda item: (item[0][1], item[0][0])):
        proxy, replica = (statistics.mean(used[what] for used in levels) for what in watched)
        print(f"{name:>6} {count:>8}  {proxy:.2f}  {replica:.2f}")


def idle(realtime_url: str, timeout_s: float = 60.0) -> None:
    """Wait until the server behind ``realtime_url`` holds no session (the last level's have
    closed), by its ``/health``."""
    health = realtime_url.replace("ws://", "http://").split("/v1/")[0] + "/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(health, timeout=10) as reply:
            if json.load(reply).get("sessions", 0) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"{health}: sessions still open after {timeout_s:.0f} s")


def report(figures: dict[tuple[str, int], list[Figures]], sessions: list[int], rounds: int) -> None:
    """Per route and session count: pooled p50/p95; then the differences of the p50s."""
    print("route  sessions finals  end of speech->final p50/p95 ms  endpoint->final p50/p95 ms")
    for (name, count), levels in sorted(figures.items(), key=lambda item: (item[0][1], item[0][0])):
        speech = [v for f in levels for v in f.end_of_speech]
        endpoint = [v for f in levels for v in f.endpoint]
        finals = f"{sum(f.finals for f in levels)}/{sum(f.utterances for f in levels)}"
        print(f"{name:>6} {count:>8} {finals:>7}  {p50_ms(speech):>6.0f} / {p95_ms(speech):<6.0f}"
              f"                   {p50_ms(endpoint):>6.0f} / {p95_ms(endpoint):.0f}")  # fmt: skip
    print(f"p50 differences, ms (pooled over {rounds} rounds; median of the rounds' differences):")
    for count in sessions:
        for other in ("direct", "plain"):
            for what in ("end_of_speech", "endpoint"):
                ours = figures[("proxy", count)]
                theirs = figures[(other, count)]
                pooled = p50_ms([v for f in ours for v in getattr(f, what)]) - p50_ms(
                    [v for f in theirs for v in getattr(f, what)]
                )
                paired = statistics.median(
                    p50_ms(getattr(a, what)) - p50_ms(getattr(b, what))
                    for a, b in zip(ours, theirs)
                )
                print(f"  x{count} proxy - {other}, {what.replace('_', ' ')} -> final: "
                      f"{pooled:+.0f}; {paired:+.0f}")  # fmt: skip


def p95_ms(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] * 1000 if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--mode", choices=["interleaved", "sequential"], default="interleaved")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved: rounds of routes")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per session")
    parser.add_argument("--sessions", type=int, nargs="+", default=None,
                        help="default: 1 4 (interleaved), 1 4 8 (sequential)")  # fmt: skip
    parser.add_argument("--replicas", type=int, default=2, help="the scaled-out run's replicas")
    parser.add_argument("--max-latency", type=float, default=1.0, help="endpoint->final p95, s")
    args = parser.parse_args()

    clips = example_clips(args.wav)
    if args.mode == "interleaved":
        args.sessions = args.sessions or [1, 4]
        interleaved(args, clips)
        return
    args.sessions = args.sessions or [1, 4, 8]
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
