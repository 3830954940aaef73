"""The speech LLM: front end -> frozen SAN-M encoder -> adapter -> Qwen2, loaded once, used by all.

``SpeechLLM`` holds the parts on one device and turns waveforms into LLM input embeddings; decoding
strategies live in ``mooer.llm.decoding`` and the task recipe (which prompts, how to read the
answers) in ``mooer.tasks``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mooer import checkpoint
from mooer.asr.adapter import LinearAdapter, load_adapter
from mooer.asr.encoder import SANMEncoder, load_encoder
from mooer.asr.frontend import Cmvn, Frontend
from mooer.asr.quantize import check_quantize, quantize_encoder_int8, quantize_int8
from mooer.audio import SAMPLE_RATE
from mooer.devices import resolve_device, resolve_dtype
from mooer.errors import AudioError, CheckpointError, ConfigError
from mooer.llm.backend import HFBackend, LLMBackend, check_backend_name
from mooer.llm.decoding import OFFLINE, DecodingOptions, generate_ids
from mooer.llm.qwen import load_llm
from mooer.tts.hifigan import HifiganGenerator, load_generator
from mooer.tts.speaker_encoder import (
    ResNetSpeakerEncoder,
    load_speaker_encoder,
    speaker_embedding,
    speaker_embedding_from_file,
)

# Shorter inputs are padded with silence: the adapter needs at least one 120 ms token.
MIN_SAMPLES = SAMPLE_RATE // 5  # 0.2 s

DEMO_MODEL_DIR = Path(__file__).parent / "demo_model"
MAX_CACHED_VOICES = 16  # speaker vectors kept per model, the least recently used dropped first


@dataclass
class _SpeechHead:
    """The speech head's parts, loaded on first use, and the speaker vectors computed so far."""

    generator: HifiganGenerator | None = None
    speaker_encoder: ResNetSpeakerEncoder | None = None
    # (path, mtime_ns, size) -> (1, 512, 1): an edited prompt.wav gets a new vector
    voices: OrderedDict[tuple[str, int, int], torch.Tensor] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class SpeechLLM(nn.Module):
    """MooER's model. ``embed`` is the speech path; ``generate`` adds the LLM's decoding."""

    def __init__(
        self,
        frontend: Frontend,
        encoder: SANMEncoder,
        adapter: LinearAdapter,
        llm: nn.Module,
        tokenizer,
        paths: checkpoint.CheckpointPaths | None = None,
    ) -> None:
        super().__init__()
        self.frontend = frontend
        self.encoder = encoder
        self.adapter = adapter
        self.llm = llm
        self.tokenizer = tokenizer
        self.paths = paths
        self.llm_backend: LLMBackend = HFBackend()  # where mooer.tasks decodes (see load_model)
        self._speech_head = _SpeechHead()  # a plain object: not part of the state dict
        hidden = llm.config.hidden_size
        if adapter.linear2.out_features != hidden:
            raise CheckpointError(
                f"the adapter outputs {adapter.linear2.out_features}-d embeddings but the LLM's "
                f"hidden size is {hidden}: the --llm folder does not belong to this checkpoint"
            )

    @property
    def device(self) -> torch.device:
        return self.encoder.after_norm.weight.device  # a LayerNorm: never quantised

    @property
    def is_mtl(self) -> bool:
        """Whether the LLM answers the ast prompt with ``"{transcript}\\n{translation}"`` (the
        MTL checkpoints' asr_ast_mtl variant)."""
        return self.paths is not None and self.paths.variant == "asr_ast_mtl"

    @property
    def llm_dtype(self) -> torch.dtype:
        return self.llm.get_input_embeddings().weight.dtype

    def _autocast(self):
        # The encoder is kept in fp32 and run under autocast on accelerators, as the reference does.
        if self.device.type == "cpu" or self.llm_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.llm_dtype)

    def embed(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz float32 waveforms -> LLM input embeddings ``(B, Ta, H)`` and lengths ``(B,)``."""
        padded = [np.pad(w, (0, max(0, MIN_SAMPLES - len(w)))) for w in waves]
        feats, lengths = self.frontend.batch(padded)  # (B, T, 560), 60 ms per frame
        feats, lengths = feats.to(self.device), lengths.to(self.device)
        with self._autocast():
            hidden, lengths = self.encoder(feats, lengths)  # (B, T, 512)
            embeds, lengths = self.adapter(hidden, lengths)  # (B, T // k, H), 120 ms per token
        return embeds.to(self.llm_dtype), lengths

    @torch.inference_mode()
    def generate(
        self,
        waves: Sequence[np.ndarray],
        prompts: Sequence[str],
        options: DecodingOptions = OFFLINE,
    ) -> list[str]:
        """One decoded answer per waveform; ``prompts`` are full templated prompts."""
        embeds, lengths = self.embed(waves)
        ids = generate_ids(self.llm, self.tokenizer, embeds, lengths, list(prompts), options)
        return [self.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids]

    # --- speech output (omni and S2ST checkpoints) ---------------------------------------------

    @property
    def has_speech_head(self) -> bool:
        """Whether the checkpoint has a HiFi-GAN head (``g_*`` and ``spk_*``) to speak with."""
        return self.paths is not None and self.paths.has_speech_head

    def speech_generator(self) -> HifiganGenerator:
        """The checkpoint's HiFi-GAN generator (fp32, on the model's device), loaded on first use."""
        head = self._speech_head
        with head.lock:
            if head.generator is None:
                head.generator = load_generator(self._head_path("generator")).to(self.device)
            return head.generator

    def speaker_vector(self, voice: str | os.PathLike | np.ndarray | None = None) -> torch.Tensor:
        """The (1, 512, 1) speaker vector of ``voice``: a recording (default ``prompt.wav``),
        or 16 kHz float32 samples (N,) of a speaker (the source speech of a translation).

        Cached per file; a file changed on disk since is read again. ``AudioError`` for
        samples the speaker encoder cannot use (shorter than 0.5 s, silent).
        """
        if isinstance(voice, np.ndarray):
            head = self._speech_head
            with head.lock:
                return speaker_embedding(self._speaker_encoder(), voice)
        if voice is None:
            if self.paths is None or self.paths.prompt_wav is None:
                raise CheckpointError(
                    "the checkpoint has no prompt.wav to take its voice from: pass a voice recording"
                )
            voice = self.paths.prompt_wav
        path = Path(voice).expanduser().resolve()
        try:
            stat = path.stat()
        except OSError as exc:
            raise AudioError(f"voice recording not found: {path}") from exc
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        head = self._speech_head
        with head.lock:
            if key not in head.voices:
                head.voices[key] = speaker_embedding_from_file(self._speaker_encoder(), path)
                while len(head.voices) > MAX_CACHED_VOICES:
                    head.voices.popitem(last=False)
            head.voices.move_to_end(key)
            return head.voices[key]

    def _speaker_encoder(self) -> ResNetSpeakerEncoder:
        """The head's speaker encoder, loaded on first use (the head's lock held)."""
        head = self._speech_head
        if head.speaker_encoder is None:
            encoder = load_speaker_encoder(self._head_path("speaker_encoder"))
            head.speaker_encoder = encoder.to(self.device)
        return head.speaker_encoder

    def _head_path(self, part: str) -> Path:
        path = getattr(self.paths, part, None) if self.paths is not None else None
        if path is None:
            where = self.paths.root if self.paths is not None else "this model"
            raise CheckpointError(
                f"{where} has no speech head (g_* generator and spk_* speaker encoder files): "
                "only the omni and S2ST checkpoints speak by themselves"
            )
        return path


def load_model(
    model: str | Path | None = None,
    llm: str | Path | None = None,
    task: str = "asr",
    variant: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    attention_heads: int = 4,
    quantize: str | None = None,
    llm_backend: str = "hf",
    llm_url: str | None = None,
) -> SpeechLLM:
    """Load a MooER checkpoint (a folder in a released layout, or a hub id); default: the demo model.

    ``quantize="int8"`` (CPU only) runs the encoder, the adapter and the LLM (with ``llm_backend``
    ``"hf"``; its ``dtype`` must stay fp32) with int8 weights, quantised from the fp32 files at
    load time. ``llm_backend``: where the task
    recipe's prompts are decoded, ``"hf"`` (in this process with transformers) or ``"vllm"``
    (on vLLM: in this process, or on the vLLM server at ``llm_url``, ``http://HOST:PORT/v1``);
    see ``mooer.llm.backend``.
    """
    check_backend_name(llm_backend)
    if llm_url is not None and llm_backend != "vllm":
        raise ConfigError("llm_url needs llm_backend 'vllm'")
    if model is None:
        if not (DEMO_MODEL_DIR / "adapter_project.pt").exists():
            raise CheckpointError(
                f"no --model given and the bundled demo model is missing from {DEMO_MODEL_DIR}"
            )
        model = DEMO_MODEL_DIR
    paths = checkpoint.locate(model, llm=llm, task=task, variant=variant)
    dev = resolve_device(device)
    llm_dtype = resolve_dtype(dtype, dev)
    # int8 covers the LLM where it runs in this process (vLLM runs its own copy)
    quantize_llm = quantize is not None and llm_backend == "hf"
    check_quantize(quantize, dev, llm_dtype if quantize_llm else None)
    frontend = Frontend(Cmvn.load(paths.cmvn))
    # int8: weights in their own memory, so each fp32 matrix is freed once quantised
    encoder = load_encoder(paths.encoder, attention_heads=attention_heads, mmap=quantize is None)
    adapter = load_adapter(paths.adapter, encoder_dim=encoder.cfg.output_size)
    lm, tokenizer = load_llm(paths.llm, paths.lora, dtype=llm_dtype, device=str(dev))
    speech_llm = SpeechLLM(frontend, encoder, adapter, lm, tokenizer, paths)
    speech_llm.encoder.to(dev)
    speech_llm.adapter.to(dev)
    speech_llm.eval().requires_grad_(False)
    if quantize is not None:
        quantize_encoder_int8(speech_llm.encoder)
        quantize_int8(speech_llm.adapter)
    if quantize_llm:
        quantize_int8(speech_llm.llm)
    if llm_backend == "vllm":
        from mooer.llm.vllm_engine import start_vllm_backend

        speech_llm.llm_backend = start_vllm_backend(speech_llm, llm_url)
    return speech_llm
