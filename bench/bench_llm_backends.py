"""LLM backends side by side: decoded tokens per second summed over concurrent requests, hf vs vllm.

The LLM is Qwen2-0.5B-shaped with random weights (``mooer fabricate --llm-size 0.5b``, fp32),
where no live session keeps up on a CPU, so throughput is what counts. Each request is a real
prompt: the example recordings' audio embeddings (6.1 s of speech) spliced before the asr prompt
(a little noise per request, so that no two are the same prefix), answered greedily for
``--tokens`` tokens (the end of turn is barred, so every request decodes them all).

- hf: as the engine serves live sessions on the hf backend: one request at a time with the
  token loop. Its rate does not depend on how many wait, so it is measured once, on
  ``--hf-requests`` of them (a 0.5B model decodes about a token per second here);
- vllm: every request handed to the in-process vLLM engine at once (``VllmBackend.stream``),
  which batches them continuously.

    python bench/bench_llm_backends.py [--concurrency 1 8 32] [--tokens 32] [--checkpoint DIR]

It needs vLLM (run it with the vLLM venv's python: /opt/mooer-vllm/bin/python) and sets
``VLLM_CPU_KVCACHE_SPACE`` to 2 GiB unless it is set.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import wait
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from machine import describe

from mooer.audio import load_audio
from mooer.fabricate import fabricate
from mooer.llm.decoding import STREAMING, splice
from mooer.llm.generation import Generation, turn_end_id
from mooer.llm.prompts import build_prompt
from mooer.llm.vllm_engine import VllmBackend
from mooer.llm.vllm_export import merged_llm_dir
from mooer.model import load_model

EXAMPLES = Path(__file__).parents[1] / "examples" / "audio"
NO_END = -100.0  # end-of-turn bias: a random model must not stop early


def prompts(model, count: int) -> list[torch.Tensor]:
    """``count`` asr prompts (L, H) of the examples' length, each with its own noise."""
    speech = np.concatenate([load_audio(path) for path in sorted(EXAMPLES.glob("*.wav"))])
    embeds, lengths = model.embed([speech])
    inputs, _ = splice(model.llm, model.tokenizer, embeds, lengths, [build_prompt("asr")])
    scale = inputs.std() * 0.01
    generator = torch.Generator().manual_seed(0)
    return [
        inputs[0] + scale * torch.randn(inputs[0].shape, generator=generator) for _ in range(count)
    ]


def hf_rate(model, requests: list[torch.Tensor], options) -> float:
    started, tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for inputs in requests:
            generation = Generation(model.llm, model.tokenizer, inputs[None], options)
            tokens += sum(1 for _ in generation)
    return tokens / (time.perf_counter() - started)


def vllm_rate(backend: VllmBackend, requests: list[torch.Tensor], options) -> float:
    started = time.perf_counter()
    futures = [backend.stream(inputs, options).done for inputs in requests]
    wait(futures)
    tokens = sum(len(f.result()) for f in futures)
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--hf-requests", type=int, default=2, help="requests hf is timed on")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the hf side")
    parser.add_argument("--checkpoint", help="a fabricated 0.5b folder to reuse (else a new one)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    torch.set_num_threads(args.threads)
    out = Path(args.checkpoint or tempfile.mkdtemp(prefix="mooer-0.5b-"))
    if not (out / "llm" / "config.json").is_file():
        fabricate(out, "mtl-5k", llm_size="0.5b")
    root = out / "MooER-MTL-5K"
    model = load_model(root, llm=out / "llm", task="asr", device="cpu", dtype="fp32")
    params = sum(p.numel() for p in model.llm.parameters()) / 1e9
    options = replace(STREAMING, max_new_tokens=args.tokens, eos_bias=NO_END)
    backend = VllmBackend(merged_llm_dir(model), model)
    try:
        turn_end_id(model.tokenizer)
        vllm_rate(backend, prompts(model, 2), options)  # warm-up
        hf_rate(model, prompts(model, 1), replace(options, max_new_tokens=2))
        length = prompts(model, 1)[0].shape[0]
        print(describe())
        print(f"LLM: Qwen2-shaped, {params:.2f} B parameters, fp32; prompt {length} embeddings, "
              f"{args.tokens} tokens decoded per request")  # fmt: skip
        hf = hf_rate(model, prompts(model, args.hf_requests), options)
        print(f"{'requests':>8} {'hf tok/s':>9} {'vllm tok/s':>11} {'vllm/hf':>8}")
        for count in args.concurrency:
            fast = vllm_rate(backend, prompts(model, count), options)
            print(f"{count:>8} {hf:>9.1f} {fast:>11.1f} {fast / hf:>7.1f}x", flush=True)
        print(describe())
    finally:
        backend.close()


if __name__ == "__main__":  # vLLM spawns its engine process
    main()
