"""Live sessions in real time on the demo model: latency to the final, partial cadence, capacity.

Every session gets real speech (the example recordings, which the demo model understands, each
trimmed to its speech and followed by a pause) in 20 ms chunks at the pace a microphone sends
them: one feeder thread for all sessions, each session's stream delayed by a random lead so that
their utterances do not end together; the VAD scores each round of chunks of all sessions
together, as ``mooer serve`` does (``--vad-alone``: each session's by itself). Per utterance
it measures, on one clock:

- end of speech -> final: from the instant the utterance's last spoken sample was captured (its
  place in the stream is known) to the final transcript; the VAD's silence wait is included;
- endpoint -> final: from the VAD's end-of-utterance decision to the final;
- partial cadence: the time between successive partial updates of an utterance, and from the
  start of speech to the first one.

Sessions are ramped (``--sessions``) until they fall behind real time: a count keeps up while
every utterance gets its final and the 95th percentile of endpoint -> final stays under
``--max-latency``. ``lag`` is how late the feeder ever was (a starved feeder delivers audio
late, which the end-of-speech latency then includes).

    python bench/bench_session.py [--seconds 30] [--sessions 1 2 4 8 16] [--mode asr]
    python bench/bench_session.py --llm-backend vllm   # with the vLLM venv's python
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mooer.agent import events as ev
from mooer.agent.engine import RECORD_LENGTH, Engine, default_threads
from mooer.agent.session import SessionConfig, score_heard
from mooer.audio import SAMPLE_RATE, load_audio
from mooer.model import load_model

sys.path.insert(0, str(Path(__file__).parent))
from machine import CpuShare, CpuWatch, LoadLog, describe  # noqa: E402  (a sibling script, not a package)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "audio"
CHUNK = SAMPLE_RATE // 50  # 20 ms
FRAME = SAMPLE_RATE // 100  # 10 ms, the resolution of speech trimming
TARGETS = {"end of speech p50": 0.7, "end of speech p95": 1.0, "endpoint p50": 0.2}


def trim(clip: np.ndarray, floor_db: float = 35.0) -> np.ndarray:
    """The clip from its first to its last 10 ms frame within ``floor_db`` of its loudest."""
    frames = clip[: clip.size // FRAME * FRAME].reshape(-1, FRAME)  # (N,) -> (F, 160)
    rms = np.sqrt((frames**2).mean(axis=1))  # (F,)
    loud = np.flatnonzero(rms >= max(rms.max() * 10 ** (-floor_db / 20), 1e-4))
    if loud.size == 0:
        raise SystemExit("a clip holds no speech: pass other --wav files")
    return clip[loud[0] * FRAME : (loud[-1] + 1) * FRAME]


def example_clips(paths: Sequence[Path] = ()) -> list[np.ndarray]:
    """Speech trimmed of its leading and trailing silence: ``paths``, else the examples."""
    paths = list(paths) or sorted(EXAMPLES.glob("*.wav"))
    if not paths:
        raise SystemExit(f"no example recordings in {EXAMPLES}: pass --wav FILE")
    return [trim(load_audio(p)) for p in paths]


@dataclass(frozen=True)
class SpeechStream:
    """Utterances with pauses between them, and where each one's speech ends."""

    samples: np.ndarray  # (N,) float32 at 16 kHz
    speech_ends: np.ndarray  # (U,) sample just past each utterance's last spoken one

    @classmethod
    def build(
        cls, clips: Sequence[np.ndarray], seconds: float, pause_s: float = 1.0, lead_s: float = 0.0
    ) -> SpeechStream:
        """``lead_s`` of silence, then the clips in turn, each followed by ``pause_s`` of
        silence, as many as fit in ``seconds``; silence pads the rest (no utterance is cut)."""
        total = int(seconds * SAMPLE_RATE)
        pause = np.zeros(int(pause_s * SAMPLE_RATE), dtype=np.float32)
        parts = [np.zeros(int(lead_s * SAMPLE_RATE), dtype=np.float32)]
        ends: list[int] = []
        at = parts[0].size
        for clip in itertools.cycle(clips):
            if at + clip.size + pause.size > total:
                break
            parts += [clip, pause]
            ends.append(at + clip.size)
            at += clip.size + pause.size
        samples = np.concatenate(parts)
        samples = np.pad(samples, (0, max(0, total - samples.size)))
        return cls(samples, np.array(ends, dtype=np.int64))

    def nearest_end(self, sample: int) -> int:
        """The utterance end closest to ``sample`` (where a VAD put one)."""
        return int(self.speech_ends[np.abs(self.speech_ends - sample).argmin()])


@dataclass
class Utterance:
    """When one utterance's moments happened, on the ``time.perf_counter`` clock."""

    start: float = math.nan  # its speech began (VAD onset, padding included)
    speech_end: float = math.nan  # its last spoken sample was captured
    endpoint: float = math.nan  # the VAD decided it had ended
    final: float = math.nan  # the final result arrived
    partials: list[float] = field(default_factory=list)  # partial updates arrived


class Timeline:
    """One stream's utterances as its events report them. ``t0``: when sample 0 was captured,
    so sample ``s`` was captured at ``t0 + s / 16000`` (a real-time stream)."""

    def __init__(self, stream: SpeechStream) -> None:
        self.stream = stream
        self.t0 = math.nan
        self.items: dict[str, Utterance] = {}
        self.errors: list[str] = []

    def pending(self) -> bool:
        """Whether an utterance that ended still waits for its final."""
        return any(not math.isnan(u.endpoint) and math.isnan(u.final) for u in self.items.values())

    def _at(self, ms: int) -> float:
        return self.t0 + ms / 1000

    def started(self, item: str, audio_start_ms: int) -> None:
        self.items.setdefault(item, Utterance()).start = self._at(audio_start_ms)

    def stopped(self, item: str, audio_end_ms: int, now: float) -> None:
        utterance = self.items.setdefault(item, Utterance())
        utterance.endpoint = now
        end = self.stream.nearest_end(audio_end_ms * SAMPLE_RATE // 1000)
        utterance.speech_end = self.t0 + end / SAMPLE_RATE

    def partial(self, item: str, now: float) -> None:
        utterance = self.items.setdefault(item, Utterance())
        if math.isnan(utterance.endpoint):  # not the final's own delta
            utterance.partials.append(now)

    def final(self, item: str, now: float) -> None:
        utterance = self.items.setdefault(item, Utterance())
        utterance.final = now if math.isnan(utterance.final) else max(utterance.final, now)

    def on_event(self, event: ev.Event) -> None:
        """An engine session's events (asr, ast and asr+ast modes)."""
        now = time.perf_counter()
        if isinstance(event, ev.SpeechStarted):
            self.started(event.item_id, event.audio_start_ms)
        elif isinstance(event, ev.SpeechStopped):
            self.stopped(event.item_id, event.audio_end_ms, now)
        elif isinstance(event, ev.TranscriptDelta | ev.TranslationDelta):
            self.partial(event.item_id, now)
        elif isinstance(event, ev.Transcript | ev.Translation):
            self.final(event.item_id, now)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


@dataclass
class Figures:
    """One level of the ramp, all sessions together."""

    sessions: int
    utterances: int  # the VAD ended
    finals: int  # of those, with a final
    end_of_speech: list[float]  # end of speech -> final, s
    vad_wait: list[float]  # end of speech -> VAD endpoint, s
    endpoint: list[float]  # VAD endpoint -> final, s
    intervals: list[float]  # between successive partial updates of an utterance, s
    first_partial: list[float]  # start of speech -> first partial update, s
    lag_s: float  # how late the sender ever was
    cpu: CpuShare | None = None  # of the process that runs the model

    @classmethod
    def of(cls, timelines: Sequence[Timeline], lag_s: float) -> Figures:
        done = [u for t in timelines for u in t.items.values() if not math.isnan(u.endpoint)]
        final = [u for u in done if not math.isnan(u.final)]
        return cls(
            sessions=len(timelines),
            utterances=len(done),
            finals=len(final),
            end_of_speech=[u.final - u.speech_end for u in final],
            vad_wait=[u.endpoint - u.speech_end for u in done],
            endpoint=[u.final - u.endpoint for u in final],
            intervals=[b - a for u in done for a, b in zip(u.partials, u.partials[1:])],
            first_partial=[u.partials[0] - u.start for u in done if u.partials],
            lag_s=lag_s,
        )

    def keeps_up(self, max_latency: float) -> bool:
        """Every utterance got its final, and finals do not queue up behind the audio."""
        return (
            self.utterances > 0
            and self.finals == self.utterances
            and _percentile(self.endpoint, 95) <= max_latency
        )

    def meets_targets(self) -> bool:
        """The issue's latency targets (500 ms of VAD silence included)."""
        figures = {
            "end of speech p50": _percentile(self.end_of_speech, 50),
            "end of speech p95": _percentile(self.end_of_speech, 95),
            "endpoint p50": _percentile(self.endpoint, 50),
        }
        return self.keeps_up(math.inf) and all(figures[k] <= v for k, v in TARGETS.items())

    def columns(self, max_latency: float, updates: str = "partial") -> list[tuple[str, str]]:
        """(title, value) of each column of the report's table; ``updates``: what the partial
        events are called (a server's wire may send fewer than the partials decoded)."""

        def ms(values: Sequence[float], *qs: float) -> str:
            if not values:
                return "-"
            return "/".join(f"{_percentile(values, q) * 1e3:.0f}" for q in qs)

        cpu = self.cpu or CpuShare(math.nan, math.nan, math.nan)
        return [
            ("sessions", f"{self.sessions}"),
            ("finals", f"{self.finals}/{self.utterances}"),
            ("speech end->final p50/p95/max ms", ms(self.end_of_speech, 50, 95, 100)),
            ("VAD wait p50", ms(self.vad_wait, 50)),
            ("endpoint->final p50/p95", ms(self.endpoint, 50, 95)),
            (f"{updates} every p50/p95", ms(self.intervals, 50, 95)),
            (f"1st {updates} p50", ms(self.first_partial, 50)),
            (
                "cores all/main/worker/waiting",
                f"{cpu.process:.2f}/{cpu.main:.2f}/{cpu.worker:.2f}/{cpu.worker_waiting:.2f}",
            ),
            ("lag ms", f"{self.lag_s * 1e3:.0f}"),
            ("keeps up", "yes" if self.keeps_up(max_latency) else "no"),
            ("targets", "met" if self.meets_targets() else "missed"),
        ]


def table_line(columns: Sequence[tuple[str, str]], header: bool = False) -> str:
    """A row of the report's table (or its header), each value under its title."""
    return "  ".join(title if header else value.rjust(len(title)) for title, value in columns)


@dataclass
class Ramp:
    """Session counts tried in increasing order, until one falls behind real time."""

    max_latency: float
    kept: int = 0  # the largest count that kept up
    met: int = 0  # the largest count within the latency targets, as were all counts below it

    def take(self, count: int, figures: Figures) -> bool:
        """Record the level of ``count`` sessions; False once they fell behind."""
        if figures.meets_targets() and self.met == self.kept:
            self.met = count
        if not figures.keeps_up(self.max_latency):
            return False
        self.kept = count
        return True

    def summary(self) -> str:
        targets = ", ".join(f"{k} <= {v} s" for k, v in TARGETS.items())
        return (
            f"real-time sessions kept up with (endpoint->final p95 <= {self.max_latency:.1f} s): "
            f"{self.kept}\nsessions within the latency targets ({targets}): {self.met}"
        )


def session_streams(
    clips: Sequence[np.ndarray], count: int, seconds: float, pause_s: float, seed: int = 0
) -> list[SpeechStream]:
    """``count`` streams whose utterances start at random offsets from one another."""
    cycle = sum(c.size for c in clips) / SAMPLE_RATE + len(clips) * pause_s
    leads = np.random.default_rng(seed).uniform(0, cycle, size=count)
    leads[0] = 0.0
    return [SpeechStream.build(clips, seconds, pause_s, float(lead)) for lead in leads]


def run(
    engine: Engine, config: SessionConfig, streams: Sequence[SpeechStream], vad_alone: bool = False
) -> Figures:
    """Feed every stream in real time, close the sessions, and measure what their events say.
    The sessions hear each round of chunks and the VAD scores them together, as in a server
    (``vad_alone``: each session's chunk is fed and scored by itself)."""
    timelines = [Timeline(s) for s in streams]
    sessions = [engine.open(config, t.on_event) for t in timelines]
    longest = max(s.samples.size for s in streams)
    lag = 0.0
    watch, t0 = CpuWatch(), time.perf_counter()
    for timeline in timelines:
        timeline.t0 = t0
    for k, at in enumerate(range(0, longest, CHUNK)):
        wait = t0 + (k + 1) * CHUNK / SAMPLE_RATE - time.perf_counter()  # the chunk is captured
        if wait > 0:
            time.sleep(wait)
        lag = max(lag, -wait)
        for session, stream in zip(sessions, streams):
            if vad_alone:
                session.feed(stream.samples[at : at + CHUNK])
            elif at < stream.samples.size:
                session.hear(stream.samples[at : at + CHUNK])
        score_heard(sessions)
    for session in sessions:
        session.close()
    for session in sessions:
        session.wait_closed(120)
    figures = Figures.of(timelines, lag)
    figures.cpu = watch.share()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="default: the demo model")
    parser.add_argument("--llm", type=Path, default=None, help="Qwen2 folder of an MTL release")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="asr", choices=("asr", "ast", "asr+ast"))
    parser.add_argument("--seconds", type=float, default=30.0, help="audio per session")
    parser.add_argument("--pause", type=float, default=1.0, help="silence after each utterance")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16, 24, 32])
    parser.add_argument("--threads", type=int, default=None, help="the engine's torch threads")
    parser.add_argument("--partial-ms", type=int, default=480)
    parser.add_argument("--max-latency", type=float, default=1.0, help="endpoint->final p95, s")
    parser.add_argument("--wav", type=Path, nargs="+", default=[], help="default: examples/audio")
    parser.add_argument("--llm-backend", default="hf", choices=("hf", "vllm"))
    parser.add_argument(
        "--vad-alone", action="store_true", help="score each session's VAD by itself (not batched)"
    )
    args = parser.parse_args()

    model = load_model(args.model, llm=args.llm, device=args.device, llm_backend=args.llm_backend)
    name = str(args.model) if args.model else "demo model"
    config = SessionConfig(mode=args.mode, partial_interval_ms=args.partial_ms)
    threads = args.threads or default_threads(model)
    torch.set_num_threads(1)  # the feeder's VAD; the engine's worker sets its own
    clips = example_clips(args.wav)
    engine = Engine(model, threads=threads)
    run(engine, config, session_streams(clips, 1, 4.0, args.pause))  # warm up

    print(describe())
    print(
        f"model: {name}, LLM on {args.llm_backend}; mode {args.mode}; engine threads {threads}; {args.seconds:.0f} s per "
        f"session ({len(clips)} utterances of {min(c.size for c in clips) / SAMPLE_RATE:.1f}-"
        f"{max(c.size for c in clips) / SAMPLE_RATE:.1f} s, {args.pause:.1f} s pauses) in 20 ms "
        f"chunks; VAD silence {config.vad.min_silence_ms} ms; partials every {args.partial_ms} ms; "
        f"VAD {'alone' if args.vad_alone else 'of all sessions together'}; cores: main is the feeder"
    )
    load, ramp = LoadLog(), Ramp(args.max_latency)
    for count in args.sessions:
        load.sample()
        decodes = len(engine.decode_batches())
        streams = session_streams(clips, count, args.seconds, args.pause)
        figures = run(engine, config, streams, args.vad_alone)
        load.sample()
        columns = figures.columns(args.max_latency)
        if count == args.sessions[0]:
            print(table_line(columns, header=True))
        print(table_line(columns), flush=True)
        record = engine.decode_batches()
        sizes = record[decodes:]
        if sizes and len(record) < RECORD_LENGTH:  # a full record has dropped the oldest
            print(
                f"  batched greedy decodes: {len(sizes)}, {sum(sizes) / len(sizes):.2f} answers "
                f"each on average, {max(sizes)} at most",
                flush=True,
            )
        if not ramp.take(count, figures):
            break
    engine.close()
    model.llm_backend.close()
    print(load.summary())
    print(ramp.summary())


if __name__ == "__main__":
    main()
