"""CPU real-time factor of ``mooer transcribe`` with the bundled demo model (target: RTF <= 0.1).

Times the whole path a user runs, audio file to text (front end, encoder, adapter, LLM
decoding), on the example recordings one by one and as one batch, with the offline preset
(beam 4) and greedy decoding. The model is loaded once, outside the timing.

    python bench/bench_transcribe.py [--threads 2] [--repeats 3] [--model DIR]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from bench_encoder import best_times, cpu_model, peak_rss_mb

from mooer.audio import SAMPLE_RATE, load_audio
from mooer.llm.decoding import OFFLINE
from mooer.model import load_model
from mooer.transcribe import transcribe

EXAMPLES = Path(__file__).parents[1] / "examples" / "audio"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    waves = [load_audio(p) for p in sorted(EXAMPLES.glob("*.wav"))]
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    print(f"{cpu_model()}, {args.threads} threads; {len(waves)} files, {seconds:.2f} s of audio")
    print(f"{'decoding':<10} {'batch':>5} {'seconds':>8} {'RTF':>7}")
    for name, options in (("beam 4", OFFLINE), ("greedy", replace(OFFLINE, num_beams=1))):
        run = partial(transcribe, model, options=options)
        one_by_one = [partial(run, [w]) for w in waves]
        batched = [partial(run, waves, batch_size=len(waves))]
        single = sum(best_times(one_by_one, args.repeats))
        (together,) = best_times(batched, args.repeats)
        for batch, elapsed in ((1, single), (len(waves), together)):
            print(f"{name:<10} {batch:>5} {elapsed:>8.3f} {elapsed / seconds:>7.4f}")
    print(f"peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
