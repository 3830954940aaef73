"""What the speech LLM learns: the answer tokens that follow its audio and prompt.

Each training item is laid out as at inference (``mooer.llm.decoding.splice``), then right-padded::

    [ prefix (F) | audio embeds (Ta) | prompt tokens (P) | answer tokens (A) + <|im_end|> | padding ]
    labels: -100   -100 ...            -100 ...            answer ids        + eos id     -100 ...

so exactly A + 1 labels per item count. Prompts per task: asr -> the released ``asr`` prompt;
ast and mtl -> the released ``ast`` prompt (the MTL model answers ``"{asr}\\n{ast}"``); these
have no prefix, the audio goes first as in the release. Chat items follow the live session's
layout (``mooer.llm.conversation``): the system turn and the prior turns as text are the prefix,
the audio of the current question follows, then the user suffix ``Answer my question.``.
``chat_text`` items are chat items without audio: the question's text stands where its audio would
be. They teach a small LLM trained from scratch the facts a pretrained LLM would already know.
``opening`` items have no question at all: the assistant speaks first (a voice agent's greeting),
its answer following the system turn and prior turns directly, as ``Conversation.respond`` does;
an opening's text is the reply's own instructions, a system message just before the answer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mooer.asr.adapter import LinearAdapter
from mooer.asr.encoder import SANMEncoder, load_encoder
from mooer.asr.frontend import Cmvn
from mooer.asr.quantize import refuse_quantized
from mooer.devices import DTYPES
from mooer.errors import ConfigError
from mooer.llm.conversation import REPLY_START, history_prefix, message_text, question_suffix
from mooer.llm.decoding import token_id
from mooer.llm.prompts import IM_END, PAD, build_prompt
from mooer.train.config import ModelConfig, TrainConfig
from mooer.train.ctc import CtcHead, CtcVocab, greedy_decode
from mooer.train.data import Batch, estimate_cmvn, place_rows

log = logging.getLogger(__name__)

IGNORE = -100  # label of a position without loss (torch's cross-entropy ignore_index)


def training_prompt(task: str, history: Sequence[tuple[str | None, str | None]] = ()) -> str:
    """The text after the audio of a training item of ``task``: its templated prompt."""
    if task == "asr":
        return build_prompt("asr")
    if task in ("ast", "mtl"):
        return build_prompt("ast")
    if task in ("chat", "chat_text"):
        return question_suffix()
    if task == "opening":
        return REPLY_START
    raise ConfigError(
        f"unknown training task {task!r}: expected asr, ast, mtl, chat, chat_text or opening"
    )


def prompt_prefix(
    task: str, history: Sequence[tuple[str | None, str | None]] = (), text: str = ""
) -> str:
    """The text before the audio: the system turn and prior turns for chat, nothing otherwise;
    for ``chat_text`` also the question ``text`` itself, in the place of its (absent) audio; for
    an ``opening`` with a ``text``, the reply's own instructions as a system message, where
    ``Conversation.start`` reads them."""
    if task == "chat_text":
        return history_prefix(list(history)) + text
    if task == "opening" and text.strip():
        return history_prefix(list(history)) + message_text("system", text.strip())
    return history_prefix(list(history)) if task in ("chat", "opening") else ""


@dataclass
class LMInputs:
    inputs_embeds: torch.Tensor  # (B, L, H)
    attention_mask: torch.Tensor  # (B, L) long, 1 on audio, prompt and answer
    labels: torch.Tensor  # (B, L) long, IGNORE except the answer tokens and <|im_end|>


def build_inputs(
    llm: nn.Module,
    tokenizer,
    audio_embeds: torch.Tensor,
    audio_lengths: torch.Tensor,
    prompts: Sequence[str],
    answers: Sequence[str],
    prefixes: Sequence[str] | None = None,
) -> LMInputs:
    """Prefix, audio, prompt and answer of each item, right-padded with ``<|endoftext|>``.

    audio_embeds (B, Ta, H) with the first ``audio_lengths[b]`` rows valid -> ``LMInputs`` (B, L).
    ``prefixes`` (default: none) is text placed before the audio (chat history, layout above).
    """
    embed = llm.get_input_embeddings()
    device = embed.weight.device
    batch = audio_embeds.shape[0]
    prefixes = [""] * batch if prefixes is None else list(prefixes)
    if not len(prompts) == len(answers) == len(prefixes) == batch == audio_lengths.shape[0]:
        raise ConfigError(
            f"{batch} audio items, {audio_lengths.shape[0]} lengths, {len(prompts)} prompts, "
            f"{len(prefixes)} prefixes and {len(answers)} answers: expected one of each per item"
        )
    eos, pad = token_id(tokenizer, IM_END), token_id(tokenizer, PAD)
    prefix_ids = [
        tokenizer(p, add_special_tokens=False)["input_ids"] if p else [] for p in prefixes
    ]
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    audio = audio_lengths.tolist()
    texts = [p + a + [eos] for p, a in zip(prompt_ids, answer_ids)]
    width = max(len(f) + n + len(t) for f, n, t in zip(prefix_ids, audio, texts))

    ids = torch.full((batch, width), pad, dtype=torch.long)
    labels = torch.full((batch, width), IGNORE, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    audio_at = torch.zeros((batch, width), dtype=torch.long)  # row of audio_embeds per position
    is_audio = torch.zeros((batch, width), dtype=torch.bool)
    for b, (before, n, text, prompt) in enumerate(zip(prefix_ids, audio, texts, prompt_ids)):
        f = len(before)
        ids[b, :f] = torch.tensor(before, dtype=torch.long)
        ids[b, f + n : f + n + len(text)] = torch.tensor(text)
        labels[b, f + n + len(prompt) : f + n + len(text)] = torch.tensor(text[len(prompt) :])
        mask[b, : f + n + len(text)] = 1
        audio_at[b, f : f + n] = torch.arange(n)
        is_audio[b, f : f + n] = True
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    audio_at, is_audio = audio_at.to(device), is_audio.to(device)

    text_embeds = embed(ids)  # (B, L, H); pad embeddings where audio goes
    audio_embeds = audio_embeds.to(device, text_embeds.dtype)
    placed = (
        torch.gather(  # (B, Ta, H) -> (B, L, H): audio row audio_at[b, t] at position t
            audio_embeds, 1, audio_at[..., None].expand(-1, -1, audio_embeds.shape[-1])
        )
        if audio_embeds.shape[1]
        else torch.zeros_like(text_embeds)
    )
    inputs = torch.where(is_audio[..., None], placed, text_embeds)  # (B, L, H)
    return LMInputs(inputs_embeds=inputs, attention_mask=mask, labels=labels)


def answer_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Next-token cross-entropy and accuracy over the labelled positions.

    logits (B, L, V) predict position t + 1 from t -> (mean loss, token accuracy, token count).
    """
    targets = labels[:, 1:]  # (B, L - 1)
    counted = targets != IGNORE
    scores = logits[:, :-1][counted].float()  # (N, V): only where a label counts
    wanted = targets[counted]
    loss = F.cross_entropy(scores, wanted)
    accuracy = (scores.argmax(-1) == wanted).float().mean()
    return loss, accuracy, int(wanted.numel())


class SpeechObjective(nn.Module):
    """Encoder -> adapter -> LLM with the answer loss, plus an optional CTC loss on the encoder.

    ``forward(batch) -> (loss, stats)``: loss = ctc_weight * CTC + (1 - ctc_weight) * answer loss.
    A frozen encoder runs without gradients in eval mode; a batch that carries precomputed encoder
    outputs (``Batch.encoder_out``) skips it.
    """

    def __init__(
        self,
        cmvn: Cmvn,
        encoder: SANMEncoder,
        adapter: LinearAdapter | None,
        llm: nn.Module | None,
        tokenizer,
        train_encoder: bool = False,
        ctc_vocab: CtcVocab | None = None,
        ctc_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if ctc_weight < 1 and (adapter is None or llm is None):
            raise ConfigError(
                "model: the answer loss needs an adapter and an LLM (or ctc_weight 1)"
            )
        if ctc_weight > 0 and ctc_vocab is None:
            raise ConfigError("model.ctc_weight: a CTC loss needs a CTC vocabulary")
        for part in (encoder, adapter):
            if part is not None:
                refuse_quantized(part, "training")
        self.cmvn = cmvn
        self.encoder = encoder
        self.adapter = adapter
        self.llm = llm
        self.tokenizer = tokenizer
        self.train_encoder = train_encoder
        self.ctc_vocab = ctc_vocab
        self.ctc_weight = ctc_weight
        self.ctc = CtcHead(encoder.cfg.output_size, len(ctc_vocab)) if ctc_vocab else None
        encoder.requires_grad_(train_encoder)

    def train(self, mode: bool = True) -> SpeechObjective:
        super().train(mode)
        if not self.train_encoder:
            self.encoder.eval()  # frozen: no dropout, as at inference
        return self

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch -> encoder output (B, T, D) and lengths (B,); rows without audio (TEXT_TASKS)
        stay empty, as the encoder takes only utterances of at least one frame."""
        if batch.encoder_out is not None:
            return batch.encoder_out, batch.encoder_lengths
        feats, lengths = batch.feats, batch.feat_lengths
        spoken = (lengths > 0).nonzero().flatten()
        width = self.encoder.cfg.output_size
        if len(spoken) == 0:
            return feats.new_zeros(len(lengths), 0, width), lengths
        grad = torch.enable_grad() if self.train_encoder else torch.no_grad()
        with grad:
            if len(spoken) == len(lengths):
                return self.encoder(feats, lengths)
            hidden, spoken_lengths = self.encoder(feats[spoken], lengths[spoken])
            # (B', T, D) -> (B, T, D): the text-only rows are zeros of length 0
            batch_size = len(lengths)
            return (
                place_rows(hidden, spoken, batch_size),
                place_rows(spoken_lengths, spoken, batch_size),
            )

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        hidden, lengths = self.encode(batch)  # (B, T, D)
        stats: dict[str, float] = {}
        loss = hidden.new_zeros((), dtype=torch.float32)
        spoken = (lengths > 0).nonzero().flatten()  # CTC has nothing to align in text items
        if self.ctc is not None and self.ctc_weight > 0 and len(spoken):
            texts = [self.ctc_vocab.encode(batch.texts[b]) for b in spoken.tolist()]
            ctc = self.ctc.loss(hidden[spoken], lengths[spoken], texts)
            loss = loss + self.ctc_weight * ctc
            stats["ctc"] = float(ctc.detach())
        if self.ctc_weight < 1:
            embeds, embed_lengths = self.adapter(hidden, lengths)  # (B, T // k, H)
            items = list(zip(batch.tasks, batch.histories, batch.texts))
            inputs = build_inputs(
                self.llm,
                self.tokenizer,
                embeds,
                embed_lengths,
                [training_prompt(t, h) for t, h, _ in items],
                batch.targets,
                [prompt_prefix(t, h, text) for t, h, text in items],
            )
            logits = self.llm(
                inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask
            ).logits  # (B, L, V)
            answer, accuracy, tokens = answer_loss(logits, inputs.labels)
            loss = loss + (1 - self.ctc_weight) * answer
            stats.update(answer=float(answer.detach()), acc=float(accuracy), tokens=tokens)
        stats["loss"] = float(loss.detach())
        return loss, stats

    @torch.no_grad()
    def ctc_transcribe(self, batch: Batch) -> list[str]:
        """Greedy CTC transcripts: a quick check of an encoder trained from scratch."""
        if self.ctc is None:
            raise ConfigError("model.ctc_weight: this model has no CTC head")
        hidden, lengths = self.encode(batch)
        return [self.ctc_vocab.decode(ids) for ids in greedy_decode(self.ctc(hidden), lengths)]


def enable_encoder_checkpointing(encoder: SANMEncoder) -> None:
    """Recompute each block's activations in the backward pass (state-dict keys unchanged)."""
    for block in (*encoder.encoders0, *encoder.encoders):
        block.forward = _checkpointed(block.forward)


def _checkpointed(forward):
    def run(*args):
        return checkpoint(forward, *args, use_reentrant=False)

    return run


def _llm_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.llm_dtype != "auto":
        return DTYPES[cfg.llm_dtype]
    # A frozen base can live in bf16 on accelerators; weights AdamW updates stay fp32.
    return torch.bfloat16 if device.type != "cpu" and not cfg.full_llm else torch.float32


def build_objective(
    cfg: TrainConfig, device: torch.device, work_dir: str | Path | None = None
) -> SpeechObjective:
    """The model ``cfg.model`` describes, its trainable parts marked, on ``device``.

    ``work_dir`` (default: the output dir) receives files the model is built from: the random
    LLM of ``llm_scratch`` and the CTC vocabulary (reused when a run resumes).
    """
    from mooer.llm.qwen import load_llm

    m = cfg.model
    work = Path(work_dir or cfg.output_dir)
    work.mkdir(parents=True, exist_ok=True)
    llm_dtype = _llm_dtype(m, device)
    llm = tokenizer = adapter = None
    if m.checkpoint is not None:
        from mooer.model import load_model

        dtype_name = next(k for k, v in DTYPES.items() if v == llm_dtype)
        speech = load_model(m.checkpoint, llm=m.llm, device="cpu", dtype=dtype_name)
        cmvn, encoder = speech.frontend.cmvn, speech.encoder
        adapter, llm, tokenizer = speech.adapter, speech.llm, speech.tokenizer
    else:
        cmvn = Cmvn.load(m.cmvn) if m.cmvn else _estimated_cmvn(cfg, work)
        heads = m.encoder.attention_heads if m.encoder else 4
        encoder = load_encoder(m.encoder_init, heads) if m.encoder_init else SANMEncoder(m.encoder)
        if m.ctc_weight < 1:
            llm_dir = Path(m.llm) if m.llm else _scratch_llm(cfg, work / "init_llm")
            llm, tokenizer = load_llm(llm_dir, dtype=llm_dtype)
            adapter = LinearAdapter(
                encoder_dim=encoder.cfg.output_size,
                llm_dim=llm.config.hidden_size,
                downsample=m.adapter_downsample,
                hidden=m.adapter_hidden,
            )
    if llm is not None:
        llm = _make_trainable(llm, m)
    if m.train_encoder and m.gradient_checkpointing:
        enable_encoder_checkpointing(encoder)
    vocab = _ctc_vocab(cfg, work) if m.ctc_weight > 0 else None
    objective = SpeechObjective(
        cmvn, encoder, adapter, llm, tokenizer, m.train_encoder, vocab, m.ctc_weight
    )
    if adapter is not None:
        adapter.requires_grad_(True)
    objective.encoder.float()
    return objective.to(device)


def _make_trainable(llm: nn.Module, m: ModelConfig) -> nn.Module:
    if m.full_llm:
        return llm.requires_grad_(True)
    from mooer.llm.qwen import attach_lora, release_lora_config

    lora = dataclasses.replace(
        release_lora_config(m.lora_r, m.lora_alpha, m.lora_dropout),
        target_modules=list(m.lora_targets),
    )
    return attach_lora(llm, lora)


def _scratch_llm(cfg: TrainConfig, out: Path) -> Path:
    """Write the random Qwen2 of ``model.llm_scratch`` once; a resumed run finds it again."""
    from mooer.llm.fabricate import write_tiny_llm

    if not (out / "config.json").exists():
        s = cfg.model.llm_scratch
        write_tiny_llm(
            out,
            hidden_size=s.hidden_size,
            num_layers=s.num_layers,
            num_heads=s.num_heads,
            num_kv_heads=s.num_kv_heads,
            intermediate_size=s.intermediate_size,
            tokenizer_dir=s.tokenizer,
            seed=cfg.optim.seed,
        )
    return out


def _estimated_cmvn(cfg: TrainConfig, work: Path) -> Cmvn:
    path = work / "am.mvn"
    if path.exists():
        return Cmvn.load(path)
    log.info("estimating CMVN statistics from %s", ", ".join(cfg.data.train))
    cmvn = estimate_cmvn(cfg.data.train, seed=cfg.optim.seed)
    cmvn.save(path)
    return cmvn


def _ctc_vocab(cfg: TrainConfig, work: Path) -> CtcVocab:
    path = work / "ctc_vocab.json"
    if path.exists():
        return CtcVocab.load(path)
    from mooer.train.data import is_manifest, read_manifest

    texts = [e.text for s in cfg.data.train if is_manifest(s) for e in read_manifest(s)]
    if not texts:
        raise ConfigError("model.ctc_weight: the CTC vocabulary is built from manifest texts")
    vocab = CtcVocab.build(texts)
    vocab.save(path)
    return vocab
