"""Offline transcription and translation of files or arrays: tasks, long audio, batching, input lists.

Audio is cut into utterances by ``mooer.asr.segmenter`` (voice activity, then a length limit),
the segmenter the server uses for uploads, and each utterance is encoded once and decoded alone
for its task (``mooer.tasks``: which prompts, how answers are read), in batches across inputs:
the same audio gives the same segments and text in every path, and silence gives none.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor
from tqdm import tqdm

from mooer.asr.segmenter import cut_blocks, split_long
from mooer.asr.vad import VadConfig
from mooer.audio import SAMPLE_RATE, AudioStream, AudioTooLong, load_audio
from mooer.errors import ConfigError, MooerError, check_number
from mooer.llm.backend import Waiting
from mooer.llm.decoding import OFFLINE, DecodingOptions
from mooer.model import SpeechLLM
from mooer.tasks import Texts, check_task, decode, decode_waiting
from mooer.text import join_texts

# How recordings are cut: the live sessions' turn detection, the endpoint wait shrinking to
# 90 ms over an utterance's first second (sentences joined by pauses of 150 ms are cut one by
# one; docs/server.md has the figures on a 48-sentence file) and up to 0.5 s of the silence
# around speech kept: offline, context costs no latency, and the demo model misreads some
# words without it ("the park" in examples/audio/en_directions.wav), but of silence before
# the first sound no more than 250 ms, the most it heard in training (0.5 s of it cost 3.4 points of
# the words right in bench_long's seed 2). Only quiet windows make a pause that ends an utterance,
# and the 3 s pause cut takes pauses of 96 ms or more: silero hears an s as silence for up to
# 190 ms, and words are up to 70 ms apart.
SEGMENTER = VadConfig(
    speech_pad_ms=500,
    quiet_lead_ms=250,
    short_silence_ms=90,
    shrink_s=1.0,
    quiet_pauses=True,
    min_pause_ms=96,
)


@dataclass
class Result:
    """What one input gives. ``text`` is the task's main output (transcript, or translation for ast).

    ``segments``: each utterance's (start, end) in seconds, and ``segment_texts`` its own text
    (empty lists where no speech was found); ``duration``: seconds of audio decoded.
    """

    audio: str
    text: str
    translation: str | None = None
    duration: float = 0.0
    segments: list[tuple[float, float]] = field(default_factory=list)
    segment_texts: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, ensure_ascii=False)


def read_inputs(items: Iterable[str]) -> list[tuple[str, str]]:
    """Expand arguments into ``(name, path)`` pairs: audio files, Kaldi ``wav.scp`` or jsonl lists.

    A ``.scp`` file holds ``key path`` lines; a ``.jsonl`` file holds objects with ``audio`` (or
    ``path``/``wav``) and optional ``id``/``key``. Relative paths in lists are taken from the list's folder.
    """
    pairs: list[tuple[str, str]] = []
    for item in items:
        path = Path(item)
        if path.suffix == ".scp":
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                parts = line.split(maxsplit=1)
                if len(parts) != 2:
                    raise ConfigError(f"{path}:{lineno}: expected 'key path', got {line!r}")
                pairs.append((parts[0], str(_relative_to(path, parts[1].strip()))))
        elif path.suffix == ".jsonl":
            for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    audio = next(obj[k] for k in ("audio", "path", "wav") if k in obj)
                except (json.JSONDecodeError, StopIteration, TypeError) as exc:
                    raise ConfigError(
                        f"{path}:{lineno}: expected a JSON object with an 'audio' field"
                    ) from exc
                name = str(obj.get("id", obj.get("key", audio)))
                pairs.append((name, str(_relative_to(path, audio))))
        else:
            pairs.append((item, item))
    return pairs


def _relative_to(listing: Path, entry: str) -> Path:
    p = Path(entry)
    return p if p.is_absolute() else listing.parent / p


def _batches(seq: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _seconds(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)


def settle(result: Result, task: str, parts: Sequence[Texts]) -> Result:
    """``result`` with its utterances' texts (in order) as its texts."""
    result.segment_texts = [_main_text(task, p) for p in parts]
    result.text = join_texts(result.segment_texts)
    if task != "asr":
        result.translation = join_texts(p.translation or "" for p in parts)
    return result


def _main_text(task: str, texts: Texts) -> str:
    return (texts.translation if task == "ast" else texts.transcript) or ""


def utterances(
    result: Result,
    item: np.ndarray | str | Path | AudioStream,
    vad: VadConfig | None,
    max_seconds: float | None = None,
) -> Iterator[list[np.ndarray]]:
    """One input cut into utterances, a block at a time: yields the audio of the utterances
    each block of audio decoded ended, then those the end ends, and keeps ``result``'s
    ``duration`` and ``segments`` up to date (``result.audio`` names the input in errors).

    ``vad=None`` takes the input as one utterance already cut (cut at 30 s if longer).
    ``AudioTooLong`` past ``max_seconds`` of audio, found while decoding; ``AudioError`` or
    ``ConfigError`` for audio that cannot be used.
    """
    name = result.audio
    if isinstance(item, AudioStream):
        stream: AudioStream | None = item
    elif vad is not None and isinstance(item, (str, Path)):
        stream = AudioStream(item, max_seconds)
    else:
        stream = None
        samples = _as_mono(item, name, max_seconds)
        result.duration = _seconds(samples.size)
        if vad is None:
            ranges = split_long(samples)
            result.segments = [(_seconds(a), _seconds(b)) for a, b in ranges]
            yield [samples[a:b] for a, b in ranges]
            return
    blocks = [samples] if stream is None else stream.blocks()
    try:
        for ended in cut_blocks(blocks, vad or SEGMENTER):
            if stream is not None:
                result.duration = _seconds(stream.samples)
            result.segments += [(_seconds(u.start), _seconds(u.end)) for u in ended]
            yield [u.audio for u in ended]
    finally:
        if stream is not None:
            stream.close()


def _as_mono(item: np.ndarray | str | Path, name: str, max_seconds: float | None) -> np.ndarray:
    samples = load_audio(item, max_seconds) if isinstance(item, (str, Path)) else item
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ConfigError(f"{name}: arrays must be mono 16 kHz (N,), got shape {samples.shape}")
    if max_seconds is not None and samples.size > max_seconds * SAMPLE_RATE:
        raise AudioTooLong(name, max_seconds)
    return samples


def transcribe(
    model: SpeechLLM,
    inputs: Sequence[np.ndarray | str | Path],
    task: str = "asr",
    options: DecodingOptions = OFFLINE,
    batch_size: int = 4,
    names: Sequence[str] | None = None,
    progress: bool = False,
    keep_going: bool = False,
    vad: VadConfig | None = SEGMENTER,
    max_seconds: float | None = None,
) -> list[Result]:
    """Transcribe (or translate) many inputs: 16 kHz float32 arrays or audio file paths.

    Each input is cut into utterances by voice activity (``vad``; see ``utterances``), the
    utterances of all inputs are decoded in batches, and each input's texts are joined. An
    input without speech gives empty text and no segments. Files are decoded a block at a
    time and refused (``AudioTooLong``) past ``max_seconds`` of audio. With ``keep_going`` an
    unusable input gives a ``Result`` with ``error`` set instead of raising.
    """
    check_task(model, task)
    if max_seconds is not None:
        check_number(max_seconds, "max_seconds", low=1e-3)
    names = (
        list(names)
        if names is not None
        else [x if isinstance(x, (str, Path)) else f"array{i}" for i, x in enumerate(inputs)]
    )
    results: list[Result] = []
    # (result index, samples) for every utterance, decoded in batches across inputs
    pieces: list[tuple[int, np.ndarray]] = []
    for name, item in zip(names, inputs):
        found: list[np.ndarray] = []
        result = Result(audio=str(name), text="")
        try:
            for ended in utterances(result, item, vad, max_seconds):
                found += ended
        except MooerError as exc:
            if not keep_going:
                raise
            results.append(Result(audio=str(name), text="", error=str(exc)))
            continue
        results.append(result)
        pieces += [(len(results) - 1, audio) for audio in found]

    decoded: dict[int, list[Texts]] = {}
    bar = tqdm(total=len(pieces), unit="seg", disable=not progress, file=sys.stderr)
    for batch in _batches(pieces, batch_size):
        embeds, lengths = model.embed([w for _, w in batch])  # (B, Ta, H), (B,)
        for (idx, _), texts in zip(batch, decode(model, embeds, lengths, task, options)):
            decoded.setdefault(idx, []).append(texts)
        bar.update(len(batch))
    bar.close()
    for idx, result in enumerate(results):
        if result.error is None:
            settle(result, task, decoded.get(idx, []))
    return results


# Work that encodes waveforms: (B, Ta, H) embeddings and (B,) lengths (``Engine.embed``)
Embed = Callable[[Sequence[np.ndarray]], Waiting[tuple[Tensor, Tensor]]]


def transcribe_steps(
    model: SpeechLLM,
    stream: AudioStream,
    task: str,
    options: DecodingOptions,
    embed: Embed,
    vad: VadConfig = SEGMENTER,
) -> Waiting[Result]:
    """Engine work: ``transcribe`` of one file in bounded steps, each one block of decoding and
    voice activity or one utterance's decode, so a long file never holds up other clients
    for long; an encode in the engine's batch (``embed``) or a decode on a batching LLM backend (vLLM) is yielded as the future to wait for.
    Closing the generator stops the work and closes the file."""
    check_task(model, task)
    parts: list[Texts] = []
    result = Result(audio=stream.name, text="")
    for ended in utterances(result, stream, vad):
        for audio in ended:
            yield
            embeds, lengths = yield from embed([audio])  # (1, Ta, H), (1,)
            parts += yield from decode_waiting(model, embeds, lengths, task, options)
        yield
    return settle(result, task, parts)
