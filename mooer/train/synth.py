"""Speech for the template corpus: espeak-ng voices -> 16 kHz PCM16 wavs + ``manifest.jsonl``.

Voice variety matters more than steps for a model that must generalise to a new voice, so
training audio mixes 9 variants per language with per-utterance jitter of rate and pitch, a
little leading/trailing silence, and white or pink noise at a random SNR. Held-out voices use
variants that training never hears.

Every random choice for an utterance comes from a generator seeded by (seed, utterance id), so
the corpus is the same whatever the worker count or order (up to espeak-ng's own small
call-to-call variation). espeak-ng is one global engine per process, hence a process pool.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
import wave
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mooer.audio import SAMPLE_RATE, resample
from mooer.errors import AudioError, ConfigError
from mooer.train.corpus import Utterance, build_corpus
from mooer.train.manifest import iter_records
from mooer.tts import espeak
from mooer.tts.backend import LANGUAGE_VOICES, float_to_pcm16

MANIFEST_FIELDS = (
    "id",
    "audio",
    "duration",
    "lang",
    "task",
    "text",
    "translation",
    "target",
    "history",
)
RATE_JITTER = 0.15  # training rates vary by up to +-15 % around the voice's own
PITCH_JITTER = 10  # and pitch by up to +-10 on espeak-ng's 0..100 scale
MAX_PAD_S = 0.25  # silence added before and after speech, at most, in seconds
_CHUNK = 64  # utterances per task sent to a worker process
# between the sentences of a multi-sentence item (``Utterance.parts``): a speaker who goes on
# (100 ms) to one who stops at a full stop (700 ms), what a segmenter may hand over as one
PAUSE_RANGE_S = (0.1, 0.7)
CLEAN_PAUSE_S = 0.15  # and in clean (held-out) speech: continuous speech, as issue 13 measures
AUDIBLE = 1e-3  # sample magnitude (-60 dBFS) above which a clip's sound begins and ends


@dataclass(frozen=True)
class VoiceSpec:
    """One espeak-ng speaker: a language voice, a variant, a speaking rate and a pitch."""

    voice: str  # espeak-ng language voice: "en-us", "cmn"
    variant: str | None = None  # "m1".."m8", "f1".."f5"
    rate: int = 175  # words per minute
    pitch: int = 50  # 0..100

    @property
    def lang(self) -> str:
        """The corpus language this voice speaks: "zh" for Mandarin (cmn), else "en"."""
        return "zh" if self.voice == LANGUAGE_VOICES["zh"] else "en"

    @property
    def name(self) -> str:
        return self.voice + (f"+{self.variant}" if self.variant else "")


def _voices(variants: str, rates: Sequence[int], pitches: Sequence[int]) -> tuple[VoiceSpec, ...]:
    specs = []
    for lang_voice in ("en-us", "cmn"):
        for variant, rate, pitch in zip(variants.split(), rates, pitches):
            specs.append(VoiceSpec(lang_voice, variant, rate, pitch))
    return tuple(specs)


# 9 variants per language, spread over rates and pitches; m7, m8, f4 and f5 are never trained.
TRAIN_VOICES = _voices(
    "m1 m2 m3 m4 m5 m6 f1 f2 f3",
    rates=(165, 180, 150, 195, 170, 160, 185, 155, 175),
    pitches=(50, 40, 55, 45, 60, 35, 50, 60, 45),
)
HELDOUT_VOICES = _voices("m7 f4", rates=(170, 180), pitches=(50, 50))


def augment(
    samples: np.ndarray,
    rng: np.random.Generator,
    snr_db_range: tuple[float, float] = (10, 40),
    gain_db_range: tuple[float, float] = (-6, 6),
) -> np.ndarray:
    """(N,) float audio -> (N,) float32 with white or pink noise at a random SNR and a random
    gain, scaled down (not clipped) if the result would exceed full scale."""
    x = np.asarray(samples)
    if x.ndim != 1 or x.size == 0 or x.dtype.kind != "f":
        raise AudioError(f"augment needs non-empty 1-D float samples, got {x.dtype} {x.shape}")
    if not np.isfinite(x).all():
        raise AudioError("augment got NaN or infinite samples")
    for name, (low, high) in (("snr_db_range", snr_db_range), ("gain_db_range", gain_db_range)):
        if not low <= high:
            raise ConfigError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
    x = x.astype(np.float64)
    noise = _pink_noise(x.size, rng) if rng.random() < 0.5 else rng.standard_normal(x.size)
    snr_db = rng.uniform(*snr_db_range)
    signal_power = float(np.mean(x**2))
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10) / max(float(np.mean(noise**2)), 1e-20))
    y = (x + noise) * 10 ** (rng.uniform(*gain_db_range) / 20)
    peak = float(np.abs(y).max())
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32)


def _pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) noise with a 1/f power spectrum (white noise shaped in the frequency domain)."""
    size = 1 << max(n - 1, 1).bit_length()  # a power of two: FFTs of prime lengths are slow
    spectrum = np.fft.rfft(rng.standard_normal(size))  # (size//2 + 1,)
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size, dtype=np.float64))
    spectrum[0] = 0.0  # no DC offset
    return np.fft.irfft(spectrum, size)[:n]


def _speak(
    utt: Utterance, voices: Sequence[VoiceSpec], seed: int, vary: bool
) -> tuple[np.ndarray, VoiceSpec]:
    """One utterance -> (16 kHz float32 samples, the voice used)."""
    rng = np.random.default_rng([seed, zlib.crc32(utt.id.encode("utf-8"))])
    choices = [v for v in voices if v.lang == utt.lang]
    if not choices:
        raise ConfigError(f"no voice for language {utt.lang!r} (utterance {utt.id})")
    spec = choices[rng.integers(len(choices))]
    rate, pitch = spec.rate, spec.pitch
    if vary:
        rate = round(rate * rng.uniform(1 - RATE_JITTER, 1 + RATE_JITTER))
        rate = int(np.clip(rate, *espeak.RATE_RANGE))
        pitch = int(
            np.clip(pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), *espeak.PITCH_RANGE)
        )
    if utt.parts:  # sentences in a row, one voice, a pause drawn for each gap
        clips = [trimmed(spoken(part, spec, rate, pitch)) for part in utt.parts]
        gaps = [rng.uniform(*PAUSE_RANGE_S) if vary else CLEAN_PAUSE_S for _ in clips[1:]]
        audio = np.concatenate([clips[0]] + [
            np.concatenate([np.zeros(round(gap * SAMPLE_RATE), np.float32), clip])
            for gap, clip in zip(gaps, clips[1:])
        ])  # fmt: skip
    else:
        audio = spoken(utt.text, spec, rate, pitch)
    if audio.size == 0:
        raise AudioError(f"espeak-ng produced no audio for utterance {utt.id}: {utt.text!r}")
    if vary:
        pads = rng.integers(0, int(MAX_PAD_S * SAMPLE_RATE) + 1, size=2)
        audio = np.pad(audio, (int(pads[0]), int(pads[1])))
        audio = augment(audio, rng)
    return audio, spec


def spoken(text: str, spec: VoiceSpec, rate: int, pitch: int) -> np.ndarray:
    """``text`` in ``spec``'s voice at ``rate`` and ``pitch``: (N,) float32 at 16 kHz, with
    espeak-ng's own silence around it."""
    pcm = espeak.synthesize(text, spec.voice, spec.variant, rate, pitch)
    return resample(pcm.astype(np.float32) / 32768.0, espeak.SAMPLE_RATE_ESPEAK, SAMPLE_RATE)


def trimmed(clip: np.ndarray) -> np.ndarray:
    """``clip`` from its first to its last audible sample (the silence around it cut)."""
    sound = np.flatnonzero(np.abs(clip) > AUDIBLE)
    return clip[sound[0] : sound[-1] + 1] if sound.size else clip[:0]


def _write_wav(path: Path, pcm16: np.ndarray) -> None:
    """16 kHz mono PCM16 wav. The wave module, not soundfile: soundfile syncs every file to
    disk on close, which costs more than synthesising it."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(pcm16.astype("<i2").tobytes())


def _synthesize_chunk(
    utterances: list[Utterance], wav_dir: Path, voices: Sequence[VoiceSpec], seed: int, vary: bool
) -> list[tuple[float, str]]:
    """Write each utterance's wav; (duration in seconds, voice name) per utterance, in order."""
    rows = []
    for utt in utterances:
        audio, spec = _speak(utt, voices, seed, vary)
        pcm16 = float_to_pcm16(audio)
        _write_wav(wav_dir / f"{utt.id}.wav", pcm16)
        rows.append((len(pcm16) / SAMPLE_RATE, spec.name))
    return rows


def synthesize_corpus(
    utterances: Sequence[Utterance],
    out_dir: str | Path,
    voices: Sequence[VoiceSpec],
    seed: int,
    workers: int = 2,
    augmented: bool = True,
) -> Path:
    """Speak every utterance into ``out_dir/wavs/{id}.wav``; returns ``out_dir/manifest.jsonl``.

    ``augmented`` turns on rate/pitch jitter, padding and noise (training); off, each voice speaks
    as specified, cleanly (evaluation). ``workers`` <= 1 synthesises in this process.
    """
    if not voices:
        raise ConfigError("synthesize_corpus needs at least one voice")
    for spec in voices:
        espeak.voice_name(spec.voice, spec.variant)  # unknown voices fail before any work
        espeak.check_rate_and_pitch(spec.rate, spec.pitch)
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids) or not all(ids):
        raise ConfigError("utterance ids must be non-empty and unique (they name the wav files)")
    out_dir = Path(out_dir)
    wav_dir = out_dir / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    chunks = [list(utterances[i : i + _CHUNK]) for i in range(0, len(utterances), _CHUNK)]
    rows: list[tuple[float, str]] = []
    progress = tqdm(total=len(utterances), desc="synth", unit="utt", file=sys.stderr)
    args = (wav_dir, tuple(voices), seed, augmented)
    if workers <= 1:
        for chunk in chunks:
            rows += _synthesize_chunk(chunk, *args)
            progress.update(len(chunk))
    else:
        context = multiprocessing.get_context("spawn")  # no inherited espeak or thread state
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_synthesize_chunk, chunk, *args) for chunk in chunks]
            for chunk, future in zip(chunks, futures):
                rows += future.result()
                progress.update(len(chunk))
    progress.close()
    manifest = out_dir / "manifest.jsonl"
    partial = manifest.with_suffix(".jsonl.partial")
    with partial.open("w", encoding="utf-8") as f:
        for utt, (duration, voice) in zip(utterances, rows):
            record = {
                "id": utt.id,
                "audio": f"wavs/{utt.id}.wav",
                "duration": round(duration, 4),
                "lang": utt.lang,
                "task": utt.task,
                "text": utt.text,
                "translation": utt.translation,
                "target": utt.target,
                "history": [list(turn) for turn in utt.history],
                "voice": voice,
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, manifest)  # a manifest on disk is always complete
    return manifest


def read_manifest(path: str | Path) -> list[dict]:
    """The records of a synthesised ``manifest.jsonl``, ``audio`` resolved to an absolute path.

    Raises ``ConfigError`` naming the file and line for malformed JSON or a missing field.
    """
    from mooer.train.data import parse_entry  # here: it imports torch, which workers never need

    base = Path(path).parent
    records = []
    for record, where in iter_records(path):
        parse_entry(record, base, where)  # the training reader's type checks
        missing = [name for name in MANIFEST_FIELDS if name not in record]
        if missing:
            raise ConfigError(f"{where}: missing field(s) {', '.join(missing)}")
        record["audio"] = str((base / record["audio"]).resolve())
        records.append(record)
    return records


def synth_command(out: Path, n_train: int, n_heldout: int, seed: int, workers: int) -> int:
    """``mooer train synth``: write ``OUT/train`` and ``OUT/heldout`` corpora with manifests."""
    start = time.perf_counter()
    train, heldout = build_corpus(n_train, n_heldout, seed)
    for name, utterances, voices, vary in (
        ("train", train, TRAIN_VOICES, True),
        ("heldout", heldout, HELDOUT_VOICES, False),
    ):
        manifest = synthesize_corpus(utterances, out / name, voices, seed, workers, augmented=vary)
        hours = sum(r["duration"] for r in read_manifest(manifest)) / 3600
        print(f"{manifest}: {len(utterances)} utterances, {hours:.2f} h", file=sys.stderr)
    print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0
