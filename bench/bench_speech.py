"""First-audio latency of speech-to-speech translation on the CPU (target: <= 500 ms on 2 cores).

The clock starts when a finished utterance is handed to ``speech_to_speech`` (the moment a live
session's VAD has closed the turn; the VAD's own silence wait is not included) and stops at the
first audio chunk. Two paths:

* cascade: the demo model translates token by token and espeak-ng speaks the first sentence as
  soon as it is complete (for these one-sentence answers: when the translation ends);
* native head: what the omni / S2ST path computes before its first audio, with the full-size
  HiFi-GAN head (3584-d input, random weights). The LLM steps are the demo model's LLM run by
  ``SpeechGeneration`` (the released Qwen2-7B is far slower per token on a CPU and cannot run
  here); each step after ``<|audio_start|>`` feeds one random 3584-d latent to the streaming
  vocoder, as the real path does. The first audio needs TEXT + 1 + chunk + right context +
  TAIL_DROP LLM steps (text + 14 with the defaults).

Each figure is the best of ``--repeats`` runs after a warm-up; the load average is printed, as
the machine is shared.

    python bench/bench_speech.py [--threads 2] [--repeats 5] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import torch
from bench_encoder import cpu_model

from mooer.audio import SAMPLE_RATE, resample
from mooer.llm.decoding import SPEECH, splice
from mooer.llm.prompts import build_prompt
from mooer.llm.speech import TAIL_DROP, SpeechGeneration
from mooer.model import SpeechLLM, load_model
from mooer.speak import speech_to_speech
from mooer.train.synth import HELDOUT_VOICES
from mooer.tts import espeak
from mooer.tts.hifigan import HifiganConfig, HifiganGenerator
from mooer.tts.vocoder import StreamingVocoder, vocode

# Held-out sentences (mooer.train.demo.EXAMPLES and the corpus's held-out split), held-out voice.
SENTENCES = ("我想要一个蓝色的包", "星期一会下雨")


def mandarin(text: str) -> np.ndarray:
    voice = next(v for v in HELDOUT_VOICES if v.voice == "cmn")
    pcm = espeak.synthesize(text, voice.voice, voice.variant, voice.rate, voice.pitch)
    return resample(pcm.astype(np.float32) / 32768.0, espeak.SAMPLE_RATE_ESPEAK, SAMPLE_RATE)


def cascade_once(model: SpeechLLM, wave: np.ndarray) -> tuple[float, float, float, str]:
    """(s to the first text, s to the first audio, s to the end, the text)."""
    start = time.perf_counter()
    first_text = first_audio = float("nan")
    stream = speech_to_speech(model, wave)
    for chunk in stream:
        now = time.perf_counter() - start
        if chunk.text and first_text != first_text:
            first_text = now
        if chunk.audio.size and first_audio != first_audio:
            first_audio = now
    return first_text, first_audio, time.perf_counter() - start, stream.text


def native_once(
    model: SpeechLLM, wave: np.ndarray, head: HifiganGenerator, text_tokens: int
) -> tuple[float, int]:
    """(s to the first audio, LLM steps run) of the native path, full-size head."""
    speaker = torch.nn.functional.normalize(torch.randn(1, 512, 1), dim=1)
    start = time.perf_counter()
    with torch.inference_mode():
        embeds, lengths = model.embed([wave])
        prompt = build_prompt("s2s_trans")
        inputs, _ = splice(model.llm, model.tokenizer, embeds, lengths, [prompt])
    vocoder = StreamingVocoder(head, speaker)
    never_ends = replace(SPEECH, eos_bias=-1e4)  # the demo LLM would end after its text
    generation = SpeechGeneration(model.llm, model.tokenizer, inputs, never_ends)
    steps = 0
    for _ in generation:
        steps += 1
        if steps > text_tokens + 1 + TAIL_DROP:  # a latent is released at this step
            audio = vocoder.push(torch.randn(1, head.cfg.input_channels))
            if audio.size:
                return time.perf_counter() - start, steps
    raise RuntimeError("the generation ended before the first audio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the bundled demo model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(args.model, device="cpu")
    waves = [mandarin(s) for s in SENTENCES]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")  # fmt: skip

    print("\ncascade (demo model + espeak-ng), best of", args.repeats)
    print(f"{'speech':>7} {'first text':>11} {'first audio':>12} {'all':>7}  text")
    text_tokens = []
    for wave in waves:
        cascade_once(model, wave)  # warm-up
        runs = [cascade_once(model, wave) for _ in range(args.repeats)]
        first_text, first_audio, total, text = min(runs, key=lambda r: r[1])
        text_tokens.append(len(model.tokenizer(text, add_special_tokens=False)["input_ids"]))
        print(f"{len(wave) / SAMPLE_RATE:6.2f}s {first_text * 1e3:9.0f}ms "
              f"{first_audio * 1e3:10.0f}ms {total * 1e3:5.0f}ms  {text}")  # fmt: skip

    head = HifiganGenerator(HifiganConfig()).eval()  # full size, random weights
    print(f"\nnative head ({sum(p.numel() for p in head.parameters()) / 1e6:.1f} M parameters, "
          f"random) fed from the demo LLM's steps, best of {args.repeats}")  # fmt: skip
    print(f"{'speech':>7} {'LLM steps':>10} {'first audio':>12}")
    for wave, tokens in zip(waves, text_tokens):
        native_once(model, wave, head, tokens)  # warm-up
        first_audio, steps = min(
            native_once(model, wave, head, tokens) for _ in range(args.repeats)
        )
        print(f"{len(wave) / SAMPLE_RATE:6.2f}s {steps:>10} {first_audio * 1e3:10.0f}ms")
    window = vocoder_window(head)
    latents = torch.randn(window, head.cfg.input_channels)
    speaker = torch.nn.functional.normalize(torch.randn(1, 512, 1), dim=1)
    vocode(head, latents, speaker)  # warm-up
    took = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        vocode(head, latents, speaker)
        took.append(time.perf_counter() - start)
    print(f"of which the head's first chunk ({window} latent frames): {min(took) * 1e3:.0f} ms")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def vocoder_window(head: HifiganGenerator) -> int:
    """Latent frames the streaming vocoder reads for its first audio: chunk + right context."""
    vocoder = StreamingVocoder(head, torch.zeros(1, 512, 1))
    return vocoder.chunk_frames + vocoder.right_context


if __name__ == "__main__":
    main()
