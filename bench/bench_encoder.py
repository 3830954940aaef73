"""CPU real-time factor of the speech front half: front end + full-size SAN-M encoder + adapter.

Weights are random (same cost as the released ones), fp32, under ``torch.inference_mode``.
FunASR's ``SANMEncoder`` with the same weights is timed beside ours for the ratio.

    python bench/bench_encoder.py [--threads 2] [--seconds 10 60] [--repeats 3] [--no-reference]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from machine import cpu_model

from mooer.asr.adapter import LinearAdapter
from mooer.asr.encoder import EncoderConfig, SANMEncoder
from mooer.asr.frontend import Cmvn, Frontend
from mooer.audio import SAMPLE_RATE


def best_times(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Fastest of ``repeats`` runs of each, after one warm-up.

    The functions take turns within each repeat, so a burst of load from other processes on a
    shared machine slows both sides of a comparison rather than one.
    """
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def funasr_encoder(cfg: EncoderConfig, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    from funasr.models.sanm.encoder import SANMEncoder as Reference

    reference = Reference(
        input_size=cfg.input_size,
        output_size=cfg.output_size,
        attention_heads=cfg.attention_heads,
        linear_units=cfg.linear_units,
        num_blocks=cfg.num_blocks,
        input_layer="pe",
        normalize_before=True,
        kernel_size=cfg.kernel_size,
        sanm_shfit=cfg.sanm_shift,
        selfattention_layer_type="sanm",
    )
    reference.load_state_dict(state_dict)
    return reference.eval()


def time_stages(
    frontend: Frontend,
    encoder: SANMEncoder,
    adapter: LinearAdapter,
    samples: np.ndarray,
    repeats: int,
) -> list[float]:
    """[frames, front-end s, encoder s, adapter s] for one clip."""
    feats = frontend(samples)[None]  # (1, T, 560)
    lengths = torch.tensor([feats.shape[1]])
    hidden, _ = encoder(feats, lengths)  # (1, T, 512)
    stages = [
        partial(frontend, samples),
        partial(encoder, feats, lengths),
        partial(adapter, hidden, lengths),
    ]
    return [feats.shape[1], *best_times(stages, repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip FunASR's encoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]

    frontend = Frontend(Cmvn.identity())
    encoder = SANMEncoder(EncoderConfig()).eval()
    adapter = LinearAdapter().eval()  # Qwen2-7B width, k = 2
    rng = np.random.default_rng(0)
    clips = {
        s: rng.uniform(-0.3, 0.3, int(s * SAMPLE_RATE)).astype(np.float32) for s in args.seconds
    }

    rows = []
    with torch.inference_mode():
        for seconds, samples in clips.items():
            rows.append([seconds, *time_stages(frontend, encoder, adapter, samples, args.repeats)])
        rss = peak_rss_mb()  # before the reference model doubles the weights in memory
        reference = None if args.no_reference else funasr_encoder(encoder.cfg, encoder.state_dict())
        for row in rows:
            feats = frontend(clips[row[0]])[None]  # (1, T, 560)
            lengths = torch.tensor([feats.shape[1]])
            encoders = [encoder] if reference is None else [encoder, reference]
            side_by_side = best_times([partial(m, feats, lengths) for m in encoders], args.repeats)
            row += side_by_side if reference is not None else [None, None]

    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"encoder {params:.2f} M params fp32, adapter 512x2 -> 3584; best of {args.repeats} runs")
    print(
        f"{'audio s':>7} {'frames':>6} {'front s':>8} {'encoder s':>9} {'adapter s':>9} "
        f"{'RTF':>7} {'side by side: ours':>18} {'funasr':>7} {'speed-up':>8}"
    )
    for seconds, frames, t_front, t_enc, t_adapt, t_ours, t_ref in rows:
        rtf = (t_front + t_enc + t_adapt) / seconds
        ref = (
            f"{t_ours:>18.3f} {t_ref:>7.3f} {t_ref / t_ours:>7.2f}x"
            if t_ref
            else f"{'-':>18} {'-':>7} {'-':>8}"
        )
        print(
            f"{seconds:>7.0f} {frames:>6} {t_front:>8.3f} {t_enc:>9.3f} {t_adapt:>9.4f} "
            f"{rtf:>7.4f} {ref}"
        )
    print(f"peak RSS (ours only): {rss:.0f} MB")
    # Other processes on a shared machine distort timings, most of all with several threads.
    print(f"1-min load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
