"""Simultaneous interpretation through the real server: lag and quality of live zh -> en.

Held-out Mandarin template sentences (``mooer.train.talk``: a voice the demo model never heard)
are spoken in a row, once with 150 ms pauses (continuous speech) and once with 800 ms pauses,
and streamed at real time (40 ms appends of 24 kHz PCM16) through the openai SDK to
``/v1/realtime/translations`` of a ``mooer serve`` in a child process (or ``--url``: a server
already running). The English words are aligned to the reference sentences (difflib over words)
and scored per sentence, SimulEval-style, with each word's delay counted from its sentence's
start:

* lag (end offset): from the end of the sentence's speech to its last English word (the last
  one aligned with its reference, where it has one);
* start offset: to its first word; AL (average lagging, at the reference's word rate) and LAAL
  (length-adaptive: at the rate of the longer of reference and output);
* computation-aware (CA) figures time words by their arrival at the client; the others by the
  audio the server had received when it sent them (``elapsed_ms``, in 200 ms steps);
* words scored as ``mooer eval`` scores them (case and punctuation never count: a model that
  punctuates, as the released ones do, writes "yuan." for "yuan");
* BLEU of the whole talk (sacrebleu 13a), sentences with no English, and garbled words: words
  the client assembled that are in no sentence of the corpus (fragments such as "rteen"; the
  demo model's vocabulary is the corpus's), and retractions (sentences whose output ran on from
  a contradicted commit: the server's ``mooer_text_revisions_total``).

A third run streams the continuous talk to ``/v1/realtime`` (transcription) and times each
sentence's final transcript from the end of its speech.

    python bench/bench_simul.py [--sentences 12] [--seed 0] [--threads 2] [--url http://...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import difflib
import math
import re
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sacrebleu

from mooer.audio import SAMPLE_RATE, resample
from mooer.server.pcm import encode_pcm16
from mooer.train.corpus import english_sentences
from mooer.train.metrics import cer, normalize_en
from mooer.train.talk import Talk, heldout_sentences, spoken_talk

sys.path.insert(0, str(Path(__file__).parent))
from bench_server import ServerProcess  # noqa: E402  (sibling scripts, not a package)
from machine import describe  # noqa: E402

WIRE_RATE = 24000
FRAME_S = 0.04  # audio per append
VOCABULARY = frozenset(w for s in english_sentences() for w in s.split())
FINAL = "conversation.item.input_audio_transcription.completed"


@dataclass
class Received:
    """What the client got, each item with its arrival (s since the first audio was sent)."""

    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, arrival, elapsed)
    audio: list[float] = field(default_factory=list)  # arrivals of output_audio.delta
    text: str = ""  # the deltas as the client assembles them

    def add(self, delta: str, arrival: float, elapsed: float) -> None:
        """A transcript delta; a word is timed by the last delta that added to it."""
        words = len(self.text.split())
        continues = self.text[-1:].strip() and delta[:1].strip()  # the last word goes on
        self.text += delta
        first = words - 1 if continues else words
        del self.words[first:]
        self.words += [(w, arrival, elapsed) for w in self.text.split()[first:]]


def frames(talk: Talk) -> list[str]:
    pcm = encode_pcm16(resample(talk.audio, SAMPLE_RATE, WIRE_RATE))
    step = 2 * round(FRAME_S * WIRE_RATE)
    return [base64.b64encode(pcm[i : i + step]).decode() for i in range(0, len(pcm), step)]


class Clock:
    """Seconds since the first audio was sent: the talk's own time while it streams."""

    def __init__(self) -> None:
        self.zero = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.zero


async def paced(send, talk: Talk, clock: Clock) -> None:
    """Send the talk at the pace of speech, starting ``clock`` with its first frame."""
    pieces = frames(talk)
    clock.zero = time.perf_counter()
    for i, frame in enumerate(pieces):
        await asyncio.sleep(max(0.0, i * FRAME_S - clock.now()))
        await send(frame)


async def translate(url: str, talk: Talk) -> Received:
    from openai import AsyncOpenAI

    got = Received()
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    async with client.realtime.translations.connect(model="mooer") as conn:
        clock = Clock()

        async def read() -> None:
            async for event in conn:
                now = clock.now()
                if event.type == "session.output_transcript.delta":
                    got.add(event.delta, now, event.elapsed_ms / 1000)
                elif event.type == "session.output_audio.delta":
                    got.audio.append(now)
                elif event.type == "session.closed":
                    return

        async def send(frame: str) -> None:
            await conn.session.input_audio_buffer.append(audio=frame)

        reader = asyncio.create_task(read())
        await paced(send, talk, clock)
        await conn.session.close()
        await reader
    return got


@dataclass
class SentenceFigures:
    words: list[str]  # the English aligned with the sentence
    lag: float | None  # CA end offset, s
    lag_nca: float | None
    start: float | None
    al: float | None
    laal: float | None
    al_ca: float | None
    laal_ca: float | None
    first_audio: float | None


def _lagging(delays: list[float], source_s: float, rate_words: int) -> float:
    """Average lagging with the ideal policy's rate ``rate_words / source_s``."""
    tau = next((j + 1 for j, d in enumerate(delays) if d >= source_s), len(delays))
    step = source_s / rate_words
    return sum(delays[j] - j * step for j in range(tau)) / tau


def score_sentences(talk: Talk, got: Received) -> list[SentenceFigures]:
    refs = [en.split() for _, en in talk.sentences]
    ref_words = [w for r in refs for w in r]
    owner = [i for i, r in enumerate(refs) for _ in r]
    hyp = [normalize_en(w) for w, _, _ in got.words]
    sentence_of = [None] * len(hyp)
    matcher = difflib.SequenceMatcher(None, ref_words, hyp, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            sentence_of[b + k] = owner[a + k]
    # An unmatched word goes with the last sentence that had ended when it was sent, within
    # the sentences of the matched words either side of it.
    ends = [end / SAMPLE_RATE for _, end in talk.spans]
    matched = [(j, k) for j, k in enumerate(sentence_of) if k is not None]
    aligned = {j for j, _ in matched}
    for j, k in enumerate(sentence_of):
        if k is None:
            low = max((m for i, m in matched if i < j), default=0)
            high = min((m for i, m in matched if i > j), default=len(refs) - 1)
            ended = sum(e <= got.words[j][2] for e in ends) - 1
            sentence_of[j] = min(max(ended, low), high)
    figures = []
    for i, (start, end) in enumerate(talk.spans):
        s0, length = start / SAMPLE_RATE, (end - start) / SAMPLE_RATE
        own = [j for j, k in enumerate(sentence_of) if k == i]
        mine = [(got.words[j][1] - s0, got.words[j][2] - s0) for j in own]
        # Its last word: the last one aligned with its reference, if any (an unmatched word
        # may be an early commit of the next sentence, which this cannot tell apart).
        last = max((j for j in own if j in aligned), default=own[-1] if own else None)
        end_s = end / SAMPLE_RATE
        later = [t - end_s for t in got.audio if t >= end_s]
        audio = later[0] if later else None
        said = [w for (w, _, _), k in zip(got.words, sentence_of) if k == i]
        if not mine:
            figures.append(SentenceFigures(said, None, None, None, None, None, None, None, audio))
            continue
        ca = [a for a, _ in mine]
        nca = [e for _, e in mine]
        n_ref, n_out = len(refs[i]), len(mine)
        figures.append(
            SentenceFigures(
                words=said,
                lag=got.words[last][1] - s0 - length,
                lag_nca=got.words[last][2] - s0 - length,
                start=ca[0],
                al=_lagging(nca, length, n_ref),
                laal=_lagging(nca, length, max(n_ref, n_out)),
                al_ca=_lagging(ca, length, n_ref),
                laal_ca=_lagging(ca, length, max(n_ref, n_out)),
                first_audio=audio,
            )
        )
    return figures


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def _p95(values) -> float:
    values = sorted(v for v in values if v is not None)
    return float(np.percentile(values, 95)) if values else float("nan")


STAGES = ("endpoint", "queued", "decode")


def server_figures(url: str, protocol: str) -> dict[str, float]:
    """The server's counts so far, for ``protocol``: ``revised`` (finals that contradicted text
    already sent), and the sum and count of each final's latency and of its stages
    (``mooer_final_stage_seconds``; none on a server from before them)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    wanted = {
        "revised": ("mooer_text_revisions_total", {}),
        "early": ("mooer_early_finals_total", {"protocol": protocol}),
        "latency_sum": ("mooer_final_latency_seconds_sum", {"protocol": protocol}),
        "latency_count": ("mooer_final_latency_seconds_count", {"protocol": protocol}),
    }
    for stage in STAGES:
        for part in ("sum", "count"):
            name = f"mooer_final_stage_seconds_{part}"
            wanted[f"{stage}_{part}"] = (name, {"protocol": protocol, "stage": stage})
    figures = dict.fromkeys(wanted, 0.0)  # a series not yet observed
    for line in text.splitlines():
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if found is None:  # a comment
            continue
        name, labels, value = (
            found[1],
            dict(re.findall(r'(\w+)="([^"]*)"', found[2] or "")),
            float(found[3]),
        )
        for key, (metric, needed) in wanted.items():
            if name == metric and needed.items() <= labels.items():
                figures[key] += value
    if "mooer_text_revisions_total" not in text:
        figures["revised"] = math.nan  # a server from before the count
    return figures


def where_the_time_went(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean per final, between two ``server_figures``: its latency and each stage's share;
    the count of finals, of early ones and of revisions."""
    got = {key: after[key] - before[key] for key in ("revised", "early", "latency_count")}
    for key in ("latency", *STAGES):
        count = after[f"{key}_count"] - before[f"{key}_count"]
        total = after[f"{key}_sum"] - before[f"{key}_sum"]
        got[key] = total / count if count else float("nan")
    return got


def report_translation(
    name: str, talk: Talk, got: Received, server: dict[str, float], verbose: bool = False
) -> dict:
    """Print and return the talk's figures; ``server``: its ``where_the_time_went`` and
    ``revised`` (the server's revision count over the talk)."""
    revised = server["revised"]
    figures = score_sentences(talk, got)
    hyp = normalize_en(" ".join(w for w, _, _ in got.words))
    ref = " ".join(en for _, en in talk.sentences)
    bleu = sacrebleu.corpus_bleu([hyp], [[ref]]).score
    garbled = [w for w in hyp.split() if w not in VOCABULARY]
    lags = [f.lag for f in figures]
    row = {
        "talk": name,
        "sentences": len(figures),
        "missing": sum(f.lag is None for f in figures),
        "lag": _mean(lags),
        "lag_p95": _p95(lags),
        "lag_nca": _mean(f.lag_nca for f in figures),
        "start": _mean(f.start for f in figures),
        "al": _mean(f.al for f in figures),
        "laal": _mean(f.laal for f in figures),
        "al_ca": _mean(f.al_ca for f in figures),
        "laal_ca": _mean(f.laal_ca for f in figures),
        "first_audio": _mean(f.first_audio for f in figures),
        "bleu": bleu,
        "garbled": len(garbled),
        "revised": revised,
    }
    print(
        f"{name}: {talk.duration_s:.1f} s, {row['sentences']} sentences, {row['missing']} without "
        f"English | lag mean {row['lag']:.2f} s, p95 {row['lag_p95']:.2f} s (non-CA "
        f"{row['lag_nca']:.2f}) | start offset {row['start']:.2f} s | AL {row['al']:.2f} / LAAL "
        f"{row['laal']:.2f} s, CA {row['al_ca']:.2f} / {row['laal_ca']:.2f} s | first audio "
        f"{row['first_audio']:.2f} s after the sentence | BLEU {bleu:.1f} | garbled words "
        f"{len(garbled)} {garbled[:8]} | retractions {revised:.0f}"
    )
    row.update({key: server[key] for key in ("latency", "early", *STAGES)})
    print(
        f"  where a final's wait went (server, mean): endpoint {1000 * row['endpoint']:.0f} ms "
        f"of pause heard, then queued {1000 * row['queued']:.0f} ms, decode "
        f"{1000 * row['decode']:.0f} ms; endpoint to final {1000 * row['latency']:.0f} ms; "
        f"{row['early']:.0f} of {server['latency_count']:.0f} finals decoded early in the pause"
    )
    if verbose:
        for (zh, en), f in zip(talk.sentences, figures):
            lag = "-" if f.lag is None else f"{f.lag:.2f} s"
            print(f"  {zh} | {en} | {' '.join(f.words)} | lag {lag}")
    else:
        print(f"  output: {hyp}")
    return row


async def transcribe_live(url: str, talk: Talk) -> list[tuple[float, float, float, str]]:
    """(audio start s, audio end s, arrival s, transcript) of each final."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
    finals: list[tuple[float, float, float, str]] = []
    spans: dict[str, list[float]] = {}
    async with client.realtime.connect(
        model="mooer", extra_query={"intent": "transcription"}
    ) as conn:
        await conn.session.update(session={"type": "transcription"})  # type: ignore[arg-type]
        clock = Clock()

        async def read() -> None:
            async for event in conn:
                now = clock.now()
                if event.type == "input_audio_buffer.speech_started":
                    spans[event.item_id] = [event.audio_start_ms / 1000, float("nan")]
                elif event.type == "input_audio_buffer.speech_stopped":
                    spans.setdefault(event.item_id, [0.0, 0.0])[1] = event.audio_end_ms / 1000
                elif event.type == FINAL:
                    a, b = spans.get(event.item_id, [float("nan")] * 2)
                    finals.append((a, b, now, event.transcript))
                elif event.type == "session.closed":
                    return

        async def send(frame: str) -> None:
            await conn.input_audio_buffer.append(audio=frame)

        reader = asyncio.create_task(read())
        await paced(send, talk, clock)
        await conn.send({"type": "session.close"})  # type: ignore[arg-type]
        await reader
    return finals


def report_transcription(talk: Talk, finals: list[tuple[float, float, float, str]]) -> dict:
    lags = []
    for _, end in talk.spans:
        end_s = end / SAMPLE_RATE
        covering = [f for f in finals if f[0] <= end_s <= f[1] + 0.2]
        lags.append(covering[0][2] - end_s if covering else None)
    ref = "".join(zh for zh, _ in talk.sentences)
    error = cer([ref], ["".join(f[3] for f in finals)])
    row = {"finals": len(finals), "lag": _mean(lags), "lag_p95": _p95(lags), "cer": error}
    print(
        f"live transcription, continuous: {len(finals)} finals for {len(talk.spans)} sentences | "
        f"final after sentence end: mean {row['lag']:.2f} s, p95 {row['lag_p95']:.2f} s, max "
        f"{max((x for x in lags if x is not None), default=float('nan')):.2f} s | "
        f"{sum(x is None for x in lags)} sentences unfinished | CER {100 * error:.1f} %"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pauses", type=float, nargs="+", default=[0.15, 0.8])
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    parser.add_argument("--url", help="a running `mooer serve` (default: start one)")
    parser.add_argument("--no-transcription", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="each sentence's English and lag")
    args = parser.parse_args()

    sentences = heldout_sentences(args.sentences, seed=args.seed)
    talks = {pause: spoken_talk(sentences, pause) for pause in args.pauses}
    print(describe())
    server = None
    if args.url is None:
        extra = [] if args.threads is None else ["--threads", str(args.threads)]
        server = ServerProcess(extra)
        url = server.http
    else:
        url = args.url.rstrip("/")
    try:
        for pause, talk in talks.items():
            before = server_figures(url, "translation")
            got = asyncio.run(translate(url, talk))
            after = server_figures(url, "translation")
            server_side = where_the_time_went(before, after)
            report_translation(
                f"pauses {1000 * pause:.0f} ms", talk, got, server_side, args.verbose
            )
        if not args.no_transcription:
            talk = talks[min(talks)]
            report_transcription(talk, asyncio.run(transcribe_live(url, talk)))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
