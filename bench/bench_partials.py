"""Live partials: encoder work per second of speech, and what bounded windows do to the text.

Partials come every ``--interval-ms`` of an utterance, as a live session asks for them. Each is
encoded either whole (the utterance so far: ``full``) or with ``mooer.asr.partial_context``'s
bounded window (``LEFT/REDO[/LONG_AFTER/LONG_INTERVAL]`` in ms: that much left context, the tokens
before it kept from earlier partials; the end of each window encoded again next time; from
``LONG_AFTER`` on, partials at least ``LONG_INTERVAL`` apart, as ``PartialContext`` says).

1. Quality, on the demo model, over held-out speech in a held-out voice (several sentences with
   short pauses make one long utterance): per context, how the partial texts compare with the
   final (the whole utterance, offline settings): the share of each partial's units that the
   final starts with (``agree``), and the unit error rate of the last partial against the final.
2. Cost, with the full-size encoder + adapter (random weights, fp32 or ``--quantize int8``, 2
   threads): encoder seconds per second of speech for the partials of a 1 s and a 15 s
   utterance, side by side.

    python bench/bench_partials.py [--contexts full 480/960 480/960/2880/1440] [--utterances 6]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from mooer.asr.adapter import LinearAdapter
from mooer.asr.encoder import EncoderConfig, SANMEncoder
from mooer.asr.frontend import Cmvn, Frontend
from mooer.asr.partial_context import Embed, PartialContext, PartialEmbeds, token_count
from mooer.asr.quantize import check_quantize, quantize_encoder_int8, quantize_int8
from mooer.audio import SAMPLE_RATE, ms_to_samples
from mooer.llm.decoding import OFFLINE, STREAMING
from mooer.model import load_model
from mooer.tasks import decode
from mooer.text import units
from mooer.train.talk import heldout_sentences, spoken_talk

sys.path.insert(0, str(Path(__file__).parent))
from bench_encoder import best_times  # noqa: E402  (sibling scripts, not a package)
from machine import describe  # noqa: E402


def parse_context(text: str) -> PartialContext | None:
    """``full`` -> None (whole utterance); ``LEFT/REDO[/LONG_AFTER/LONG_INTERVAL]`` in ms -> a
    PartialContext (without the last two: never spaced further apart)."""
    if text == "full":
        return None
    ms = [int(part) for part in text.split("/")]
    return PartialContext(*ms) if len(ms) == 4 else PartialContext(*ms[:2], long_interval_ms=0)


def partial_embeds(
    embed: Embed, audio: np.ndarray, interval: int, context: PartialContext | None
) -> tuple[list[torch.Tensor], int]:
    """The (T, H) embeddings of each partial of ``audio``, spaced as a live session spaces them
    (every ``interval`` samples, further apart in a long utterance), and the samples encoded."""
    state = None if context is None else PartialEmbeds(context)
    out, encoded, end = [], 0, interval
    while end <= audio.size:
        if state is None:
            embeds, lengths = embed([audio[:end]])  # (1, T, H)
            out.append(embeds[0, : int(lengths[0])])
            encoded += end
            end += interval
        else:
            out.append(state.embed(embed, audio[:end]))
            end += context.interval_after(end, interval)
    return out, encoded if state is None else state.encoded_samples


def tokens_only(waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """An embed that only counts: zero embeddings (1, T, 1) of the right length."""
    tokens = token_count(waves[0].size)
    return torch.zeros(1, tokens, 1), torch.tensor([tokens])


def prefix_share(partial: list[str], final: list[str]) -> float:
    """The share of the partial's units that the final begins with."""
    same = 0
    for a, b in zip(partial, final):
        if a.strip() != b.strip():
            break
        same += 1
    return same / len(partial) if partial else 1.0


def edit_rate(hyp: list[str], ref: list[str]) -> tuple[int, int]:
    """(unit edits, reference units) of ``hyp`` against ``ref``."""
    a, b = [u.strip() for u in hyp], [u.strip() for u in ref]
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1], len(b)


def quality(args: argparse.Namespace, contexts: Sequence[str]) -> None:
    model = load_model(None)
    interval = ms_to_samples(args.interval_ms)
    talks = []
    for lang in ("en", "zh"):
        sentences = heldout_sentences(args.utterances * args.sentences, lang, seed=1)
        for u in range(args.utterances):
            group = sentences[u * args.sentences : (u + 1) * args.sentences]
            talks.append(spoken_talk(group, (0.15, 0.3), lead_s=0.2, tail_s=0.2).audio)
    seconds = sum(t.size for t in talks) / SAMPLE_RATE
    print(
        f"demo model; {len(talks)} utterances (en and zh, {args.sentences} held-out sentences "
        f"each, {seconds / len(talks):.1f} s on average); partials every {args.interval_ms} ms"
    )
    finals = []
    for audio in talks:
        embeds, lengths = model.embed([audio])
        finals.append(units(decode(model, embeds, lengths, "asr", OFFLINE)[0].transcript or ""))
    print(f"{'context':>10} {'agree':>6} {'last partial UER':>16} {'encoded s / s':>13}")
    for name in contexts:
        context = parse_context(name)
        shares, edits, refs, encoded = [], 0, 0, 0
        for audio, final in zip(talks, finals):
            texts = []
            embeds, work = partial_embeds(model.embed, audio, interval, context)
            for e in embeds:
                lengths = torch.tensor([len(e)])
                texts.append(decode(model, e[None], lengths, "asr", STREAMING, step_by_step=True))
            said = [units(t[0].transcript or "") for t in texts]
            shares += [prefix_share(s, final) for s in said]
            e, n = edit_rate(said[-1], final)
            edits, refs = edits + e, refs + n
            encoded += work
        print(
            f"{name:>10} {np.mean(shares):>6.3f} {edits / max(refs, 1):>16.3f} "
            f"{encoded / SAMPLE_RATE / seconds:>13.2f}",
            flush=True,
        )


def cost(args: argparse.Namespace, contexts: Sequence[str]) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frontend = Frontend(Cmvn.identity())
    encoder, adapter = SANMEncoder(EncoderConfig()).eval(), LinearAdapter().eval()
    precision = args.quantize or "fp32"
    if args.quantize:
        check_quantize(args.quantize, torch.device("cpu"))
        quantize_encoder_int8(encoder)
        quantize_int8(adapter)

    def embed(waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = frontend.batch(list(waves))  # (1, T, 560)
        return adapter(*encoder(feats, lengths))  # (1, T // 2, 3584)

    rng = np.random.default_rng(0)
    clips = {s: rng.uniform(-0.3, 0.3, int(s * SAMPLE_RATE)).astype(np.float32) for s in (1, 15)}
    interval = ms_to_samples(args.interval_ms)
    print(
        f"full-size encoder + adapter (random weights, {precision}, {args.threads} threads): encoder "
        f"seconds per second of speech, partials every {args.interval_ms} ms"
    )
    print(
        f"{'context':>17} {'1 s':>7} {'15 s':>7} {'15 s / 1 s':>10}  audio encoded per s: "
        f"{'1 s':>5} {'15 s':>5} {'15 s / 1 s':>10}"
    )
    with torch.inference_mode():
        for name in contexts:
            context = parse_context(name)
            runs = [partial(partial_embeds, embed, a, interval, context) for a in clips.values()]
            best = best_times(runs, args.repeats)  # the two lengths take turns: the same load
            per_s = [t / s for t, s in zip(best, clips)]
            audio = [
                partial_embeds(tokens_only, a, interval, context)[1] / SAMPLE_RATE / s
                for s, a in clips.items()
            ]
            print(
                f"{name:>17} {per_s[0]:>7.4f} {per_s[1]:>7.4f} {per_s[1] / per_s[0]:>10.2f}  "
                f"{'':>20} {audio[0]:>5.2f} {audio[1]:>5.2f} {audio[1] / audio[0]:>10.2f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", nargs="+", default=["full", "480/960", "480/960/2880/1440"])
    parser.add_argument("--interval-ms", type=int, default=480)
    parser.add_argument("--utterances", type=int, default=6, help="per language")
    parser.add_argument("--sentences", type=int, default=3, help="per utterance")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantize", choices=("int8",), default=None, help="the cost's encoder")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip", choices=("quality", "cost"), default=None)
    args = parser.parse_args()
    print(describe())
    load = os.getloadavg()[0]
    if args.skip != "quality":
        quality(args, args.contexts)
    if args.skip != "cost":
        cost(args, args.contexts)
    print(f"1-min load average: {load:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
