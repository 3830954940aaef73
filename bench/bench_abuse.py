"""A 3-hour silent FLAC posted to ``mooer serve``, and a storm of websocket connects, each with a
normal 1-s request sent beside it.

The file (digital silence, PCM16 FLAC, about 0.5 MB) is written with soundfile a minute at a
time. ``mooer serve`` runs in a child process with the demo model; its RSS is sampled every
20 ms while the silent upload and, 0.1 s after it, a normal request (one short spoken sentence,
about 1 s) are in flight. Issue 15's targets: the silent upload refused or answered in < 2 s,
RSS growth < 50 MB, the normal request answered in < 1 s.

Two runs: the server's defaults (the upload is over ``--max-request-audio`` 3600 s and is
refused from its header), and ``--raised`` as well: the limit raised above 3 hours, so the
upload is decoded and searched for speech in 5 s steps beside the normal request; its client
gives up after ``--give-up`` seconds and the server must stop working on it.

Then ``--storm`` connections (default 200) open ``/v1/realtime`` at once, each sending a
malformed frame and going away without a close, while the normal request is timed; the server
must refuse nothing it should serve and stay within the same RSS bound.

    python bench/bench_abuse.py [--hours 3] [--raised] [--give-up 10] [--storm 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import websockets

from mooer.audio import SAMPLE_RATE
from mooer.tts import espeak

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import ServerProcess  # noqa: E402  (sibling scripts, not a package)
from machine import describe  # noqa: E402

SENTENCE = "good morning"


def silent_flac(path: Path, hours: float) -> Path:
    minute = np.zeros(60 * SAMPLE_RATE, np.int16)
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(round(hours * 60)):
            f.write(minute)
    return path


def spoken(path: Path) -> Path:
    pcm = espeak.synthesize(SENTENCE)
    sf.write(path, pcm, espeak.SAMPLE_RATE_ESPEAK, subtype="PCM_16")
    return path


def post(url: str, path: Path, timeout: float) -> tuple[float, int | str]:
    """(seconds, HTTP status or what went wrong)."""
    started = time.monotonic()
    try:
        with open(path, "rb") as f:
            reply = httpx.post(
                f"{url}/v1/audio/transcriptions",
                files={"file": (path.name, f)},
                data={"model": "mooer"},
                timeout=timeout,
            )
        outcome: int | str = reply.status_code
    except httpx.TimeoutException:
        outcome = "client gave up"
    return time.monotonic() - started, outcome


class RssWatch:
    """The server's peak RSS over a stretch of time, sampled on a thread."""

    def __init__(self, server: ServerProcess) -> None:
        self.server, self.peak, self._stop = server, server.rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.server.rss_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


def run(big: Path, small: Path, serve_args: list[str], give_up: float) -> None:
    with ServerProcess(serve_args) as server:
        post(server.http, small, 60)  # warm: the first request loads the VAD
        before = server.rss_mb()
        watch = RssWatch(server)
        with ThreadPoolExecutor(1) as pool:
            upload = pool.submit(post, server.http, big, give_up)
            time.sleep(0.1)
            normal_s, normal = post(server.http, small, 60)
            big_s, outcome = upload.result()
        peak = watch.stop()
        time.sleep(1.0)
        after_s, after = post(server.http, small, 60)  # the server is free again
        print(f"  silent upload: {outcome} in {big_s:.2f} s")
        print(f"  normal request beside it: {normal} in {normal_s:.2f} s")
        print(f"  server RSS {before:.0f} MB before, peak {peak:.0f} MB: +{peak - before:.0f} MB")
        print(f"  normal request 1 s after: {after} in {after_s:.2f} s")


async def _storm(ws_url: str, count: int) -> dict[str, int]:
    """``count`` connects at once, each sends a frame that is not JSON and vanishes."""

    async def one() -> str:
        """What the server answered: the error code (invalid_json once it took the session)."""
        try:
            async with asyncio.timeout(30):
                ws = await websockets.connect(f"{ws_url}/v1/realtime?model=mooer", open_timeout=30)
                first = json.loads(await ws.recv())  # session.created, or a refusal
                if first.get("type") != "error":
                    await ws.send("{not json")
                    first = json.loads(await ws.recv())
                ws.transport.abort()  # gone without a close frame
                return first.get("error", {}).get("code") or first.get("type", "?")
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            return type(exc).__name__

    outcomes: dict[str, int] = {}
    for outcome in await asyncio.gather(*(one() for _ in range(count))):
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def storm(small: Path, count: int) -> None:
    with ServerProcess([]) as server:
        post(server.http, small, 60)  # warm
        before = server.rss_mb()
        watch = RssWatch(server)
        ws_url = server.http.replace("http://", "ws://")
        with ThreadPoolExecutor(1) as pool:
            flood = pool.submit(asyncio.run, _storm(ws_url, count))
            time.sleep(0.2)
            normal_s, normal = post(server.http, small, 60)
            outcomes = flood.result()
        peak = watch.stop()
        print(f"  {count} connects: {outcomes}")
        print(f"  normal request beside them: {normal} in {normal_s:.2f} s")
        print(f"  server RSS {before:.0f} MB before, peak {peak:.0f} MB: +{peak - before:.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--raised", action="store_true", help="also with the limit raised")
    parser.add_argument("--give-up", type=float, default=10.0, help="client timeout (s)")
    parser.add_argument("--storm", type=int, default=200, help="websocket connects at once")
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        big = silent_flac(Path(tmp) / "silence.flac", args.hours)
        small = spoken(Path(tmp) / "sentence.wav")
        seconds = sf.info(str(small)).duration
        print(
            f"{args.hours:g} h of silence as FLAC: {big.stat().st_size / 1000:.0f} KB; "
            f"normal request: {SENTENCE!r}, {seconds:.2f} s"
        )
        print("default limits (--max-request-audio 3600):")
        run(big, small, [], args.give_up)
        if args.raised:
            limit = str(args.hours * 3600 + 60)
            print(f"--max-request-audio {limit} (the upload is decoded; its client gives up):")
            run(big, small, ["--max-request-audio", limit], args.give_up)
        if args.storm:
            print(f"a storm of {args.storm} websocket connects:")
            storm(small, args.storm)


if __name__ == "__main__":
    main()
