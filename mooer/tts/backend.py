"""Text-to-speech backends for the cascaded paths (S2ST, spoken chat): text in, PCM16 out.

A backend streams one chunk per sentence, so a client hears the first sentence while the rest
is still being synthesised. espeak-ng is the default (it ships in a wheel and needs nothing
else); CosyVoice is used when the user has installed it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from mooer.audio import resample
from mooer.errors import AudioError, ConfigError
from mooer.tts import espeak

LANGUAGE_VOICES = {"en": "en-us", "zh": "cmn"}  # our language code -> espeak-ng voice

# A sentence ends after Chinese end punctuation, or after Latin end punctuation followed by a
# space or the end of the text (so "3.5" and "e.g.x" stay whole); closing quotes stay attached.
_SENTENCE_END = re.compile(r"[。！？；…]+[”’」』）)]*|[.!?;]+[\"'”’)]*(?=\s|$)|\n")
_SPOKEN = re.compile(r"\w")  # a piece with no letter, digit or CJK character has nothing to say


class TTSBackend(Protocol):
    """What S2ST and spoken chat need from a speech synthesiser."""

    sample_rate: int

    def stream(
        self, text: str, language: str = "en", voice: str | None = None
    ) -> Iterator[np.ndarray]:
        """(N,) int16 mono chunks at ``sample_rate``, one per sentence, in order."""
        ...


def split_sentences(text: str) -> list[str]:
    """Sentences of English and/or Chinese text, punctuation kept; blank pieces dropped."""
    sentences: list[str] = []
    start = 0
    ends = [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]
    for end in ends:
        piece = text[start:end].strip()
        start = end
        if not piece:
            continue
        if _SPOKEN.search(piece) or not sentences:
            sentences.append(piece)
        else:  # stray punctuation, e.g. the second "!" of "no!  !"
            sentences[-1] += piece
    return [s for s in sentences if _SPOKEN.search(s)]


def resample_pcm16(chunk: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """(N,) int16 at ``from_rate`` -> (M,) int16 at ``to_rate``, e.g. 22.05 kHz -> 24 kHz."""
    chunk = np.asarray(chunk)
    if chunk.dtype != np.int16 or chunk.ndim != 1:
        raise AudioError(
            f"PCM16 chunk must be a 1-D int16 array, got {chunk.dtype} with shape {chunk.shape}"
        )
    return float_to_pcm16(resample(chunk.astype(np.float32) / 32768.0, from_rate, to_rate))


def float_to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16, clipped rather than wrapped."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def _language_voice(language: str) -> str:
    key = language.lower().split("-")[0].split("_")[0]
    if key not in LANGUAGE_VOICES:
        raise ConfigError(
            f"text-to-speech language {language!r} is not supported: use one of "
            f"{', '.join(sorted(LANGUAGE_VOICES))}"
        )
    return LANGUAGE_VOICES[key]


class EspeakBackend:
    """espeak-ng: robotic but instant (~1,500x real time on one core), English and Mandarin.

    ``voice`` in ``stream`` is an espeak-ng variant (``m1``..``m8``, ``f1``..``f5``...).
    """

    sample_rate: int = espeak.SAMPLE_RATE_ESPEAK

    def __init__(self, rate: int = 175, pitch: int = 50) -> None:
        espeak.check_rate_and_pitch(rate, pitch)
        self.rate = rate
        self.pitch = pitch

    def stream(
        self, text: str, language: str = "en", voice: str | None = None
    ) -> Iterator[np.ndarray]:
        # Checked now, not at the first next(), so a bad request fails where it is made.
        name = _language_voice(language)
        espeak.voice_name(name, voice)
        return self._chunks(split_sentences(text), name, voice)

    def _chunks(self, sentences: list[str], name: str, variant: str | None) -> Iterator[np.ndarray]:
        for sentence in sentences:
            samples = espeak.synthesize(sentence, name, variant, self.rate, self.pitch)
            if samples.size:
                yield samples


class CosyVoiceBackend:
    """CosyVoice 2 (https://github.com/FunAudioLLM/CosyVoice), when the user has installed it.

    With ``prompt_wav`` the voice is cloned from that recording (cross-lingual mode); otherwise
    ``voice`` (or the model's first) names one of the model's built-in speakers.
    """

    def __init__(
        self, model_dir: str | None = None, prompt_wav: str | None = None, device: str | None = None
    ) -> None:
        try:
            from cosyvoice.cli.cosyvoice import CosyVoice2
        except ImportError as exc:
            raise ConfigError(
                "the 'cosyvoice' text-to-speech backend needs CosyVoice, which is not installed: "
                "git clone --recursive https://github.com/FunAudioLLM/CosyVoice, "
                "pip install -r CosyVoice/requirements.txt, add CosyVoice and "
                "CosyVoice/third_party/Matcha-TTS to PYTHONPATH, and pass model_dir= a "
                "downloaded CosyVoice2-0.5B folder; or use the default 'espeak' backend"
            ) from exc
        if model_dir is None:
            raise ConfigError("the 'cosyvoice' backend needs model_dir= a CosyVoice2 model folder")
        import torch

        from mooer.audio import load_audio

        options = {} if device is None else {"device": device}
        self._model = CosyVoice2(model_dir, load_jit=False, load_trt=False, fp16=False, **options)
        self.sample_rate = int(self._model.sample_rate)
        self._prompt = None
        if prompt_wav is not None:
            self._prompt = torch.from_numpy(load_audio(prompt_wav)).unsqueeze(0)  # (1, N) 16 kHz

    def stream(
        self, text: str, language: str = "en", voice: str | None = None
    ) -> Iterator[np.ndarray]:
        _language_voice(language)
        speakers = list(self._model.list_available_spks())
        speaker = voice if voice is not None else next(iter(speakers), None)
        if self._prompt is None and speaker not in speakers:
            raise ConfigError(
                f"CosyVoice speaker {voice!r} not found; speakers: {', '.join(speakers) or 'none'}"
                " (pass prompt_wav= to clone a voice instead)"
            )
        return self._chunks(split_sentences(text), speaker)

    def _chunks(self, sentences: list[str], speaker: str | None) -> Iterator[np.ndarray]:
        for sentence in sentences:
            if self._prompt is not None:
                outputs = self._model.inference_cross_lingual(sentence, self._prompt, stream=False)
            else:
                outputs = self._model.inference_sft(sentence, speaker, stream=False)
            for output in outputs:
                yield float_to_pcm16(
                    output["tts_speech"].squeeze(0).float().cpu().numpy()
                )  # (1, N)


_BACKENDS: dict[str, type] = {"espeak": EspeakBackend, "cosyvoice": CosyVoiceBackend}


def load_backend(name: str = "espeak", **kwargs: Any) -> TTSBackend:
    """A backend by name: ``espeak`` (default) or ``cosyvoice``; ``kwargs`` go to its constructor."""
    if name not in _BACKENDS:
        raise ConfigError(
            f"unknown text-to-speech backend {name!r}: expected one of {', '.join(_BACKENDS)}"
        )
    backend = _BACKENDS[name]
    try:
        inspect.signature(backend).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad options for text-to-speech backend {name!r}: {exc}") from exc
    return backend(**kwargs)
