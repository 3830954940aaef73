"""The meeting store's cost: listing and searching a large store, and what recording adds to a
live session's CPU.

1. A store of ``--meetings`` meetings (default 100) of one hour each, one segment every 5 s
   (720 a meeting: 72,000 segments; half carry a translation), written in bulk. Then, each
   ``--repeat`` times: the listing (newest 100 with counts and durations), a search for a word
   in a few meetings, for a word in none, for words in most (a two-character Mandarin word,
   shorter than a trigram, and an English one), reading one meeting, and its SRT export.
   Target: list and search under 100 ms.
2. Recording's added CPU: one live session on the demo model (the example recordings, as many
   utterances as ``--utterances``) gives the engine events of real finals and the CPU time the
   session spent on them; the same events are then recorded ``--record-repeat`` times into a
   fresh store (one transaction a final, as the server does) and their CPU time is measured.
   Target: recording adds under 5 % to the session's CPU. The same again with each segment's
   audio kept (``--record-audio``: the received audio appended to a tape in 100 ms frames, each
   final's audio cut out and compressed to FLAC and stored with it). CPU time is ``time.process_time``
   (every thread of this process), so waiting for the disk is not counted as CPU; the wall time
   a write takes (its fsync included) is printed too.

    python bench/bench_meetings.py [--db URL] [--meetings 100] [--repeat 20]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mooer.meetings.export import render
from mooer.meetings.recording import Recording
from mooer.meetings.store import MeetingStore, meetings, metadata, new_meeting_id, segments
from mooer.meetings.tape import AudioTape

sys.path.insert(0, str(Path(__file__).parent))
from machine import LoadLog, describe  # noqa: E402  (a sibling script, not a package)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "audio"
SEGMENT_EVERY_MS = 5000
HOUR_MS = 3_600_000
WORDS = ("today the weather is nice we go out for a walk budget plan review team next week "
         "今天 天气 不错 我们 出去 走走 预算 计划 会议 下周").split()  # fmt: skip
RARE = "quarterly-offsite"  # in three meetings
TARGET_MS = 100.0
TARGET_CPU = 0.05


def fill(store: MeetingStore, count: int, seed: int = 0) -> list[str]:
    """``count`` one-hour meetings written in bulk (one transaction a meeting); their ids."""
    rng = random.Random(seed)
    store.open()
    ids = []
    t0 = time.time() - count * 7200
    for m in range(count):
        meeting_id, start = new_meeting_id(), t0 + m * 7200
        rows = []
        for i, ms in enumerate(range(0, HOUR_MS, SEGMENT_EVERY_MS)):
            text = " ".join(rng.choices(WORDS, k=12))
            if m % 40 == 0 and i == 100:
                text += " " + RARE
            rows.append({
                "meeting_id": meeting_id, "item_id": f"item_{i}", "start_ms": ms,
                "end_ms": ms + 4000, "wall_start": start + ms / 1000,
                "wall_end": start + ms / 1000 + 4, "transcript": text,
                "translation": text.upper() if i % 2 else None,
                "search_text": text if i % 2 == 0 else f"{text}\n{text}",
            })  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(
                meetings.insert().values(
                    id=meeting_id,
                    protocol="realtime",
                    started_at=start,
                    ended_at=start + 3600,
                    segment_count=len(rows),
                    duration_ms=rows[-1]["end_ms"],
                )
            )
            conn.execute(segments.insert(), rows)  # fmt: skip
        ids.append(meeting_id)
    return ids


def timed(repeat: int, fn) -> tuple[float, float, float, object]:
    """Median and max wall time of ``fn()`` in ms, its median CPU time (what the wall time
    would be on an idle machine, the query being single-threaded), and its last result."""
    times, cpus, result = [], [], None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return statistics.median(times), max(times), statistics.median(cpus), result


def bench_store(store: MeetingStore, count: int, repeat: int) -> None:
    start = time.perf_counter()
    ids = fill(store, count)
    print(f"store {store.where}: {count} meetings x {HOUR_MS // SEGMENT_EVERY_MS} segments "
          f"written in {time.perf_counter() - start:.1f} s")  # fmt: skip
    cases = [
        ("list (newest 100)", lambda: store.list()),
        (f"search {RARE!r}", lambda: store.list(search=RARE)),
        ("search 'no-such-word'", lambda: store.list(search="no-such-word")),
        ("search '预算' (most meetings)", lambda: store.list(search="预算")),
        ("search 'budget' (most)", lambda: store.list(search="budget")),
        ("read one meeting", lambda: store.get(ids[count // 2])),
        ("read + export SRT", lambda: render(store.get(ids[count // 2]), "srt")),
    ]
    print(f"{'query':<30} {'median ms':>10} {'max ms':>8} {'CPU ms':>7} {'found':>6}  target")
    for name, fn in cases:
        median, worst, cpu, result = timed(repeat, fn)
        found = len(result) if isinstance(result, list) else 1
        target = f"< {TARGET_MS:.0f} ms" if name.startswith(("list", "search")) else ""
        verdict = ("ok" if median < TARGET_MS else "MISSED") if target else ""
        print(f"{name:<30} {median:>10.1f} {worst:>8.1f} {cpu:>7.1f} {found:>6}  {target} "
              f"{verdict}")  # fmt: skip


def live_session_events(utterances: int) -> tuple[list, float, np.ndarray]:
    """A live asr+ast session on the demo model: its events, its CPU seconds, its audio."""
    import threading

    from mooer.agent.engine import Engine
    from mooer.agent.session import SessionConfig
    from mooer.audio import SAMPLE_RATE, load_audio
    from mooer.model import load_model

    model = load_model()
    clips = [load_audio(p) for p in sorted(EXAMPLES.glob("zh_*.wav"))]
    pause = np.zeros(SAMPLE_RATE, dtype=np.float32)
    audio = np.concatenate([part for c in (clips * utterances)[:utterances] for part in (c, pause)])
    engine = Engine(model, threads=1)
    events, done = [], threading.Event()

    def on_event(event) -> None:
        events.append(event)
        if type(event).__name__ == "SessionClosed":
            done.set()

    cpu = time.process_time()
    session = engine.open(SessionConfig(mode="asr+ast"), on_event)
    for i in range(0, audio.size, SAMPLE_RATE // 10):
        session.feed(audio[i : i + SAMPLE_RATE // 10])
    session.close(flush=True)
    done.wait()
    cpu = time.process_time() - cpu
    engine.close()
    return events, cpu, audio


def bench_recording(db: str | None, utterances: int, repeat: int) -> None:
    from mooer.audio import SAMPLE_RATE

    events, session_cpu, audio = live_session_events(utterances)
    audio_s = audio.size / SAMPLE_RATE
    finals = sum(type(e).__name__ in ("Transcript", "Translation") for e in events)
    print(f"live asr+ast session on the demo model: {audio_s:.0f} s of audio, "
          f"{finals} finals, {session_cpu:.2f} CPU s")  # fmt: skip
    frame = SAMPLE_RATE // 10
    for with_audio in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            store = MeetingStore(db or str(Path(tmp) / "record.db")).open()
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(repeat):
                tape = AudioTape() if with_audio else None
                if tape is not None:  # what the event loop does as the audio arrives
                    for i in range(0, audio.size, frame):
                        tape.append(audio[i : i + frame])
                recording = Recording(store, "realtime", lambda: audio.size * 1000 // SAMPLE_RATE,
                                      tape=tape)  # fmt: skip
                recording.begin()
                for event in events:
                    recording.observe(event, 0)
                recording.end()
            cpu = (time.process_time() - cpu) / repeat
            wall = (time.perf_counter() - wall) / repeat
            if db:
                metadata.drop_all(store.engine)
            store.close()
        share = cpu / session_cpu
        what = "with each segment's audio (FLAC)" if with_audio else "text only"
        print(f"recording it, {what} ({store.where.split(':')[0]}): {cpu * 1000:.1f} CPU ms "
              f"({cpu / finals * 1000:.2f} ms a final; wall {wall / finals * 1000:.2f} ms a "
              f"final, fsync included) = {share:.2%} of the session's CPU; target "
              f"< {TARGET_CPU:.0%} {'ok' if share < TARGET_CPU else 'MISSED'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="store URL (default: a SQLite file in a temporary folder)")
    parser.add_argument("--meetings", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--record-repeat", type=int, default=20)
    args = parser.parse_args()
    load = LoadLog()
    print(describe())
    load.sample()
    with tempfile.TemporaryDirectory() as tmp:
        store = MeetingStore(args.db or str(Path(tmp) / "meetings.db"))
        if args.db and store.list(limit=1):
            raise SystemExit(f"--db {store.where} holds meetings: give the bench an empty database")
        try:
            bench_store(store, args.meetings, args.repeat)
            if args.db:  # the recording part starts from an empty store too
                metadata.drop_all(store.engine)
            load.sample()
            bench_recording(args.db, args.utterances, args.record_repeat)
        finally:
            if args.db:  # the database is left empty, as it was given
                metadata.drop_all(store.engine)
            store.close()
    load.sample()
    print(load.summary())


if __name__ == "__main__":
    main()
