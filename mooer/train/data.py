"""Training data: manifests and WeNet-style tar shards -> filtered, shuffled, frame-budgeted batches.

Every DataLoader worker runs the whole pipeline on its share of the data, so audio decoding and
features happen beside the training process, which only moves ready tensors to the device::

    entries (manifest lines, tar members) -> split by rank and worker
      -> read audio (a missing or corrupt file is warned about, counted and skipped)
      -> length filter -> shuffle -> batches of at most max_frames_in_batch padded frames
      -> Frontend features -> Batch

Manifest: a ``.jsonl`` file, one utterance per line: ``id``, ``audio`` (a path relative to the
manifest), optional ``start``/``end`` (seconds within the file), ``duration``, ``lang``, ``task``
(asr | ast | mtl | chat | chat_text | opening, default asr), ``text`` (what is spoken),
``translation``, ``target`` (the LLM's answer; derived from text/translation for asr, ast and
mtl) and ``history`` (chat: prior ``[question, answer]`` turns; a ``null`` question: the
assistant spoke first, its greeting with no user message before it; a ``null`` answer: a user
message not answered, such as a client's context sent as one message). A ``chat_text`` line has no
``audio``: its question ``text`` stands where the audio would be, so text dialogues keep up what
the LLM knows while it learns to listen. An ``opening`` line has no audio: the assistant speaks
first, its ``target`` answering the system turn (and ``history``) alone, or with a ``text``, the
reply's own instructions (a system message just before it). Manifests are permuted as a whole every epoch.

Shards: a ``.tar`` holding ``{key}.wav`` (or .flac/.mp3/.ogg) + ``{key}.txt`` members, optionally
``{key}.json`` with the manifest fields above; data.train names a shard list file (one tar per
line, relative to the list) or a tar itself. Shards are read in streaming order and shuffled by
a buffer of ``shuffle_buffer`` utterances.

Training streams repeat forever (each epoch reshuffled from ``seed`` and the epoch number); the
trainer decides when to stop. Batch order depends only on the seed, the worker count and the data,
so a resumed run can skip the batches it has already used without computing their features.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mooer.asr.frontend import Cmvn, Frontend, fbank, lfr, num_frames
from mooer.audio import FEATURE_DIM, FRAME_MS, SAMPLE_RATE, load_audio
from mooer.errors import AudioError, ConfigError, check_number
from mooer.train.config import DataConfig
from mooer.train.manifest import iter_records

log = logging.getLogger(__name__)

TASKS = ("asr", "ast", "mtl", "chat", "chat_text", "opening")
TEXT_TASKS = ("chat_text", "opening")  # items without audio
TEXT_ITEM_FRAMES = 40  # batching cost of an item without audio, in frames
AUDIO_SUFFIXES = ("wav", "flac", "mp3", "ogg", "opus")
MANIFEST_SUFFIXES = (".jsonl", ".json")


@dataclass
class Entry:
    """One utterance before its audio is read."""

    id: str
    audio: str  # a file path, or "tar:member" for audio whose bytes are in ``data``
    task: str = "asr"
    text: str = ""  # what is spoken (also the CTC target)
    translation: str = ""
    target: str = ""  # the LLM's answer
    history: list[tuple[str | None, str | None]] = field(default_factory=list)
    lang: str = ""
    duration: float | None = None  # seconds, when the manifest says
    start: float = 0.0
    end: float | None = None
    data: bytes | None = None


@dataclass
class Batch:
    """A padded batch; ``feats`` or (for a frozen, cached encoder) ``encoder_out`` is set."""

    ids: list[str]
    tasks: list[str]
    texts: list[str]
    targets: list[str]
    histories: list[list[tuple[str | None, str | None]]]
    feats: torch.Tensor | None  # (B, T, 560) normalised LFR features, zero-padded
    feat_lengths: torch.Tensor  # (B,) valid frames
    audio_seconds: float = 0.0
    epoch: int = 0
    skipped: int = 0  # bad entries this worker skipped since its previous batch
    filtered: int = 0  # entries outside the length limits, likewise
    encoder_out: torch.Tensor | None = None  # (B, T, D) precomputed encoder outputs
    encoder_lengths: torch.Tensor | None = None  # (B,)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            feats=move(self.feats),
            feat_lengths=move(self.feat_lengths),
            encoder_out=move(self.encoder_out),
            encoder_lengths=move(self.encoder_lengths),
        )

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return replace(
            self,
            feats=pin(self.feats),
            feat_lengths=pin(self.feat_lengths),
            encoder_out=pin(self.encoder_out),
            encoder_lengths=pin(self.encoder_lengths),
        )


# ---------------------------------------------------------------------------------------------
# Reading entries


def default_target(task: str, text: str, translation: str) -> str:
    """The LLM's answer when a manifest gives none: asr text, ast translation, mtl both."""
    if task == "asr":
        return text
    if task == "ast":
        return translation
    if task == "mtl":
        return f"{text}\n{translation}"
    return ""


def parse_entry(record: Any, base: Path, where: str) -> Entry:
    """A manifest record (parsed JSON) -> ``Entry``; ``where`` names it in errors (file:line)."""
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    task = record.get("task", "asr")
    if task not in TASKS:
        raise ConfigError(f"{where}: task {task!r} is not one of {', '.join(TASKS)}")
    audio = record.get("audio", "")
    if task == "chat_text":
        if audio or not record.get("text"):
            raise ConfigError(f"{where}: a chat_text item has a 'text' question and no 'audio'")
    elif task == "opening":
        if audio:
            raise ConfigError(f"{where}: an opening item has no 'audio'")
    elif not isinstance(audio, str) or not audio:
        raise ConfigError(f"{where}: missing field 'audio' (a path relative to the manifest)")
    strings = {}
    for name in ("id", "text", "translation", "target", "lang"):
        value = record.get(name, "")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: field {name!r} must be a string, got {value!r}")
        strings[name] = value
    target = strings["target"] or default_target(task, strings["text"], strings["translation"])
    if not target and task != "asr":  # an empty transcript (silence) is a valid asr answer
        raise ConfigError(f"{where}: task {task!r} needs a non-empty 'target' (the answer)")
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, (list, tuple))
        and len(turn) == 2
        and all(isinstance(s, (str, type(None))) for s in turn)
        and any(s is not None for s in turn)
        for turn in history
    ):
        raise ConfigError(
            f"{where}: 'history' must be a list of [question, answer] strings (question null: "
            "the assistant spoke first; answer null: a user message not answered)"
        )
    times = {}
    for name in ("duration", "start", "end"):
        value = record.get(name)
        if value is not None:
            check_number(value, f"{where}: {name}")  # seconds
        times[name] = value
    return Entry(
        id=strings["id"] or (Path(audio).stem if audio else where),
        audio=audio if not audio or audio.startswith("tar:") else str(base / audio),
        task=task,
        text=strings["text"],
        translation=strings["translation"],
        target=target,
        history=[(q, a) for q, a in history],
        lang=strings["lang"],
        duration=times["duration"],
        start=float(times["start"] or 0.0),
        end=None if times["end"] is None else float(times["end"]),
    )


def read_manifest(path: str | Path) -> list[Entry]:
    """All entries of a jsonl manifest; a malformed line raises ``ConfigError`` naming it."""
    base = Path(path).parent
    return [parse_entry(record, base, where) for record, where in iter_records(path)]


def read_shard_list(path: str | Path) -> list[Path]:
    """Tar paths of a shard list (one per line, relative to the list); a ``.tar`` is itself."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"shard list not found: {path}")
    if path.suffix == ".tar" or path.name.endswith((".tar.gz", ".tgz")):
        return [path]
    lines = path.read_text(encoding="utf-8").split("\n")
    return [path.parent / line.strip() for line in lines if line.strip()]


def iter_tar(path: Path) -> Iterator[Entry]:
    """Entries of one WeNet shard, in member order; a corrupt tar ends early with a warning."""
    group: dict[str, bytes] = {}
    key = None
    try:
        with tarfile.open(path, mode="r|*") as tar:  # streaming: tars may sit on slow storage
            for member in tar:
                if not member.isfile():
                    continue
                prefix, _, suffix = member.name.rpartition(".")
                if key is not None and prefix != key:
                    yield from _tar_entry(path, key, group)
                    group = {}
                key = prefix
                handle = tar.extractfile(member)
                group[suffix.lower()] = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError) as err:
        log.warning("shard %s is unreadable from here on: %s", path, err)
    if key is not None:
        yield from _tar_entry(path, key, group)


def _tar_entry(path: Path, key: str, group: dict[str, bytes]) -> Iterator[Entry]:
    audio = next((s for s in AUDIO_SUFFIXES if s in group), None)
    where = f"{path}:{key}"
    if audio is None:
        log.warning("skipping %s: no audio member (.%s)", where, ", .".join(AUDIO_SUFFIXES))
        return
    record: dict[str, Any] = {}
    try:
        if "json" in group:
            record = json.loads(group["json"].decode("utf-8"))
        if "txt" in group:
            record.setdefault("text", group["txt"].decode("utf-8").strip())
        record.setdefault("id", Path(key).name)
        record["audio"] = f"tar:{key}.{audio}"
        entry = parse_entry(record, path.parent, where)
    except (ConfigError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("skipping %s: %s", where, err)
        return
    entry.data = group[audio]
    yield entry


def is_manifest(source: str | Path) -> bool:
    return str(source).endswith(MANIFEST_SUFFIXES)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class _Utt:
    entry: Entry
    frames: int  # LFR (= encoder) frames
    seconds: float
    samples: np.ndarray | None = None  # (N,) float32 16 kHz
    hidden: torch.Tensor | None = None  # (frames, D) cached encoder output


@dataclass
class _Counters:
    skipped: int = 0
    filtered: int = 0

    def take(self) -> tuple[int, int]:
        counts = (self.skipped, self.filtered)
        self.skipped = self.filtered = 0
        return counts


def read_audio(entry: Entry) -> np.ndarray:
    """The entry's samples (its start..end segment); ``AudioError`` for missing or corrupt audio."""
    samples = load_audio(entry.data if entry.data is not None else entry.audio)
    if entry.start or entry.end is not None:
        first = int(round(entry.start * SAMPLE_RATE))
        last = len(samples) if entry.end is None else int(round(entry.end * SAMPLE_RATE))
        samples = samples[first:last]
        if len(samples) == 0:
            raise AudioError(
                f"{entry.audio}: segment {entry.start}..{entry.end} s is outside the audio"
            )
    return samples


class SpeechDataset(IterableDataset):
    """Batches of one rank; under a DataLoader each worker makes every n-th batch.

    ``train`` shuffles and repeats forever; otherwise one pass in manifest order.
    ``start_batch`` (of this rank's batch sequence) skips batches already trained on.
    """

    def __init__(
        self,
        sources: Sequence[str | Path],
        frontend: Frontend,
        cfg: DataConfig,
        *,
        train: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        super().__init__()
        if not sources:
            raise ConfigError("data: no manifest or shard list given")
        self.entries: list[Entry] = []
        self.shards: list[Path] = []
        for source in sources:
            if is_manifest(source):
                self.entries.extend(read_manifest(source))
            else:
                self.shards.extend(read_shard_list(source))
        if cfg.tasks:
            self.entries = [e for e in self.entries if e.task in cfg.tasks]
        self.frontend = frontend
        self.cfg = cfg
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batches from its workers in turn, starting with worker 0, so batch
        # i of a stream is made by the worker playing role i % n. A stream resumed at batch k
        # hands worker w the role (w + k) % n and lets it skip that role's first batches.
        role = (worker + self.start_batch) % workers
        shard, num_shards = self.rank * workers + role, self.world_size * workers
        skip = max(0, math.ceil((self.start_batch - role) / workers))
        counters = _Counters()
        for epoch in itertools.count() if self.train else (0,):
            rng = np.random.default_rng([self.seed, epoch, shard])
            utts = self._read(self._epoch_entries(epoch, shard, num_shards), counters)
            made = 0
            for group in self._batches(utts, rng):
                made += 1
                if skip:
                    skip -= 1
                    counters.take()  # counted in the run that trained on this batch
                    continue
                yield self._collate(group, epoch, counters)
            if made == 0:
                if self.train:
                    log.warning("data shard %d/%d has no usable utterances", shard, num_shards)
                return

    def _epoch_entries(self, epoch: int, shard: int, num_shards: int) -> Iterator[Entry]:
        order = np.arange(len(self.entries))
        shards = list(self.shards)
        if self.train:
            shared = np.random.default_rng([self.seed, epoch])  # the same on every worker
            order = shared.permutation(len(self.entries))
            shards = [shards[i] for i in shared.permutation(len(shards))]
        for i in order[shard::num_shards]:
            yield self.entries[i]
        if len(shards) >= num_shards:  # whole tars per worker
            for path in shards[shard::num_shards]:
                yield from self._keep_tasks(iter_tar(path))
        else:  # fewer tars than workers: every worker reads all, keeps every n-th member
            members = itertools.chain.from_iterable(iter_tar(p) for p in shards)
            yield from itertools.islice(self._keep_tasks(members), shard, None, num_shards)

    def _keep_tasks(self, entries: Iterable[Entry]) -> Iterator[Entry]:
        return (e for e in entries if not self.cfg.tasks or e.task in self.cfg.tasks)

    def _read(self, entries: Iterable[Entry], counters: _Counters) -> Iterator[_Utt]:
        lo, hi = self.cfg.min_duration, self.cfg.max_duration
        for entry in entries:
            if entry.task in TEXT_TASKS:
                yield _Utt(entry, 0, 0.0)
                continue
            if entry.duration is not None and not lo <= entry.duration <= hi:
                counters.filtered += 1
                continue
            try:
                samples = read_audio(entry)
            except AudioError as err:
                counters.skipped += 1
                log.warning("skipping utterance %s: %s", entry.id, err)
                continue
            seconds = len(samples) / SAMPLE_RATE
            frames = num_frames(len(samples))
            if not lo <= seconds <= hi or frames == 0:
                counters.filtered += 1
                continue
            yield _Utt(replace(entry, data=None), frames, seconds, samples=samples)

    def _batches(self, utts: Iterator[_Utt], rng: np.random.Generator) -> Iterator[list[_Utt]]:
        if self.train and self.shards and self.cfg.shuffle_buffer > 1:
            utts = shuffle_buffer(utts, self.cfg.shuffle_buffer, rng)
        return frame_batches(utts, self.cfg)

    def _collate(self, group: list[_Utt], epoch: int, counters: _Counters) -> Batch:
        spoken = [b for b, u in enumerate(group) if u.frames]  # not the text-only items
        feats, lengths = (
            self.frontend.batch([group[b].samples for b in spoken])  # (B', T, 560), (B',)
            if spoken
            else (torch.zeros(0, 0, FEATURE_DIM), torch.zeros(0, dtype=torch.long))
        )
        if len(spoken) < len(group):  # (B', T, 560) -> (B, T, 560), text-only rows empty
            rows = torch.tensor(spoken, dtype=torch.long)
            feats, lengths = (
                place_rows(feats, rows, len(group)),
                place_rows(lengths, rows, len(group)),
            )
        skipped, filtered = counters.take()
        return _batch(group, epoch, feats=feats, feat_lengths=lengths, skipped=skipped,
                      filtered=filtered)  # fmt: skip


def place_rows(values: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """(B', ...) values of some rows of a batch -> (B, ...) with zeros in the other rows."""
    return values.new_zeros(batch, *values.shape[1:]).index_copy(0, rows, values)


def frame_batches(utts: Iterable[_Utt], cfg: DataConfig) -> Iterator[list[_Utt]]:
    """Groups whose padded size (longest x count) fits ``max_frames_in_batch``."""
    group: list[_Utt] = []
    longest = 0
    for utt in utts:
        wider = max(longest, utt.frames or TEXT_ITEM_FRAMES)
        if group and (
            wider * (len(group) + 1) > cfg.max_frames_in_batch
            or len(group) >= cfg.max_utts_in_batch
        ):
            yield group
            group, wider = [], utt.frames or TEXT_ITEM_FRAMES
        group.append(utt)
        longest = wider
    if group:
        yield group


def _batch(group: list[_Utt], epoch: int, **tensors: Any) -> Batch:
    return Batch(
        ids=[u.entry.id for u in group],
        tasks=[u.entry.task for u in group],
        texts=[u.entry.text for u in group],
        targets=[u.entry.target for u in group],
        histories=[list(u.entry.history) for u in group],
        audio_seconds=sum(u.seconds for u in group),
        epoch=epoch,
        **tensors,
    )


# ---------------------------------------------------------------------------------------------
# Cached encoder outputs


def encode_corpus(
    batches: Iterable[Batch], encode: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]
) -> list[_Utt]:
    """Run a frozen encoder once over a pass of ``batches``; keep each output (T, D) in fp16."""
    utts = []
    for batch in batches:
        hidden, lengths = encode(batch)  # (B, T, D), (B,)
        for b, n in enumerate(lengths.tolist()):
            entry = Entry(
                id=batch.ids[b],
                audio="",
                task=batch.tasks[b],
                text=batch.texts[b],
                target=batch.targets[b],
                history=batch.histories[b],
            )
            seconds = n * FRAME_MS / 1000  # to within one 60 ms frame
            utts.append(_Utt(entry, n, seconds, hidden=hidden[b, :n].detach().half().cpu()))
    return utts


class EncodedDataset(IterableDataset):
    """Cached encoder outputs, reshuffled and batched every epoch like ``SpeechDataset``.

    For small recipes with a frozen encoder (memory: T x D fp16 per utterance). Runs in the
    training process; ``start_batch`` skips batches already trained on.
    """

    def __init__(
        self, utts: Sequence[_Utt], cfg: DataConfig, *, seed: int = 0, start_batch: int = 0
    ) -> None:
        super().__init__()
        if not utts:
            raise ConfigError("data.cache_encoder: no utterances to train on")
        self.utts = list(utts)
        self.cfg = cfg
        self.seed = seed
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[Batch]:
        skip = self.start_batch
        for epoch in itertools.count():
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.utts))
            for group in frame_batches((self.utts[i] for i in order), self.cfg):
                if skip:
                    skip -= 1
                    continue
                hidden = [u.hidden.float() for u in group]
                lengths = torch.tensor([u.frames for u in group])
                yield _batch(
                    group,
                    epoch,
                    feats=None,
                    feat_lengths=lengths,
                    encoder_out=torch.nn.utils.rnn.pad_sequence(hidden, batch_first=True),
                    encoder_lengths=lengths,
                )  # encoder_out (B, T, D)


def shuffle_buffer(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Yield ``items`` in a random order drawn from a window of ``size`` (streaming shuffle)."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = int(rng.integers(size))
        buffer[i], item = item, buffer[i]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def _as_is(batch: Batch) -> Batch:
    return batch


def make_loader(dataset: IterableDataset, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader passing the dataset's ready batches through (features made in its workers)."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_is,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
        # Its own generator: seeding workers must not draw from the global RNG, or a resumed
        # run's dropout masks would differ from the unbroken run's.
        generator=torch.Generator(),
    )


def estimate_cmvn(sources: Sequence[str | Path], max_utts: int = 500, seed: int = 0) -> Cmvn:
    """CMVN statistics (shift = -mean, rescale = 1/std of LFR features) from a sample of the data.

    For models trained from scratch, which have no released ``am.mvn`` to use.
    """
    cfg = DataConfig(train=[str(s) for s in sources], shuffle_buffer=1, max_utts_in_batch=1)
    dataset = SpeechDataset(sources, Frontend(Cmvn.identity()), cfg, train=False, seed=seed)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(dataset.entries))[:max_utts]
    entries = itertools.chain(
        (dataset.entries[i] for i in chosen),
        itertools.chain.from_iterable(iter_tar(p) for p in dataset.shards),
    )
    total = np.zeros(Cmvn.identity().dim, np.float64)
    squares = np.zeros_like(total)
    count = 0
    spoken = (u for u in dataset._read(entries, _Counters()) if u.frames)  # not TEXT_TASKS
    for utt in itertools.islice(spoken, max_utts):
        feats = lfr(fbank(utt.samples)).astype(np.float64)  # (T, 560)
        total += feats.sum(0)
        squares += (feats**2).sum(0)
        count += len(feats)
    if count == 0:
        raise ConfigError(f"no readable audio in {', '.join(map(str, sources))} to estimate CMVN")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return Cmvn(shift=-mean, rescale=1.0 / np.maximum(std, 1e-2))
