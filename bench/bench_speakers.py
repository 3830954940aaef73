"""Speaker labels on a synthetic 3-voice meeting through a live session (demo model): DER and cost.

The meeting (``mooer.train.talk.spoken_meeting``): short turns of held-out Mandarin sentences
by three espeak-ng voices no model here trained on, in a drawn order, 0.7-1.2 s apart. It is fed
to one live ``asr`` session (voice activity detection cuts the turns, each final is labelled on
the engine's worker), then once more without labels. Reported: the diarisation error rate
(NIST-style, 0.25 s collar; target <= 15 %) of the live labels and of the same labeller on the
true turns, the voice print's cost per final, and the CPU the labels add to the session; then
two sessions in real time, to see whether one's labels delay the other's finals.

    python bench/bench_speakers.py [--turns 30] [--seed 1] [--threshold 0.78]

Seeds 100 and 101 are the dev meetings the default threshold was chosen on; report others.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mooer.agent import events as ev
from mooer.agent.engine import Engine
from mooer.agent.session import SessionConfig
from mooer.asr.speakers import SpeakerConfig, SpeakerLabeller
from mooer.audio import SAMPLE_RATE
from mooer.model import load_model
from mooer.train.metrics import DiarizationErrors, diarization_errors
from mooer.train.talk import MEETING_VOICES, spoken_meeting

sys.path.insert(0, str(Path(__file__).parent))
from machine import LoadLog, describe  # noqa: E402  (sibling scripts, not a package)

CHUNK = SAMPLE_RATE // 50  # 20 ms, as a live client sends


def live(engine: Engine, audio: np.ndarray, labeller: SpeakerLabeller | None):
    """Feed ``audio`` to one asr session as fast as it takes it; its (speaker, start s, end s)
    finals and the process CPU seconds the session took."""
    events: list[ev.Event] = []
    cpu = time.process_time()
    session = engine.open(SessionConfig(mode="asr"), events.append, speakers=labeller)
    for at in range(0, audio.size, CHUNK):
        session.feed(audio[at : at + CHUNK])
    session.close(flush=True)
    session.wait_closed()
    cpu = time.process_time() - cpu
    starts = {e.item_id: e.audio_start_ms for e in events if isinstance(e, ev.SpeechStarted)}
    stops = {e.item_id: e.audio_end_ms for e in events if isinstance(e, ev.SpeechStopped)}
    finals = [
        (e.speaker, starts[e.item_id] / 1000, stops[e.item_id] / 1000)
        for e in events
        if isinstance(e, ev.Transcript)
    ]
    return finals, cpu


def beside(engine: Engine, audio: np.ndarray, labeller: SpeakerLabeller | None) -> list[float]:
    """Two sessions fed ``audio`` at a microphone's pace, the first labelled by ``labeller``:
    the second (unlabelled) one's endpoint-to-final latencies, s."""
    sessions = [
        engine.open(SessionConfig(mode="asr"), speakers=labeller),
        engine.open(SessionConfig(mode="asr")),
    ]
    start = time.perf_counter()
    for k, at in enumerate(range(0, audio.size, CHUNK)):
        time.sleep(max(0.0, start + (k + 1) * CHUNK / SAMPLE_RATE - time.perf_counter()))
        for session in sessions:
            session.feed(audio[at : at + CHUNK])
    for session in sessions:
        session.close(flush=True)
        session.wait_closed()
    return sessions[1].stats.final_latency_s


def timed(labeller: SpeakerLabeller) -> list[tuple[float, float, float]]:
    """Wrap ``labeller.label`` to note (audio s, wall s, worker-thread CPU s) per call."""
    notes: list[tuple[float, float, float]] = []
    label = labeller.label

    def noted(audio: np.ndarray) -> int:
        wall, cpu = time.perf_counter(), time.thread_time()
        speaker = label(audio)
        notes.append((audio.size / SAMPLE_RATE, time.perf_counter() - wall,
                      time.thread_time() - cpu))  # fmt: skip
        return speaker

    labeller.label = noted  # type: ignore[method-assign]
    return notes


def line(name: str, errors: DiarizationErrors, speakers: int) -> str:
    return (
        f"{name}: DER {100 * errors.der:.1f} % (missed {errors.missed_s:.1f} s, false alarm "
        f"{errors.false_alarm_s:.1f} s, confusion {errors.confusion_s:.1f} s of "
        f"{errors.speech_s:.1f} s scored); {speakers} speakers found"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1, help="of the meeting (100, 101: dev)")
    parser.add_argument("--threshold", type=float, default=SpeakerConfig().threshold)
    parser.add_argument("--threads", type=int, default=None, help="the engine's torch threads")
    parser.add_argument("--beside-s", type=float, default=40.0, help="audio of the real-time pair")
    args = parser.parse_args()
    config = SpeakerConfig(threshold=args.threshold)

    meeting = spoken_meeting(args.turns, seed=args.seed)
    reference = [(who, a / SAMPLE_RATE, b / SAMPLE_RATE) for who, a, b in meeting.turns]
    voices = ", ".join(f"{v.name} rate {v.rate} pitch {v.pitch}" for v in MEETING_VOICES)
    torch.set_num_threads(1)  # the feeder's VAD; the engine's worker sets its own
    engine = Engine(load_model(None), threads=args.threads)
    load = LoadLog()
    print(describe())
    print(f"meeting: seed {args.seed}, {args.turns} turns, {meeting.duration_s:.1f} s; {voices}")
    print(f"threshold {config.threshold}, min_new_s {config.min_new_s}; engine threads "
          f"{engine.threads}")  # fmt: skip

    labeller = engine.speaker_labeller(config)
    engine.speaker_encoder.load()
    live(engine, meeting.audio[: 5 * SAMPLE_RATE], None)  # warm up
    load.sample()
    notes = timed(labeller)
    finals, cpu_with = live(engine, meeting.audio, labeller)
    load.sample()
    _, cpu_without = live(engine, meeting.audio, None)
    load.sample()

    print(line("live (VAD turns)", diarization_errors(reference, finals), labeller.count))
    oracle = SpeakerLabeller(engine.speaker_encoder, config)
    truth = [(oracle.label(meeting.audio[a:b]), a / SAMPLE_RATE, b / SAMPLE_RATE)
             for _, a, b in meeting.turns]  # fmt: skip
    print(line("true turns", diarization_errors(reference, truth), oracle.count))

    seconds = [n[0] for n in notes]
    walls = [1000 * n[1] for n in notes]
    cpus = [1000 * n[2] for n in notes]
    print(
        f"voice print per final ({len(notes)} finals of {min(seconds):.1f}-{max(seconds):.1f} s):"
        f" median {statistics.median(walls):.0f} ms wall / {statistics.median(cpus):.0f} ms CPU,"
        f" longest {max(walls):.0f} ms wall (the longest any other session waits for it); "
        f"{sum(cpus) / sum(seconds):.1f} ms CPU per second of speech"
    )
    added = (cpu_with - cpu_without) / cpu_without
    print(f"session CPU: {cpu_with:.1f} s with labels, {cpu_without:.1f} s without "
          f"({100 * added:+.1f} %)")  # fmt: skip

    # Another session beside a labelled one, in real time: does it wait longer for its finals?
    part = meeting.audio[: round(args.beside_s * SAMPLE_RATE)]
    alone = beside(engine, part, None)
    load.sample()
    near = beside(engine, part, SpeakerLabeller(engine.speaker_encoder, config))
    load.sample()
    print(
        f"an unlabelled session beside another, {part.size / SAMPLE_RATE:.0f} s in real time: "
        f"final latency median {1000 * statistics.median(alone):.0f} ms / longest "
        f"{1000 * max(alone):.0f} ms beside an unlabelled one, {1000 * statistics.median(near):.0f}"
        f" ms / {1000 * max(near):.0f} ms beside a labelled one; {load.summary()}"
    )


if __name__ == "__main__":
    main()
