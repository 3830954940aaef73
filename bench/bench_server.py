"""Live sessions through the real server on loopback: latency to the final, cadence, capacity.

``mooer serve`` runs in a child process (what users run; its model is the demo model unless
``--model`` names another). N clients connect to ``/v1/realtime`` at once and stream real speech
(see ``bench_session.py``: the example recordings with pauses, each client's stream delayed by a
random lead) as binary PCM16 frames at the pace of speech, with server VAD. Each client times
its events as they arrive: end of speech -> ``transcription.completed`` (the VAD's silence
included), ``speech_stopped`` -> ``completed``, and the time between ``delta`` events (the
Realtime wire sends one only when a partial grows the stable text, so short utterances get
one or none: "-").
Sessions are ramped until finals fall behind real time (``bench_session.Figures.keeps_up``).

    python bench/bench_server.py [--sessions 1 2 4 8 16] [--seconds 30] [--threads N]
    python bench/bench_server.py --quantize int8 --before DIR   # DIR: `git archive` of a commit

With ``--before``, a second server runs from another source tree (fp32) and the two take turns
at each session count, so that both meet the same load from other work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from mooer.audio import SAMPLE_RATE
from mooer.server.pcm import encode_pcm16

sys.path.insert(0, str(Path(__file__).parent))
from bench_session import (  # noqa: E402  (sibling scripts, not a package)
    Figures,
    Ramp,
    SpeechStream,
    Timeline,
    example_clips,
    session_streams,
    table_line,
)
from machine import CpuWatch, LoadLog, describe, rss_mb  # noqa: E402


def free_port() -> int:
    """A loopback port free now (another process may still take it before it is used)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """``mooer serve`` in a child process on a free loopback port; stopped with SIGINT."""

    def __init__(
        self, serve_args: Sequence[str] = (), new_session: bool = False, source: Path | None = None
    ) -> None:
        """``source``: a mooer source tree to serve from (another commit, unpacked) instead of
        the one this process imports."""
        self.port = free_port()
        command = [sys.executable, "-m", "mooer.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "warning", *serve_args]
        env = None if source is None else {**os.environ, "PYTHONPATH": str(source.resolve())}
        # `python -m` puts its working directory first on sys.path, ahead of PYTHONPATH: run
        # from the source tree, or a server started from a checkout serves the checkout's code.
        cwd = None if source is None else source.resolve()
        # new_session: a scheduling group of its own where the kernel groups by session
        # (autogroup), as Ray's daemons and workers have; else it shares the clients' CPU share.
        self.process = subprocess.Popen(command, start_new_session=new_session, env=env, cwd=cwd)
        self._wait_ready(timeout=180.0)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def realtime_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?intent=transcription"

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"mooer serve exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.http}/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit(f"mooer serve did not answer /health within {timeout:.0f} s")

    def stop(self) -> None:
        """Graceful (pending finals go out), then killed if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


PARTIAL_EVENTS = (
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_translation.delta",
)
FINAL_EVENTS = (
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_translation.completed",
)


def record(timeline: Timeline, event: dict, now: float) -> None:
    """A realtime server event, onto the stream's timeline."""
    kind = event.get("type")
    if kind == "input_audio_buffer.speech_started":
        timeline.started(event["item_id"], event["audio_start_ms"])
    elif kind == "input_audio_buffer.speech_stopped":
        timeline.stopped(event["item_id"], event["audio_end_ms"], now)
    elif kind in PARTIAL_EVENTS:
        timeline.partial(event["item_id"], now)
    elif kind in FINAL_EVENTS:
        timeline.final(event["item_id"], now)
    elif kind == "error":
        timeline.errors.append(event["error"].get("message", ""))


async def stream_session(
    url: str, stream: SpeechStream, timeline: Timeline, task: str, frame_ms: int
) -> float:
    """Stream ``stream`` over one realtime session at the pace of speech, wait for the finals
    it is owed, close. Returns how late a frame was ever sent, in seconds."""
    import websockets

    frame = SAMPLE_RATE * frame_ms // 1000
    session = {
        "type": "transcription",
        "mooer": {"task": task},
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}}},
    }
    lag = 0.0
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": session}))

        async def read() -> None:
            async for message in ws:
                record(timeline, json.loads(message), time.perf_counter())

        reader = asyncio.create_task(read())
        timeline.t0 = t0 = time.perf_counter()
        for k, at in enumerate(range(0, stream.samples.size, frame)):
            wait = t0 + (k + 1) * frame / SAMPLE_RATE - time.perf_counter()  # captured by then
            if wait > 0:
                await asyncio.sleep(wait)
            lag = max(lag, -wait)
            await ws.send(encode_pcm16(stream.samples[at : at + frame]))
        deadline = time.perf_counter() + 60
        while timeline.pending() and time.perf_counter() < deadline and not reader.done():
            await asyncio.sleep(0.02)
        reader.cancel()
    return lag


def run_level(
    url: str, streams: Sequence[SpeechStream], task: str, frame_ms: int
) -> tuple[Figures, list[str]]:
    """All clients at once: the level's figures and the errors the server sent."""
    timelines = [Timeline(s) for s in streams]

    async def clients() -> list[float]:
        return await asyncio.gather(
            *(stream_session(url, s, t, task, frame_ms) for s, t in zip(streams, timelines))
        )

    lags = asyncio.run(clients())
    errors = [e for t in timelines for e in t.errors]
    return Figures.of(timelines, lag_s=max(lags)), errors


def serve_args(args: argparse.Namespace, max_sessions: int, quantize: bool = True) -> list[str]:
    """``mooer serve`` options from this script's own (``quantize`` False: without
    ``--quantize``)."""
    extra = ["--max-sessions", str(max_sessions), "--device", args.device]
    options = [("--model", args.model), ("--llm", args.llm), ("--threads", args.threads)]
    options.append(("--quantize", args.quantize if quantize else None))
    for flag, value in options:
        if value is not None:
            extra += [flag, str(value)]
    return extra


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """Options of the server under test and of the audio its clients stream."""
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--llm", help="Qwen2 folder for MTL checkpoints")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the worker")
    parser.add_argument("--quantize", choices=("int8",), default=None, help="mooer serve's")
    parser.add_argument("--pause", type=float, default=1.0, help="silence after each utterance")
    parser.add_argument("--frame-ms", type=int, default=20, help="audio per websocket frame")
    parser.add_argument("--wav", type=Path, nargs="+", default=[], help="default: examples/audio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per session")
    parser.add_argument("--task", default="asr", choices=("asr", "ast", "asr+ast"))
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 24, 32])
    parser.add_argument("--max-latency", type=float, default=1.0, help="endpoint->final p95, s")
    parser.add_argument(
        "--before",
        type=Path,
        help="a mooer source tree (an older commit, unpacked) served beside this one, without "
        "--quantize; the two take turns at each session count",
    )
    parser.add_argument(
        "--all-levels",
        action="store_true",
        help="run every session count, also after one fell behind (figures side by side)",
    )
    args = parser.parse_args()

    clips = example_clips(args.wav)
    count = max(args.sessions)
    with ExitStack() as stack:
        servers = {"now": stack.enter_context(ServerProcess(serve_args(args, count)))}
        if args.before is not None:
            before_args = serve_args(args, count, quantize=False)
            servers["before"] = stack.enter_context(ServerProcess(before_args, source=args.before))
        for server in servers.values():  # warm-up
            streams = session_streams(clips, 1, 4.0, args.pause)
            run_level(server.realtime_url(), streams, args.task, 20)
        print(describe())
        for name, server in servers.items():
            source = args.before if name == "before" else "this tree"
            print(
                f"{name}: mooer serve (pid {server.pid}, {args.model or 'demo model'}, from "
                f"{source}) on loopback{'' if name == 'before' else _flags(args)}"
            )
        print(
            f"{args.seconds:.0f} s per session ({len(clips)} utterances, {args.pause:.1f} s pauses)"
            f" in {args.frame_ms} ms binary frames; task {args.task}; cores: the server process's"
            " (main: its event loop)"
            "; delta every: between a Realtime client's transcription deltas (stable text grown)"
        )
        load = LoadLog()
        ramps = {name: Ramp(args.max_latency) for name in servers}
        for count in args.sessions:
            for name, server in servers.items():
                if ramps[name] is None:
                    continue
                load.sample()
                watch = CpuWatch(server.pid)
                streams = session_streams(clips, count, args.seconds, args.pause)
                url = server.realtime_url()
                figures, errors = run_level(url, streams, args.task, args.frame_ms)
                figures.cpu = watch.share()
                load.sample()
                columns = [("server", name)] + figures.columns(args.max_latency, "delta")
                columns.append(("RSS MB", f"{server.rss_mb():.0f}"))
                if count == args.sessions[0] and name == "now":
                    print(table_line(columns, header=True))
                print(table_line(columns), flush=True)
                for message in sorted(set(errors)):
                    print(f"  server error: {message}")
                if (not ramps[name].take(count, figures) or errors) and not args.all_levels:
                    print(f"{name}: {ramps[name].summary()}")
                    ramps[name] = None
            if all(ramp is None for ramp in ramps.values()):
                break
    print(load.summary())
    for name, ramp in ramps.items():
        if ramp is not None:
            print(f"{name}: {ramp.summary()}")


def _flags(args: argparse.Namespace) -> str:
    return f", --quantize {args.quantize}" if args.quantize else ""


if __name__ == "__main__":
    main()
