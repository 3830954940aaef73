"""The bundled demo model's recipe: ``mooer train demo --out runs/demo``.

Stages, each skipped when its output exists (so a stopped run continues where it was)::

    data       template corpus -> espeak-ng speech: train (TRAIN_VOICES, augmented) and held-out
               (unseen sentences, HELDOUT_VOICES never heard in training, clean)
    tokenizer  a small byte-level BPE over the training texts, keeping Qwen's special tokens
    features   LFR features of every utterance, computed once; am.mvn from all training frames
    ctc        stage 1: the SAN-M encoder from scratch with a CTC head (words / characters)
    llm        stage 2: the encoder frozen and its outputs cached; adapter + a Qwen2 from config
               trained in full on the answer tokens
    export     the release flat layout (am.mvn, paraformer-encoder.pth, adapter_project.pt, llm/)
    eval       held-out scores of the exported model (``mooer eval``), written beside it, on
               the held-out set and on held-out sentences in twos and threes (150 ms pauses)

Features are cached because the CPU that trains also makes them: computing fbanks once instead of
every epoch halves a CPU run. The cache costs no augmentation variety: the synthesised audio is
already augmented per utterance, and batches add SpecAugment-style masks on top.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import multiprocessing
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from mooer.asr.encoder import EncoderConfig
from mooer.asr.frontend import Cmvn
from mooer.errors import ConfigError, read_json_file
from mooer.train.config import (
    DataConfig,
    LlmScratchConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from mooer.train.data import TEXT_ITEM_FRAMES, Batch, Entry, read_manifest

if TYPE_CHECKING:
    from mooer.train.corpus import Utterance

log = logging.getLogger(__name__)

STAGES = ("data", "tokenizer", "features", "ctc", "llm", "export", "eval")
FRAME_S = 0.06  # one LFR frame
LFR_BINS = 80  # mel bins in each of the 7 stacked fbank frames of an LFR frame


@dataclass
class MaskConfig:
    """SpecAugment-style masks on cached features (stage 1 only)."""

    freq_masks: int = 2
    max_freq_width: int = 10  # mel bins, the same bins in all stacked frames
    time_masks: int = 2
    max_time_width: int = 3  # LFR frames (180 ms)


# the smallest value of each count; a chat count may be 0, the main set must be there
_LOWEST = {
    "n_train": 1, "n_heldout": 1, "workers": 1, "threads": 1, "ctc_steps": 1, "llm_steps": 1,
    "main_repeats": 1, "chat_repeats": 0, "text_chat_repeats": 0, "text_chat_draws": 0,
    "extra_chat": 0, "openings": 0, "client_openings": 0, "greeted_chat": 0, "multi_sentence": 0,
    "llm_layers": 0,
}  # fmt: skip
_FLAGS = {"n_train": "--train", "n_heldout": "--heldout"}  # flags not named for their field


def field_flag(name: str) -> str:
    """The command-line flag that sets DemoConfig field ``name``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


# what the shared data in a work folder was made from: a run asking for other values needs its own
_WORK_FOLDER_KEYS = ("seed", "n_train", "n_heldout", "vocab_size")


@dataclass
class DemoConfig:
    """Everything the demo model depends on; stored in its ``mooer.json``."""

    out_dir: str = "runs/demo"
    n_train: int = 20000
    n_heldout: int = 600
    seed: int = 0
    workers: int = 2  # processes for speech synthesis and features
    # torch threads: 1, as on a CPU shared with other work a second thread's spin-waits cost
    # more than it computes (measured 6x slower steps at load 6 on 2 cores)
    threads: int = 1
    vocab_size: int = 1200
    encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(
            output_size=192, attention_heads=4, linear_units=512, num_blocks=6, dropout=0.0
        )  # no dropout: a run of about two epochs does not overfit, and masks regularise
    )
    llm: LlmScratchConfig = field(
        default_factory=lambda: LlmScratchConfig(
            hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768
        )
    )
    llm_init_std: float = 0.02  # weights of the Qwen2 trained from scratch
    adapter_hidden: int = 1024
    ctc_steps: int = 1400  # about 7 epochs of 20k utterances
    ctc_lr: float = 2e-3
    ctc_frames_in_batch: int = 4000
    llm_steps: int = 1800
    chat_repeats: int = 2  # chat items per epoch of stage 2: facts need more sightings than words
    # the main training set this many times per epoch of stage 2, to weigh it against tens of
    # thousands of extra chat dialogues (3 did not help English: legs 19, 20 of the model card)
    main_repeats: int = 1
    # each training chat dialogue also as text (``chat_text``), this many times per epoch: the
    # facts a pretrained LLM would bring, which a 3.5 M-parameter LLM from scratch lacks
    text_chat_repeats: int = 3
    # and this many more text chat items drawn as spoken chat is (facts as often as there)
    text_chat_draws: int = 0
    # the chat questions' audio also as asr items (target: the question's words): recognising
    # "and minus four" is most of answering it, and short follow-ups were misheard
    chat_transcripts: bool = True
    # ... including the extra chat dialogues' questions, which then outnumber every other asr
    # item (leaving them out did not help English: legs 17, 18 of the model card)
    extra_chat_transcripts: bool = True
    # more spoken chat dialogues, for stage 2 only (data/chat-N, encoded once): a small model
    # learns the training chat audio by heart long before it answers new questions
    extra_chat: int = 0
    # the assistant speaking first (no user turn: a voice agent's greeting) this many times per
    # epoch, answered with ``corpus.OPENING``
    openings: int = 0
    # chat asked after that greeting: this many spoken chat items and as many text dialogues per
    # epoch with the assistant's greeting in their history before their own turns (without them
    # a greeting in the history reads as a cue to greet again)
    greeted_chat: int = 0
    # openings as voice-agent clients ask for them: with the reply's own instructions (a system
    # message just before it) or after a context sent as one user message (none of them
    # greeted before this: a small model answers that message or the instructions' words)
    client_openings: int = 0
    # items of two or three training sentences with 100-700 ms pauses (asr en, asr zh, ast),
    # for stage 2 only (data/multi-N, encoded once): a segment of continuous speech holds
    # several sentences, and a model that only saw one answers one
    multi_sentence: int = 0
    # their targets end each sentence but the last with its full stop (``sentences_in_a_row``):
    # the cue that one sentence ended and another follows (single sentences keep none)
    sentence_marks: bool = False
    # their sentences also one by one, each spoken alone once (data/multi-N-alone): what a
    # sentence sounds like when nothing follows it, beside the items where another does
    sentences_alone: bool = False
    # stage 2's LLM depth, when deeper than the weights it starts from (0: theirs): see
    # ``_grow_layers``; a leg from a grown leg, and its export, give the same depth
    llm_layers: int = 0
    # train only the layers ``llm_layers`` added; everything the leg started from stays frozen
    new_layers_only: bool = False
    llm_leg: str = "llm"  # stage 2's folder under out_dir (a later leg gets its own)
    # an earlier leg's final.pt whose weights this leg starts from, or an exported demo model's
    # folder (which also seeds a new work folder: see ``_seed_work_folder``)
    llm_init: str = ""
    # instead of training, this leg's weights are the mean of these legs' (final.pt or folder)
    llm_average: tuple[str, ...] = ()
    llm_lr: float = 1.5e-3
    llm_frames_in_batch: int = 1500
    masks: MaskConfig = field(default_factory=MaskConfig)

    def __post_init__(self) -> None:
        for name, low in _LOWEST.items():
            value = getattr(self, name)
            if value < low:
                raise ConfigError(
                    f"{field_flag(name)} (DemoConfig.{name}) must be >= {low}, got {value}"
                )
        for name in ("ctc_lr", "llm_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{field_flag(name)} must be > 0, got {getattr(self, name)}")
        if self.new_layers_only and not self.llm_layers:
            raise ConfigError(f"{field_flag('new_layers_only')} needs {field_flag('llm_layers')}")
        if self.sentences_alone and not self.multi_sentence:
            raise ConfigError(
                f"{field_flag('sentences_alone')} needs {field_flag('multi_sentence')} N > 0"
            )

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def model_dir(self) -> Path:
        """Where stage 2's leg is exported (and scored)."""
        return self.out / ("model" if self.llm_leg == "llm" else f"model-{self.llm_leg}")


# ---------------------------------------------------------------------------------------------
# Cached utterances and their batches


@dataclass
class CachedSet:
    """Utterances with per-frame inputs kept in memory: features (stage 1) or encoder outputs."""

    entries: list[Entry]
    frames: list[torch.Tensor]  # (T_i, D) float16 each

    def __add__(self, other: CachedSet) -> CachedSet:
        return CachedSet(self.entries + other.entries, self.frames + other.frames)

    def _of(self, task: str) -> list[int]:
        return [i for i, e in enumerate(self.entries) if e.task == task]

    def repeated(self, task: str, times: int) -> CachedSet:
        """This set with each utterance of ``task`` ``times`` times."""
        extra = self._of(task) * (times - 1)
        return CachedSet(
            self.entries + [self.entries[i] for i in extra],
            self.frames + [self.frames[i] for i in extra],
        )

    def batches(
        self,
        max_frames: int,
        seed: int,
        start: int = 0,
        masks: MaskConfig | None = None,
        as_encoder_out: bool = False,
    ) -> Iterator[Batch]:
        """An endless stream of length-bucketed batches, reshuffled every epoch; skips ``start``."""
        epoch, made = 0, 0
        while True:
            for group in self._groups(max_frames, np.random.default_rng([seed, epoch])):
                made += 1
                if made > start:
                    rng = np.random.default_rng([seed, epoch, made])
                    yield self._collate(group, epoch, masks, rng, as_encoder_out)
            epoch += 1

    def transcribed(self, task: str) -> CachedSet:
        """The utterances of ``task`` as asr items: the same audio, their words as the answer."""
        chosen = self._of(task)
        entries = [
            dataclasses.replace(
                self.entries[i], task="asr", target=self.entries[i].text, history=[]
            )
            for i in chosen
        ]
        return CachedSet(entries, [self.frames[i] for i in chosen])

    def one_pass(self, max_frames: int) -> Iterator[Batch]:
        """Every utterance once (the first epoch of ``batches``), unmasked."""
        return itertools.takewhile(lambda b: not b.epoch, self.batches(max_frames, seed=0))

    def _groups(self, max_frames: int, rng: np.random.Generator) -> list[list[int]]:
        """Indices grouped by similar length (little padding), groups in random order."""
        # a text-only item costs about as much as a short utterance
        lengths = np.array([max(len(f), TEXT_ITEM_FRAMES) for f in self.frames])
        jitter = rng.uniform(0, 1, len(lengths))  # a new bucketing each epoch
        order = np.lexsort((jitter, lengths))
        groups: list[list[int]] = [[]]
        for i in order.tolist():
            if groups[-1] and lengths[i] * (len(groups[-1]) + 1) > max_frames:
                groups.append([])
            groups[-1].append(i)
        rng.shuffle(groups)
        return groups

    def _collate(
        self,
        group: list[int],
        epoch: int,
        masks: MaskConfig | None,
        rng: np.random.Generator,
        as_encoder_out: bool,
    ) -> Batch:
        items = [self.frames[i].float() for i in group]
        lengths = torch.tensor([len(x) for x in items], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(items, batch_first=True)  # (B, T, D)
        if masks is not None:
            apply_masks(padded, lengths, masks, rng)
        entries = [self.entries[i] for i in group]
        return Batch(
            ids=[e.id for e in entries],
            tasks=[e.task for e in entries],
            texts=[e.text for e in entries],
            targets=[e.target for e in entries],
            histories=[list(e.history) for e in entries],
            feats=None if as_encoder_out else padded,
            feat_lengths=lengths,
            audio_seconds=float(lengths.sum()) * FRAME_S,
            epoch=epoch,
            encoder_out=padded if as_encoder_out else None,
            encoder_lengths=lengths if as_encoder_out else None,
        )


def apply_masks(
    feats: torch.Tensor, lengths: torch.Tensor, masks: MaskConfig, rng: np.random.Generator
) -> None:
    """Zero random mel bands and time spans of (B, T, 560) normalised LFR features, in place.

    Zero is the training mean after CMVN, so a mask reads as "nothing unusual here".
    """
    stacked = feats.view(*feats.shape[:2], -1, LFR_BINS)  # (B, T, 560) -> (B, T, 7, 80)
    for b, n in enumerate(lengths.tolist()):
        for _ in range(masks.freq_masks):
            width = int(rng.integers(0, masks.max_freq_width + 1))
            low = int(rng.integers(0, LFR_BINS - width + 1))
            stacked[b, :, :, low : low + width] = 0
        for _ in range(masks.time_masks):
            width = int(rng.integers(0, min(masks.max_time_width, n // 4) + 1))
            first = int(rng.integers(0, n - width + 1))
            feats[b, first : first + width] = 0


# ---------------------------------------------------------------------------------------------
# Stages


def _stage_data(cfg: DemoConfig) -> None:
    from mooer.train.corpus import build_corpus
    from mooer.train.synth import HELDOUT_VOICES, TRAIN_VOICES, synthesize_corpus

    train, heldout = build_corpus(cfg.n_train, cfg.n_heldout, cfg.seed)
    for name, utterances, voices, augmented in (
        ("train", train, TRAIN_VOICES, True),
        ("heldout", heldout, HELDOUT_VOICES, False),
    ):
        synthesize_corpus(
            utterances, cfg.out / "data" / name, voices, cfg.seed, cfg.workers, augmented
        )


def _manifest(cfg: DemoConfig, split: str) -> Path:
    return cfg.out / "data" / split / "manifest.jsonl"


def tokenizer_texts(entries: Sequence[Entry]) -> list[str]:
    """Everything the LLM reads or writes in training, the chat layout included."""
    from mooer.llm.conversation import history_prefix, question_suffix

    texts = [history_prefix([("q", "a")]) + question_suffix()]
    for e in entries:
        texts += [e.text, e.translation, e.target, *(s for turn in e.history for s in turn)]
    return [t for t in texts if t]


def _stage_tokenizer(cfg: DemoConfig) -> None:
    from mooer.train.tokenizer import train_tokenizer

    entries = read_manifest(_manifest(cfg, "train"))
    train_tokenizer(tokenizer_texts(entries), cfg.out / "tokenizer", cfg.vocab_size)


def _raw_features(paths: list[str]) -> list[np.ndarray]:
    """Audio files -> (T, 560) float32 LFR features without CMVN (runs in worker processes)."""
    from mooer.asr.frontend import fbank, lfr
    from mooer.audio import load_audio

    return [lfr(fbank(load_audio(p))).astype(np.float32) for p in paths]


def _split_features(cfg: DemoConfig, split: str) -> list[np.ndarray]:
    """Every utterance of a split -> (T, 560) LFR features without CMVN, in worker processes."""
    paths = [e.audio for e in read_manifest(_manifest(cfg, split))]
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(cfg.workers, mp_context=context) as pool:
        return [f for chunk in pool.map(_raw_features, chunks) for f in chunk]


def _normalised(cmvn: Cmvn, raw: list[np.ndarray]) -> list[torch.Tensor]:
    """Raw (T, 560) features -> CMVN-normalised fp16 tensors, as the caches keep them."""
    return [torch.from_numpy(cmvn.apply(f).astype(np.float16)) for f in raw]


def _stage_features(cfg: DemoConfig) -> None:
    """LFR features of both splits; am.mvn from every training frame (unless the work folder
    was seeded from a model: its encoder needs its CMVN); saved normalised, fp16."""
    raw = {split: _split_features(cfg, split) for split in ("train", "heldout")}
    if (cfg.out / "am.mvn").exists():
        cmvn = Cmvn.load(cfg.out / "am.mvn")
    else:
        cmvn = _training_cmvn(raw["train"])
        cmvn.save(cfg.out / "am.mvn")
    for split, feats in raw.items():
        torch.save(_normalised(cmvn, feats), cfg.out / f"features_{split}.pt")


def _training_cmvn(raw: list[np.ndarray]) -> Cmvn:
    """The CMVN that gives every training frame's (560,) features zero mean and unit variance."""
    total = sum(f.sum(0, dtype=np.float64) for f in raw)
    squares = sum((f.astype(np.float64) ** 2).sum(0) for f in raw)
    count = sum(len(f) for f in raw)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return Cmvn(shift=-mean, rescale=1.0 / np.maximum(std, 1e-2))


def _load_set(cfg: DemoConfig, split: str, name: str) -> CachedSet:
    frames = torch.load(cfg.out / f"{name}_{split}.pt")
    return CachedSet(demo_tasks(read_manifest(_manifest(cfg, split))), frames)


def demo_tasks(entries: Sequence[Entry]) -> list[Entry]:
    """The entries as the demo model is trained and scored: ``mtl`` items become ``ast`` items.

    The released prompts give ast and mtl the same instruction; a model trained on both answers
    it one way or the other at random. The demo is a plain (not MTL) model: the ``ast`` prompt
    gets the translation, as ``mooer transcribe --task ast`` reads it for a flat checkpoint.
    """
    return [
        dataclasses.replace(e, task="ast", target=e.translation) if e.task == "mtl" else e
        for e in entries
    ]


def _train_config(
    cfg: DemoConfig, stage: str, model: ModelConfig, optim: OptimConfig
) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(train=[str(_manifest(cfg, "train"))], valid=[]),
        model=model,
        optim=optim,
        output_dir=str(cfg.out / stage),
        device="cpu",
        threads=cfg.threads,
        log_interval=10,
        save_interval=50,
        keep_checkpoints=1,
    )


def _fit(train_cfg: TrainConfig, objective, stream) -> None:
    from mooer.train.trainer import Trainer

    trainer = Trainer(objective, train_cfg, torch.device("cpu"))
    trainer.resume()
    trainer.fit(stream)


def _stage_ctc(cfg: DemoConfig) -> None:
    from mooer.train.export import export_model
    from mooer.train.objective import build_objective

    model = ModelConfig(
        encoder=cfg.encoder, cmvn=str(cfg.out / "am.mvn"), train_encoder=True, ctc_weight=1.0
    )
    optim = OptimConfig(
        lr=cfg.ctc_lr, warmup_steps=cfg.ctc_steps // 8, max_steps=cfg.ctc_steps, seed=cfg.seed
    )
    train_cfg = _train_config(cfg, "ctc", model, optim)
    torch.manual_seed(cfg.seed)
    objective = build_objective(train_cfg, torch.device("cpu"))
    data = _load_set(cfg, "train", "features")
    _fit(
        train_cfg,
        objective,
        lambda start: data.batches(cfg.ctc_frames_in_batch, cfg.seed, start, cfg.masks),
    )
    objective.eval()
    _log_ctc_scores(objective, _load_set(cfg, "heldout", "features"))
    export_model(objective, cfg.out / "ctc" / "final", train_cfg)


def _log_ctc_scores(objective, heldout: CachedSet) -> None:
    """Greedy CTC WER/CER on the held-out speech: the encoder's quality before the LLM."""
    from mooer.train.metrics import cer, wer

    hyps: dict[str, str] = {}
    for batch in heldout.one_pass(3000):
        hyps.update(zip(batch.ids, objective.ctc_transcribe(batch)))
    for lang, metric in (("en", wer), ("zh", cer)):
        pairs = [(e.text, hyps[e.id]) for e in heldout.entries if e.lang == lang]
        if pairs:
            score = metric([r for r, _ in pairs], [h for _, h in pairs])
            log.info("CTC held-out %s %s %.2f %%", lang, metric.__name__.upper(), 100 * score)


def _init_llm(cfg: DemoConfig, out: Path) -> Path:
    """A Qwen2 from config with the demo tokenizer, initialised for training (std 0.02)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mooer.llm.fabricate import write_tiny_llm

    if (out / "config.json").exists():
        return out
    s = cfg.llm
    write_tiny_llm(
        out,
        hidden_size=s.hidden_size,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        num_kv_heads=s.num_kv_heads,
        intermediate_size=s.intermediate_size,
        tokenizer_dir=cfg.out / "tokenizer",
        seed=cfg.seed,
    )
    config = AutoConfig.from_pretrained(out)
    config.initializer_range = cfg.llm_init_std  # the fabricated default is for random tests
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


def _deeper_llm(cfg: DemoConfig, llm: Path) -> Path:
    """``llm`` with ``cfg.llm_layers`` layers, freshly initialised (``_grow_layers`` keeps the
    trained layers' weights and takes the new layers' from here)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(llm)
    if config.num_hidden_layers == cfg.llm_layers:
        return llm
    out = llm.parent / f"{llm.name}-{cfg.llm_layers}-layers"
    if not (out / "config.json").exists():
        shutil.copytree(
            llm, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.safetensors")
        )
        old, config.num_hidden_layers = config.num_hidden_layers, cfg.llm_layers
        if getattr(config, "layer_types", None):  # one per layer, as _grow_layers places them
            config.layer_types = [
                config.layer_types[i * old // cfg.llm_layers] for i in range(cfg.llm_layers)
            ]
        config.initializer_range = cfg.llm_init_std
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return out


_LAYER = re.compile(r"^llm\.model\.layers\.(\d+)\.(.+)$")
# the projections that write a layer's attention and MLP outputs into the residual stream
_LAYER_OUTPUTS = ("self_attn.o_proj.weight", "mlp.down_proj.weight")


def _depth(state: dict[str, torch.Tensor]) -> int:
    """How many LLM layers a stage-2 state holds."""
    return 1 + max((int(m[1]) for key in state if (m := _LAYER.match(key))), default=-1)


def _depth_mismatch(what: str, layers: int) -> str:
    return f"{what}: an LLM of {layers} layers; give {field_flag('llm_layers')} {layers}"


def _grow_layers(
    trained: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """``trained``'s weights in the deeper model whose fresh state is ``fresh``, and the names of
    the weights new to it (block expansion: a small LLM gets room for a new skill without first
    losing what it knows).

    Trained layer i becomes layer i * k (k: the depths' ratio, a whole number); each layer in
    between keeps its fresh weights except the two output projections, which start at zero, so
    it adds nothing to the residual stream and the grown model computes what ``trained`` did."""
    depth = {"trained": _depth(trained), "fresh": _depth(fresh)}
    if depth["fresh"] < depth["trained"]:
        raise ConfigError(_depth_mismatch("the weights the leg starts from", depth["trained"]))
    if depth["fresh"] % depth["trained"]:
        raise ConfigError(
            f"{field_flag('llm_layers')} {depth['fresh']}: must be a multiple of the "
            f"{depth['trained']} layers of the weights the leg starts from"
        )
    k = depth["fresh"] // depth["trained"]
    grown = {key: value for key, value in trained.items() if not _LAYER.match(key)}
    new: set[str] = set()
    for key, value in fresh.items():
        m = _LAYER.match(key)
        if not m:
            continue
        layer, rest = int(m[1]), m[2]
        if layer % k == 0:
            grown[key] = trained[f"llm.model.layers.{layer // k}.{rest}"]
        else:
            grown[key] = torch.zeros_like(value) if rest in _LAYER_OUTPUTS else value
            new.add(key)
    return grown, new


@torch.no_grad()
def _encode_set(objective, data: CachedSet) -> CachedSet:
    """The frozen encoder's outputs for every utterance, (T_i, D) float16 each."""
    from mooer.train.data import encode_corpus

    outputs = {u.entry.id: u.hidden for u in encode_corpus(data.one_pass(4000), objective.encode)}
    return CachedSet(data.entries, [outputs[e.id] for e in data.entries])


def _extra_set(
    cfg: DemoConfig, objective, split: str, items: Callable[[], Sequence[Utterance]]
) -> CachedSet:
    """More training items for stage 2 (``items()``: ``corpus.more_chat``, ``multi_sentence``):
    spoken by the training voices, normalised with the run's am.mvn and encoded once; kept
    under data/SPLIT."""
    from mooer.train.synth import TRAIN_VOICES, synthesize_corpus

    cache = cfg.out / f"encoded_{split}.pt"
    if not cache.exists():
        if not _manifest(cfg, split).exists():
            synthesize_corpus(
                items(), cfg.out / "data" / split, TRAIN_VOICES, cfg.seed, cfg.workers, True
            )
        feats = _normalised(Cmvn.load(cfg.out / "am.mvn"), _split_features(cfg, split))
        entries = demo_tasks(read_manifest(_manifest(cfg, split)))
        torch.save(_encode_set(objective, CachedSet(entries, feats)).frames, cache)
    return _load_set(cfg, split, "encoded")


def _extra_speech(cfg: DemoConfig, objective) -> CachedSet | None:
    """The leg's spoken items beyond the main set: ``extra_chat``, ``multi_sentence`` (and its
    ``sentences_alone``)."""
    from mooer.train.corpus import more_chat, multi_sentence, multi_sentence_alone

    extras = []
    if cfg.extra_chat:
        chat = functools.partial(more_chat, cfg.n_train, cfg.extra_chat, cfg.seed)
        extras.append(_extra_set(cfg, objective, f"chat-{cfg.extra_chat}", chat))
    if cfg.multi_sentence:
        multi = functools.partial(
            multi_sentence, "train", cfg.multi_sentence, cfg.seed, cfg.sentence_marks
        )
        spoken = _extra_set(cfg, objective, f"multi-{cfg.multi_sentence}", multi)
        extras.append(_with_texts(spoken, multi()))
    if cfg.sentences_alone:
        alone = functools.partial(multi_sentence_alone, "train", cfg.multi_sentence, cfg.seed)
        extras.append(_extra_set(cfg, objective, f"multi-{cfg.multi_sentence}-alone", alone))
    return sum(extras[1:], extras[0]) if extras else None


def _with_texts(data: CachedSet, items: Sequence[Utterance]) -> CachedSet:
    """``data`` with its items' texts and targets as ``items`` give them now: the audio and
    frames kept under data/ serve every leg, with or without ``sentence_marks``."""
    texts = {u.id: u for u in items}
    entries = [
        dataclasses.replace(
            e, text=texts[e.id].text, translation=texts[e.id].translation, target=texts[e.id].target
        )
        for e in data.entries
    ]
    return CachedSet(entries, data.frames)


def text_chat_set(width: int, repeats: int, drawn: Sequence[Utterance] = ()) -> CachedSet:
    """Chat turns as ``chat_text`` items (no audio): every training chat dialogue ``repeats``
    times, then the ``drawn`` ones (training chat items, e.g. from ``corpus.more_chat``).

    Drawn items come as the corpus's sampler draws them, so the small templates (facts,
    opposites) are as frequent as in spoken chat; once per dialogue they are under 2 % of the
    text. Held-out questions are left out, as text too: the held-out score measures answering
    speech whose words were never trained on in any form.
    """
    dialogues = _training_dialogues() * repeats
    dialogues += [(*map(tuple, u.history), (u.text, u.target)) for u in drawn]
    entries = [_text_chat(f"text-{i:06d}", dialogue) for i, dialogue in enumerate(dialogues)]
    return CachedSet(entries, _no_audio(width, len(entries)))


def _text_chat(item_id: str, dialogue: Sequence, before: Sequence = ()) -> Entry:
    """A dialogue's last turn as a ``chat_text`` item; its earlier turns, after ``before``,
    are the history."""
    *history, (question, answer) = dialogue
    return Entry(
        id=item_id,
        audio="",
        task="chat_text",
        text=question,
        target=answer,
        history=[*before, *history],
        lang="en",
    )


def _no_audio(width: int, count: int) -> list[torch.Tensor]:
    """The cached frames of ``count`` items without audio: (0, width) each."""
    return [torch.zeros(0, width, dtype=torch.float16)] * count


def _synced_histories(count: int, rng: np.random.Generator) -> list[list[tuple[str, str]]]:
    """``count`` histories before the assistant greets: every other one empty, the others a
    training chat dialogue (a voice agent's history synced by its client before it speaks)."""
    dialogues = _training_dialogues()
    drawn = rng.integers(len(dialogues), size=count)
    return [list(dialogues[d]) if i % 2 else [] for i, d in enumerate(drawn)]


def _training_dialogues() -> list:
    """Every chat dialogue whose first question is not held out."""
    from mooer.train.corpus import chat_dialogues, is_heldout

    return [d for d in chat_dialogues() if not is_heldout(d[0][0])]


def opening_set(width: int, count: int, seed: int = 0) -> CachedSet:
    """``count`` openings: the assistant speaks first with ``corpus.OPENING``, every other one
    after a training chat dialogue (a voice agent's history synced before it greets). Without
    them a small model's first words are whatever follows a system turn or an answer most often
    in its training: some answer to some question."""
    from mooer.train.corpus import OPENING

    histories = _synced_histories(count, np.random.default_rng(seed))
    entries = [
        Entry(id=f"opening-{i:06d}", audio="", task="opening", target=OPENING, history=h, lang="en")
        for i, h in enumerate(histories)
    ]
    return CachedSet(entries, _no_audio(width, count))


# a reply's own instructions when a client asks the assistant to speak first
OPENING_INSTRUCTIONS = (
    "Greet the user.",
    "Greet.",
    "Say hello.",
    "Say hello to the user.",
    "Welcome the user.",
    "Start the conversation.",
    "Open the conversation with a short greeting.",
)


def context_message(dialogue: Sequence[tuple[str, str]]) -> str:
    """A conversation sent as one user message, as some clients send a context they hold
    before the assistant speaks first: its messages as JSON between two sentences."""
    messages = [
        {"role": role, "content": text}
        for question, answer in dialogue
        for role, text in (("user", question), ("assistant", answer))
    ]
    dumped = json.dumps(messages, indent=2)
    return f"Our conversation so far:\n\n{dumped}\n\nGo on from here."


def client_opening_set(width: int, count: int, seed: int = 0) -> CachedSet:
    """``count`` openings (``corpus.OPENING``) laid out as voice-agent clients ask for them: in
    turn after nothing, after a synced training dialogue and after that dialogue sent as one
    user message (``context_message``); every other one with the reply's own instructions (one
    of ``OPENING_INSTRUCTIONS``, half of them after the released system prompt's words, as a
    client that repeats the session's instructions sends them)."""
    from mooer.llm.conversation import SYSTEM_TURN
    from mooer.train.corpus import OPENING

    rng = np.random.default_rng([seed, 2])
    dialogues = _training_dialogues()
    released = SYSTEM_TURN.split("\n", 1)[1].split("<|", 1)[0]  # "You are a helpful assistant."
    entries = []
    for i, d in enumerate(rng.integers(len(dialogues), size=count).tolist()):
        dialogue = list(dialogues[d])
        history = ([], dialogue, [(context_message(dialogue), None)])[i % 3]
        told = ""
        if i % 2:
            told = OPENING_INSTRUCTIONS[rng.integers(len(OPENING_INSTRUCTIONS))]
            told = f"{released}\n{told}" if rng.random() < 0.5 else told
        entries.append(
            Entry(
                id=f"client-opening-{i:06d}",
                audio="",
                task="opening",
                text=told,
                target=OPENING,
                history=history,
                lang="en",
            )
        )
    return CachedSet(entries, _no_audio(width, count))


def greeting_heard(rng: np.random.Generator) -> str:
    """The greeting as a client remembers it: ``corpus.OPENING``, or one time in four its
    first one to three words (cut to what was heard when the user spoke over it)."""
    from mooer.train.corpus import OPENING

    words = OPENING.split()
    return OPENING if rng.random() >= 0.25 else " ".join(words[: rng.integers(1, len(words))])


def greeted_set(speech: CachedSet, count: int, seed: int = 0) -> CachedSet:
    """``count`` spoken chat items of ``speech`` and ``count`` training chat dialogues as text,
    asked after the assistant spoke first: each history begins with its greeting
    (``greeting_heard``), every other one after a synced training dialogue, as a voice agent's
    conversation is laid out (``history_prefix``: a turn without a question). A model trained
    to greet but never asked anything after its greeting answers the next question with
    pieces of it."""
    rng = np.random.default_rng([seed, 1])
    spoken = speech._of("chat")
    before = _synced_histories(2 * count, rng)
    greeted = [[*h, (None, greeting_heard(rng))] for h in before]
    chosen = rng.choice(spoken, size=count).tolist() if spoken else []
    entries = [
        dataclasses.replace(
            speech.entries[j], id=f"greeted-{i:06d}", history=greeted[i] + speech.entries[j].history
        )
        for i, j in enumerate(chosen)
    ]
    frames = [speech.frames[j] for j in chosen]
    dialogues = _training_dialogues()
    for i, d in enumerate(rng.integers(len(dialogues), size=count).tolist(), start=count):
        entries.append(_text_chat(f"greeted-{i:06d}", dialogues[d], greeted[i]))
    frames += _no_audio(speech.frames[0].shape[-1], count)
    return CachedSet(entries, frames)


def after_greeting(entries: Sequence[Entry]) -> list[Entry]:
    """The chat entries asked after the assistant's greeting (``corpus.OPENING`` as the first
    turn of their history): do questions still get their answers once it greeted?"""
    from mooer.train.corpus import OPENING

    return [
        dataclasses.replace(e, history=[(None, OPENING), *e.history])
        for e in entries
        if e.task == "chat"
    ]


def _llm_config(cfg: DemoConfig) -> TrainConfig:
    llm = _init_llm(cfg, cfg.out / "init_llm")
    model = ModelConfig(
        llm=str(_deeper_llm(cfg, llm) if cfg.llm_layers else llm),
        encoder_init=str(cfg.out / "ctc" / "final" / "paraformer-encoder.pth"),
        cmvn=str(cfg.out / "am.mvn"),
        adapter_hidden=cfg.adapter_hidden,
        full_llm=True,
        llm_dtype="fp32",
    )
    optim = OptimConfig(
        lr=cfg.llm_lr, warmup_steps=cfg.llm_steps // 10, max_steps=cfg.llm_steps, seed=cfg.seed
    )
    return _train_config(cfg, cfg.llm_leg, model, optim)


def average_weights(paths: Sequence[str | Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of legs' weights (checkpoint averaging: the legs' errors differ);
    a leg is its final.pt or an exported demo model's folder (see ``_weights``)."""
    states = [_weights(p) for p in paths]
    if not states or any(s.keys() != states[0].keys() for s in states):
        raise ConfigError(f"cannot average {list(map(str, paths))}: not the same model's weights")
    return {k: _mean([s[k] for s in states]) for k in states[0]}


def _mean(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Their mean; a tensor all legs share (the frozen encoder) comes back bit for bit, where
    a sum of five equal floats divided by five can be off by one unit in the last place."""
    first = tensors[0]
    if not first.is_floating_point() or all(torch.equal(first, t) for t in tensors[1:]):
        return first
    return torch.stack([t.float() for t in tensors]).mean(0).to(first.dtype)


# the settings that make one stage-2 leg differ from another
_LEG_FIELDS = (
    "llm_steps",
    "llm_lr",
    "llm_frames_in_batch",
    "chat_repeats",
    "main_repeats",
    "text_chat_repeats",
    "text_chat_draws",
    "chat_transcripts",
    "extra_chat_transcripts",
    "extra_chat",
    "openings",
    "greeted_chat",
    "client_openings",
    "multi_sentence",
    "sentence_marks",
    "sentences_alone",
    "llm_layers",
    "new_layers_only",
)
_LEG_RECORD = "leg.json"


def leg_record(final_pt: str | Path) -> dict:
    """How the leg behind ``final_pt`` was made: ``{"leg": NAME, "legs": {NAME: entry, ...}}``,
    every leg it came from once, earliest first. An entry holds a trained leg's settings and the
    name of the leg it started from, or the names of the legs it averaged. Kept beside the
    weights because a model built in legs has no single config that describes it."""
    if Path(final_pt).is_dir():  # an exported demo model: its mooer.json holds the record
        return _model_info(Path(final_pt))["demo_recipe"]["stage2"]
    folder = Path(final_pt).parent
    path = folder / _LEG_RECORD
    if not path.exists():
        entry = {"weights": str(final_pt), "settings": "not recorded"}
        return {"leg": folder.name, "legs": {folder.name: entry}}
    return json.loads(path.read_text(encoding="utf-8"))


def _model_info(model_dir: Path) -> dict:
    """An exported demo model's ``mooer.json``; refused when it is not the recipe's export."""
    from mooer.train.export import MANIFEST

    info = read_json_file(model_dir / MANIFEST, ConfigError)
    if "stage2" not in info.get("demo_recipe", {}):
        raise ConfigError(f"{model_dir}: not a demo model (no demo_recipe.stage2 in {MANIFEST})")
    return info


def _weights(source: str | Path) -> dict[str, torch.Tensor]:
    """Stage 2's weights from a leg's final.pt or an exported demo model's folder."""
    if not Path(source).is_dir():
        return torch.load(source, map_location="cpu")
    from mooer.train.objective import build_objective

    model = ModelConfig(checkpoint=str(source), full_llm=True, llm_dtype="fp32")
    with tempfile.TemporaryDirectory() as work:  # build_objective's work folder, left empty
        cfg = TrainConfig(data=DataConfig(train=[], valid=[]), model=model, output_dir=work)
        return build_objective(cfg, torch.device("cpu")).state_dict()


def _seed_work_folder(cfg: DemoConfig, model_dir: Path) -> None:
    """A work folder for a leg that starts from an exported demo model (``--llm-init DIR``):
    its CMVN, encoder and LLM (with the tokenizer) stand for the stages that made them, so the
    data, features and encoder outputs are made with them and nothing else is retrained."""
    _model_info(model_dir)
    for source, target in (
        ("am.mvn", "am.mvn"),
        ("paraformer-encoder.pth", "ctc/final/paraformer-encoder.pth"),
        ("llm", "init_llm"),
        ("llm", "tokenizer"),
    ):
        if not (cfg.out / target).exists():
            (cfg.out / target).parent.mkdir(parents=True, exist_ok=True)
            copy = shutil.copytree if (model_dir / source).is_dir() else shutil.copyfile
            copy(model_dir / source, cfg.out / target)


def _write_leg_record(cfg: DemoConfig) -> None:
    sources = list(cfg.llm_average) or [p for p in (cfg.llm_init,) if p]
    parents = [leg_record(p) for p in sources]
    if cfg.llm_average:
        entry: dict = {"average_of": [r["leg"] for r in parents]}
    else:
        settings = {f: getattr(cfg, f) for f in _LEG_FIELDS}
        entry = {"settings": settings, "init": parents[0]["leg"] if parents else None}
    legs: dict = {}
    for record in parents:
        legs |= record["legs"]
    legs[cfg.llm_leg] = entry
    path = cfg.out / cfg.llm_leg / _LEG_RECORD
    path.write_text(json.dumps({"leg": cfg.llm_leg, "legs": legs}, indent=1) + "\n", "utf-8")


def _leg_set(cfg: DemoConfig, main_set: CachedSet, extra: CachedSet | None) -> CachedSet:
    """What one stage-2 leg trains on: the encoded main set and ``extra`` speech (spoken chat,
    multi-sentence items), chat repeated, chat questions as asr items, and chat as text."""
    main_set = CachedSet(main_set.entries * cfg.main_repeats, main_set.frames * cfg.main_repeats)
    speech = main_set if extra is None else main_set + extra
    data = speech.repeated("chat", cfg.chat_repeats)
    if cfg.chat_transcripts:
        data = data + (speech if cfg.extra_chat_transcripts else main_set).transcribed("chat")
    if cfg.text_chat_repeats or cfg.text_chat_draws:
        from mooer.train.corpus import more_chat

        drawn = []
        if cfg.text_chat_draws:  # after the spoken extra ones: the sampler's next items
            drawn = more_chat(cfg.n_train, cfg.extra_chat + cfg.text_chat_draws, cfg.seed)
        width = data.frames[0].shape[-1]
        data = data + text_chat_set(width, cfg.text_chat_repeats, drawn[cfg.extra_chat :])
    if cfg.openings:
        data = data + opening_set(data.frames[0].shape[-1], cfg.openings, cfg.seed)
    if cfg.client_openings:
        data = data + client_opening_set(data.frames[0].shape[-1], cfg.client_openings, cfg.seed)
    if cfg.greeted_chat:
        data = data + greeted_set(speech, cfg.greeted_chat, cfg.seed)
    return data


def _stage_llm(cfg: DemoConfig) -> None:
    from mooer.train.objective import build_objective

    (cfg.out / cfg.llm_leg).mkdir(parents=True, exist_ok=True)
    _write_leg_record(cfg)
    if cfg.llm_average:
        torch.save(average_weights(cfg.llm_average), cfg.out / cfg.llm_leg / "final.pt")
        return

    train_cfg = _llm_config(cfg)
    torch.manual_seed(cfg.seed)
    objective = build_objective(train_cfg, torch.device("cpu"))
    cache = cfg.out / "encoded_train.pt"
    if not cache.exists():
        encoded = _encode_set(objective, _load_set(cfg, "train", "features"))
        torch.save(encoded.frames, cache)
    main_set = _load_set(cfg, "train", "encoded")
    extra = _extra_speech(cfg, objective)
    if cfg.llm_init:
        _start_from(cfg, objective, _weights(cfg.llm_init))
    data = _leg_set(cfg, main_set, extra)
    _fit(
        train_cfg,
        objective,
        lambda start: data.batches(cfg.llm_frames_in_batch, cfg.seed, start, as_encoder_out=True),
    )
    torch.save(objective.state_dict(), cfg.out / cfg.llm_leg / "final.pt")


def _start_from(cfg: DemoConfig, objective, weights: dict[str, torch.Tensor]) -> None:
    """Stage 2's starting weights, grown to ``cfg.llm_layers`` (and the rest frozen, for
    ``cfg.new_layers_only``)."""
    fresh = objective.state_dict()
    new: set[str] = set()
    if weights.keys() != fresh.keys():
        weights, new = _grow_layers(weights, fresh)
    if cfg.new_layers_only and not new:
        raise ConfigError(f"{field_flag('new_layers_only')}: the leg adds no layers")
    objective.load_state_dict(weights)
    if cfg.new_layers_only:
        for name, param in objective.named_parameters():
            param.requires_grad_(name in new)


def _stage_export(cfg: DemoConfig) -> None:
    from mooer.train.export import export_model
    from mooer.train.objective import build_objective

    train_cfg = _llm_config(cfg)
    objective = build_objective(train_cfg, torch.device("cpu"))
    weights = torch.load(cfg.out / cfg.llm_leg / "final.pt")
    if _depth(weights) != _depth(objective.state_dict()):
        raise ConfigError(_depth_mismatch(f"{cfg.out / cfg.llm_leg / 'final.pt'}", _depth(weights)))
    objective.load_state_dict(weights)
    # stage 2 as its legs record it, not as this (perhaps averaging) invocation's flags say
    recipe = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in (*_LEG_FIELDS, "llm_leg", "llm_init", "llm_average")
    }
    recipe["stage2"] = leg_record(cfg.out / cfg.llm_leg / "final.pt")
    recipe = {"demo_recipe": recipe}
    export_model(objective.eval(), cfg.model_dir, train_cfg, extra=recipe)


# held-out sets scored by the eval stage: (split, the exported model's subfolder for its scores);
# heldout-greeted: the held-out chat questions asked after the assistant's greeting
_EVAL_SETS = (
    ("heldout", "eval"),
    ("heldout-multi", "eval-multi"),
    ("heldout-greeted", "eval-greeted"),
)


def _multi_heldout(cfg: DemoConfig) -> int:
    """How many multi-sentence items the held-out set of several sentences holds."""
    from mooer.train.corpus import MULTI_KINDS

    return max(cfg.n_heldout // 5, len(MULTI_KINDS))  # 120 for the card's 600


def _stage_eval(cfg: DemoConfig) -> None:
    """Scores on the held-out set, on held-out sentences in twos and threes with 150 ms
    pauses (``synth.CLEAN_PAUSE_S``: one segment of continuous speech, recognised whole?) and
    on the held-out chat questions asked after the assistant's greeting."""
    from mooer.train.corpus import multi_sentence
    from mooer.train.evaluate import eval_command
    from mooer.train.synth import HELDOUT_VOICES, synthesize_corpus

    model = cfg.model_dir
    for split, scores in _EVAL_SETS:
        if (model / scores / "summary.json").exists():
            continue
        if split == "heldout-greeted":  # the held-out set's own recordings
            entries = after_greeting(read_manifest(_manifest(cfg, "heldout")))
        else:
            if not _manifest(cfg, split).exists():
                items = multi_sentence("heldout", _multi_heldout(cfg), cfg.seed)
                out = cfg.out / "data" / split
                synthesize_corpus(items, out, HELDOUT_VOICES, cfg.seed, cfg.workers, False)
            entries = read_manifest(_manifest(cfg, split))
        testset = cfg.out / f"{split}_demo_tasks.jsonl"
        write_manifest(demo_tasks(entries), testset)
        eval_command(testset, model=str(model), out=model / scores)


def write_manifest(entries: Sequence[Entry], path: Path) -> Path:
    """Entries back to a jsonl manifest (absolute audio paths)."""
    with path.open("w", encoding="utf-8") as f:
        for e in entries:
            record = {
                "id": e.id,
                "audio": str(Path(e.audio).resolve()),
                "duration": e.duration,
                "lang": e.lang,
                "task": e.task,
                "text": e.text,
                "translation": e.translation,
                "target": e.target,
                "history": [list(turn) for turn in e.history],
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


@dataclass(frozen=True)
class Example:
    """A bundled example recording, spoken by a voice held out of training."""

    name: str  # examples/audio/{name}.wav
    voice: str  # "en-us+m7", "cmn+f4": only HELDOUT_VOICES
    task: str
    text: str
    translation: str = ""
    answer: str = ""  # chat


EXAMPLES = (
    Example("zh_weather", "cmn+f4", "asr", "星期一会下雨", "it will rain on monday"),
    Example("en_directions", "en-us+m7", "asr", "the park is to the north"),
    Example("zh_translate", "cmn+m7", "ast", "我想要一个蓝色的包", "i want a blue bag"),
    Example("en_chat", "en-us+f4", "chat", "what colour is grass", answer="green"),
)


def write_examples(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Speak ``EXAMPLES`` into ``out_dir/{name}.wav`` (clean, 16 kHz), as the corpus does."""
    from mooer.train.corpus import Utterance
    from mooer.train.synth import HELDOUT_VOICES, synthesize_corpus

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for ex in EXAMPLES:
        voices = [v for v in HELDOUT_VOICES if v.name == ex.voice]
        if not voices:
            raise ConfigError(f"example {ex.name}: {ex.voice} is not a held-out voice")
        lang = voices[0].lang
        target = ex.answer or (ex.translation if ex.task == "ast" else ex.text)
        utt = Utterance(ex.name, lang, ex.text, ex.translation, ex.task, target)
        with tempfile.TemporaryDirectory() as tmp:
            synthesize_corpus([utt], tmp, voices, seed, workers=1, augmented=False)
            shutil.copyfile(Path(tmp) / "wavs" / f"{ex.name}.wav", out / f"{ex.name}.wav")
        written.append(out / f"{ex.name}.wav")
    return written


_STAGE_DONE = {
    "data": lambda c: _manifest(c, "heldout").exists(),
    "tokenizer": lambda c: (c.out / "tokenizer" / "tokenizer.json").exists(),
    "features": lambda c: (c.out / "features_heldout.pt").exists(),
    "ctc": lambda c: (c.out / "ctc" / "final" / "paraformer-encoder.pth").exists(),
    "llm": lambda c: (c.out / c.llm_leg / "final.pt").exists(),
    "export": lambda c: (c.model_dir / "adapter_project.pt").exists(),
    "eval": lambda c: all((c.model_dir / s / "summary.json").exists() for _, s in _EVAL_SETS),
}
_STAGE_RUN = {
    "data": _stage_data,
    "tokenizer": _stage_tokenizer,
    "features": _stage_features,
    "ctc": _stage_ctc,
    "llm": _stage_llm,
    "export": _stage_export,
    "eval": _stage_eval,
}


def _claim_work_folder(cfg: DemoConfig) -> None:
    """Record what the work folder's data is made from, or refuse a run that asks for other
    data there: its stages would find the old corpus, features and caches and use them."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    record = cfg.out / "work_folder.json"
    wanted = {key: getattr(cfg, key) for key in _WORK_FOLDER_KEYS}
    if not record.exists():
        record.write_text(json.dumps(wanted, indent=1) + "\n")
        return
    made = read_json_file(record, ConfigError)
    differ = [key for key in _WORK_FOLDER_KEYS if made.get(key) != wanted[key]]
    if differ:
        what = ", ".join(f"{key} {made.get(key)} (asked: {wanted[key]})" for key in differ)
        raise ConfigError(f"{cfg.out} holds data made with {what}; give this run another --out")


def run(cfg: DemoConfig, stages: Sequence[str] = STAGES) -> Path:
    """Run ``stages`` in order, skipping those already done; returns the exported model dir."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}: expected some of {', '.join(STAGES)}")
    _claim_work_folder(cfg)
    if cfg.llm_init and Path(cfg.llm_init).is_dir():
        _seed_work_folder(cfg, Path(cfg.llm_init))
    torch.set_num_threads(cfg.threads)
    for stage in (s for s in STAGES if s in stages):
        if _STAGE_DONE[stage](cfg):
            log.info("stage %s: done before, skipped", stage)
            continue
        started = time.perf_counter()
        log.info("stage %s: started", stage)
        _STAGE_RUN[stage](cfg)
        log.info("stage %s: finished in %.0f s", stage, time.perf_counter() - started)
    return cfg.model_dir


def demo_command(
    cfg: DemoConfig,
    stages: Sequence[str] = STAGES,
    install: Path | None = None,
    write_examples_to: Path | None = None,
) -> int:
    """``mooer train demo``: a demo model from nothing; run whole, one stage-2 leg (about 50 min
    on 2 shared cores; the bundled model took further legs, see docs/demo-model.md)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if write_examples_to is not None:
        for path in write_examples(write_examples_to, cfg.seed):
            print(path)
        return 0
    model = run(cfg, stages)
    if install is not None:
        shutil.copytree(
            model,
            install,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(*(scores for _, scores in _EVAL_SETS)),
        )
    for _, scores in _EVAL_SETS:
        summary = model / scores / "summary.json"
        if summary.exists():
            print(json.dumps(json.loads(summary.read_text(encoding="utf-8")), indent=2))
    return 0
