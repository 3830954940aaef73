"""CPU real-time factor of the speech front half: front end + full-size SAN-M encoder + adapter.

Weights are random (same cost as the released ones), under ``torch.inference_mode``, in fp32 and
with ``--quantize int8``'s dynamic int8 encoder + adapter. FunASR's ``SANMEncoder`` with the same
weights is timed beside both for the ratio. Peak RSS is measured per precision in a child process
that loads the weights from a file as ``load_model`` does (int8: quantised after loading).

    python bench/bench_encoder.py [--threads 2] [--seconds 10 60] [--repeats 3] [--no-reference]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from machine import cpu_model

from mooer.asr.adapter import LinearAdapter, adapter_state_dict, load_adapter
from mooer.asr.encoder import EncoderConfig, SANMEncoder, load_encoder
from mooer.asr.frontend import Cmvn, Frontend
from mooer.asr.quantize import check_quantize, quantize_encoder_int8, quantize_int8
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


def child_peak_rss(folder: str, precision: str, seconds: float, threads: int) -> float:
    """Peak RSS (MB) of a fresh process that loads the files in ``folder`` and encodes a clip."""
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", folder, precision, str(seconds), str(threads)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.split()[-1])


def rss_child(folder: str, precision: str, seconds: float, threads: int) -> None:
    torch.set_num_threads(threads)
    # as load_model does: int8 reads the weights into memory of their own (no mapping)
    encoder = load_encoder(os.path.join(folder, "paraformer-encoder.pth"), mmap=precision == "fp32")
    adapter = load_adapter(os.path.join(folder, "adapter_project.pt"), encoder.cfg.output_size)
    if precision == "int8":
        quantize_encoder_int8(encoder)
        quantize_int8(adapter)
    samples = np.random.default_rng(0).uniform(-0.3, 0.3, int(seconds * SAMPLE_RATE))
    feats = Frontend(Cmvn.identity())(samples.astype(np.float32))[None]  # (1, T, 560)
    lengths = torch.tensor([feats.shape[1]])
    with torch.inference_mode():
        adapter(*encoder(feats, lengths))
    print(peak_rss_mb())


def main() -> None:
    if sys.argv[1:2] == ["--rss-child"]:
        folder, precision, seconds, threads = sys.argv[2:6]
        return rss_child(folder, precision, float(seconds), int(threads))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true", help="skip FunASR's encoder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    check_quantize("int8", torch.device("cpu"))
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]

    frontend = Frontend(Cmvn.identity())
    encoder = SANMEncoder(EncoderConfig()).eval()
    adapter = LinearAdapter().eval()  # Qwen2-7B width, k = 2
    with tempfile.TemporaryDirectory() as folder:  # the weights as released, for the RSS children
        torch.save(encoder.state_dict(), os.path.join(folder, "paraformer-encoder.pth"))
        torch.save(adapter_state_dict(adapter), os.path.join(folder, "adapter_project.pt"))
        rss = {
            p: child_peak_rss(folder, p, max(args.seconds), args.threads) for p in ("fp32", "int8")
        }
    # the same weights in int8, as load_model(quantize="int8") makes them, and with its Linear
    # layers quantised alone (no fused operations: what --quantize int8 did before)
    int8_adapter = quantize_int8(copy.deepcopy(adapter))
    variants = {
        "fp32": (encoder, adapter),
        "int8": (quantize_encoder_int8(copy.deepcopy(encoder)), int8_adapter),
        "int8 Linear only": (quantize_int8(copy.deepcopy(encoder)), int8_adapter),
    }
    rng = np.random.default_rng(0)
    clips = {
        s: rng.uniform(-0.3, 0.3, int(s * SAMPLE_RATE)).astype(np.float32) for s in args.seconds
    }

    rows = []  # [variant, seconds, frames, front s, encoder s, adapter s, side by side s, funasr s]
    with torch.inference_mode():
        for seconds, samples in clips.items():
            for name, (enc, adapt) in variants.items():
                rows.append(
                    [name, seconds, *time_stages(frontend, enc, adapt, samples, args.repeats)]
                )
        reference = None if args.no_reference else funasr_encoder(encoder.cfg, encoder.state_dict())
        for seconds, samples in clips.items():
            feats = frontend(samples)[None]  # (1, T, 560)
            lengths = torch.tensor([feats.shape[1]])
            encoders = [enc for enc, _ in variants.values()] + [reference] * (reference is not None)
            # all take turns within each repeat: the ratios come from one stretch of time
            side_by_side = best_times([partial(m, feats, lengths) for m in encoders], args.repeats)
            t_ref = side_by_side[-1] if reference is not None else None
            for row in rows:
                if row[1] == seconds:
                    row += [side_by_side[list(variants).index(row[0])], t_ref]

    params = sum(p.numel() for p in encoder.parameters()) / 1e6
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"encoder {params:.2f} M params, adapter 512x2 -> 3584; fp32, dynamic int8 "
        f"(--quantize int8: fused, and its Linear layers alone); best of {args.repeats} runs"
    )
    print(
        f"{'':>16} {'audio s':>7} {'frames':>6} {'front s':>8} {'encoder s':>9} {'adapter s':>9} "
        f"{'RTF':>7} {'side by side: ours':>18} {'funasr':>7} {'speed-up':>8}"
    )
    for name, seconds, frames, t_front, t_enc, t_adapt, t_ours, t_ref in rows:
        rtf = (t_front + t_enc + t_adapt) / seconds
        ref = (
            f"{t_ours:>18.3f} {t_ref:>7.3f} {t_ref / t_ours:>7.2f}x"
            if t_ref
            else f"{t_ours:>18.3f} {'-':>7} {'-':>8}"
        )
        print(
            f"{name:>16} {seconds:>7.0f} {frames:>6} {t_front:>8.3f} {t_enc:>9.3f} {t_adapt:>9.4f} "
            f"{rtf:>7.4f} {ref}"
        )
    longest = max(args.seconds)
    print(
        f"peak RSS, loading the weights from files and encoding {longest:.0f} s "
        f"(a fresh process each): fp32 {rss['fp32']:.0f} MB, int8 {rss['int8']:.0f} MB"
    )
    # Other processes on a shared machine distort timings, most of all with several threads.
    print(f"1-min load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    main()
