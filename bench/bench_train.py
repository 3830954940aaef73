"""Training throughput of a demo-sized model on this machine: utterances and audio seconds per second.

The model is the bundled demo's size (design.md): a 192-d, 6-block SAN-M encoder (about 2.3 M
parameters) and a 256-d, 4-layer Qwen2 with a small corpus tokenizer. Three stages are timed on
synthetic 1-4 s utterances:

* ``ctc``: the encoder + CTC head trained from scratch (stage 1 of the demo recipe);
* ``llm``: frozen encoder, adapter + whole LLM trained, features computed by the data pipeline;
* ``llm-cached``: the same with the frozen encoder's outputs cached (``data.cache_encoder``).

    python bench/bench_train.py [--threads 2] [--steps 20] [--utts 200] [--workers 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from machine import cpu_model

from mooer.asr.frontend import Frontend
from mooer.audio import SAMPLE_RATE
from mooer.train.config import TrainConfig, config_from_dict
from mooer.train.data import EncodedDataset, SpeechDataset, encode_corpus, make_loader
from mooer.train.objective import build_objective
from mooer.train.tokenizer import train_tokenizer
from mooer.train.trainer import Trainer, seed_everything

WORDS = "zero one two three four five six seven eight nine red green blue today monday".split()
ENCODER = {"output_size": 192, "attention_heads": 4, "linear_units": 512, "num_blocks": 6}
LLM = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}


def write_corpus(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` noisy harmonic clips of 1-4 s with 2-6 word transcripts, and their manifest."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        seconds = rng.uniform(1.0, 4.0)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        pitch = rng.uniform(100, 250)
        wave = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in range(1, 5))
        wave = 0.1 * wave + 0.01 * rng.standard_normal(len(t))
        sf.write(root / f"u{i}.wav", wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        text = " ".join(rng.choice(WORDS, size=rng.integers(2, 7)))
        lines.append(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "text": text}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def stage_config(root: Path, manifest: Path, stage: str, workers: int) -> TrainConfig:
    model: dict = {"encoder": ENCODER}
    if stage == "ctc":
        model.update(train_encoder=True, ctc_weight=1.0)
    else:
        tokenizer = train_tokenizer(WORDS, root / "tokenizer", vocab_size=300)
        # mooer.train.tokenizer leaves unk unset, which Qwen2Tokenizer turns into the pad token
        config = tokenizer / "tokenizer_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "unk_token": None}))
        model.update(llm_scratch={**LLM, "tokenizer": str(tokenizer)}, full_llm=True,
                     adapter_hidden=512)  # fmt: skip
    return config_from_dict(
        {
            "output_dir": str(root / stage),
            "device": "cpu",
            "data": {
                "train": [str(manifest)],
                "max_frames_in_batch": 2000,
                "num_workers": workers,
                "cache_encoder": stage == "llm-cached",
            },
            "model": model,
            "optim": {"lr": 1e-3, "warmup_steps": 10, "max_steps": 10_000},
        }
    )


def time_stage(root: Path, manifest: Path, stage: str, steps: int, workers: int) -> dict:
    cfg = stage_config(root, manifest, stage, workers)
    seed_everything(0)
    objective = build_objective(cfg, torch.device("cpu"))
    frontend = Frontend(objective.cmvn)
    trainer = Trainer(objective, cfg, torch.device("cpu"))
    if cfg.data.cache_encoder:
        started = time.perf_counter()
        once = SpeechDataset(cfg.data.train, frontend, cfg.data, train=False)
        with torch.no_grad():
            cached = encode_corpus(make_loader(once, workers), objective.encode)
        encode_seconds = time.perf_counter() - started
        batches = iter(EncodedDataset(cached, cfg.data))
    else:
        encode_seconds = 0.0
        batches = iter(make_loader(SpeechDataset(cfg.data.train, frontend, cfg.data), workers))
    counted = {"utts": 0, "audio": 0.0}

    def stream(start: int):
        for batch in batches:
            counted["utts"] += len(batch)
            counted["audio"] += batch.audio_seconds
            yield batch

    trainer.optim = dataclasses.replace(cfg.optim, max_steps=3)
    trainer.fit(stream)  # warm-up: workers started, first batches made, allocator warm
    counted.update(utts=0, audio=0.0)
    trainer.optim = dataclasses.replace(cfg.optim, max_steps=3 + steps)
    started = time.perf_counter()
    trainer.fit(stream)
    seconds = time.perf_counter() - started
    params = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    return {
        "stage": stage,
        "trainable_M": params / 1e6,
        "utt/s": counted["utts"] / seconds,
        "audio-s/s": counted["audio"] / seconds,
        "step_ms": 1000 * seconds / steps,
        "encode_s": encode_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--utts", type=int, default=200)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader feature workers")
    parser.add_argument("--stages", nargs="+", default=["ctc", "llm", "llm-cached"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}; torch {torch.__version__}, {args.threads} threads, "
          f"{args.workers} data workers, {args.steps} timed steps")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_corpus(root, args.utts)
        print(f"{'stage':<11} {'trainable':>9} {'utt/s':>7} {'audio-s/s':>9} {'ms/step':>8}")
        for stage in args.stages:
            r = time_stage(root, manifest, stage, args.steps, args.workers)
            print(
                f"{r['stage']:<11} {r['trainable_M']:>8.2f}M {r['utt/s']:>7.1f} "
                f"{r['audio-s/s']:>9.1f} {r['step_ms']:>8.0f}"
                + (f"   (encoding the corpus once: {r['encode_s']:.1f} s)" if r["encode_s"] else "")
            )


if __name__ == "__main__":
    main()
