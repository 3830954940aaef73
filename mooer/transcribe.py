"""Offline transcription and translation of files or arrays: tasks, long audio, batching, input lists.

Each input is cut into segments, encoded, and decoded for its task in batches across inputs; the
task recipe (which prompts, how answers are read) is ``mooer.tasks``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mooer.audio import SAMPLE_RATE, load_audio
from mooer.errors import ConfigError, MooerError
from mooer.llm.decoding import OFFLINE, DecodingOptions
from mooer.model import SpeechLLM
from mooer.tasks import Texts, check_task, decode

MAX_SEGMENT_S = 30.0  # longer audio is cut into segments of at most this length
MIN_CUT_S = 20.0  # ... at the quietest 100 ms between 20 s and 30 s
_WINDOW = SAMPLE_RATE // 10  # 100 ms energy window


@dataclass
class Result:
    """What one input gives. ``text`` is the task's main output (transcript, or translation for ast)."""

    audio: str
    text: str
    translation: str | None = None
    duration: float = 0.0
    segments: list[tuple[float, float]] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        return json.dumps(data, ensure_ascii=False)


def split_long(samples: np.ndarray, max_s: float = MAX_SEGMENT_S) -> list[tuple[int, int]]:
    """Sample ranges covering ``samples``, each at most ``max_s`` long, cut where it is quietest."""
    max_len = int(max_s * SAMPLE_RATE)
    min_len = int(min(MIN_CUT_S, max_s * 2 / 3) * SAMPLE_RATE)
    ranges, start, n = [], 0, len(samples)
    while n - start > max_len:
        window = samples[start + min_len : start + max_len]
        frames = len(window) // _WINDOW
        energy = (window[: frames * _WINDOW].reshape(frames, _WINDOW) ** 2).sum(axis=1)
        cut = start + min_len + int(np.argmin(energy)) * _WINDOW + _WINDOW // 2
        ranges.append((start, cut))
        start = cut
    ranges.append((start, n))
    return ranges


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


def transcribe(
    model: SpeechLLM,
    inputs: Sequence[np.ndarray | str | Path],
    task: str = "asr",
    options: DecodingOptions = OFFLINE,
    batch_size: int = 4,
    names: Sequence[str] | None = None,
    progress: bool = False,
    keep_going: bool = False,
) -> list[Result]:
    """Transcribe (or translate) many inputs: 16 kHz float32 arrays or audio file paths.

    Long inputs are split into segments of at most 30 s whose answers are joined. With
    ``keep_going`` an unreadable input gives a ``Result`` with ``error`` set instead of raising.
    """
    check_task(model, task)
    names = (
        list(names)
        if names is not None
        else [x if isinstance(x, (str, Path)) else f"array{i}" for i, x in enumerate(inputs)]
    )

    results: list[Result] = []
    # (result index, samples) for every segment, decoded in batches across inputs
    pieces: list[tuple[int, np.ndarray]] = []
    for name, item in zip(names, inputs):
        try:
            samples = load_audio(item) if isinstance(item, (str, Path)) else item
            samples = np.asarray(samples, dtype=np.float32)
            if samples.ndim != 1:
                raise ConfigError(
                    f"{name}: arrays must be mono 16 kHz (N,), got shape {samples.shape}"
                )
        except MooerError as exc:
            if not keep_going:
                raise
            results.append(Result(audio=str(name), text="", error=str(exc)))
            continue
        ranges = split_long(samples)
        results.append(
            Result(
                audio=str(name),
                text="",
                duration=round(len(samples) / SAMPLE_RATE, 3),
                segments=[
                    (round(a / SAMPLE_RATE, 3), round(b / SAMPLE_RATE, 3)) for a, b in ranges
                ],
            )
        )
        pieces.extend((len(results) - 1, samples[a:b]) for a, b in ranges)

    decoded: dict[int, list[Texts]] = {}
    bar = tqdm(total=len(pieces), unit="seg", disable=not progress, file=sys.stderr)
    for batch in _batches(pieces, batch_size):
        embeds, lengths = model.embed([w for _, w in batch])  # (B, Ta, H), (B,)
        for (idx, _), texts in zip(batch, decode(model, embeds, lengths, task, options)):
            decoded.setdefault(idx, []).append(texts)
        bar.update(len(batch))
    bar.close()

    for idx, parts in decoded.items():
        texts = Texts.join(parts)
        results[idx].text = (texts.translation if task == "ast" else texts.transcript) or ""
        results[idx].translation = texts.translation
    return results
