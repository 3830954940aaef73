"""libespeak-ng through ctypes, from the ``espeakng-loader`` wheel (library and voice data inside).

The library keeps one voice, one set of parameters and one output callback for the whole
process, so every synthesis runs under a single lock and the library is initialised once, on
first use. Synthesis is synchronous and into memory: the callback collects int16 samples.

``espeak_SetVoiceByName`` reports success for any ``+variant`` suffix, silently falling back to
the plain voice, so variants are checked here against the ``voices/!v`` folder of the data.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from pathlib import Path

import numpy as np

from mooer.errors import ConfigError, check_number

SAMPLE_RATE_ESPEAK = 22050  # Hz; checked against espeak_Initialize's return on first use
RATE_RANGE = (80, 450)  # words per minute that espeak-ng accepts
PITCH_RANGE = (0, 100)  # espeak-ng's relative pitch scale, 50 = the voice's own

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_EE_OK = 0

# int callback(short *wav, int numsamples, espeak_EVENT *events)
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _loader():
    try:
        import espeakng_loader
    except ImportError as exc:
        raise ConfigError(
            "espeak-ng text-to-speech needs the espeakng-loader package: "
            "pip install 'mooer[tts]' (or pip install espeakng-loader)"
        ) from exc
    return espeakng_loader


@functools.cache
def data_path() -> Path:
    """The espeak-ng-data folder shipped inside the wheel."""
    return Path(_loader().get_data_path())


@functools.cache
def available_variants() -> list[str]:
    """Voice variants (``m1``..``m8``, ``f1``..``f5`` and named ones) as in ``voices/!v``."""
    return sorted(p.name for p in (data_path() / "voices" / "!v").iterdir() if p.is_file())


@functools.cache
def available_voices() -> list[str]:
    """Language voices, named as ``espeak_SetVoiceByName`` accepts them (lower case)."""
    return sorted(p.name.lower() for p in (data_path() / "lang").rglob("*") if p.is_file())


class _Library:
    """The process-global libespeak-ng: one synthesis at a time, under ``lock``."""

    def __init__(self) -> None:
        loader = _loader()
        self._lib = ctypes.CDLL(loader.get_library_path())
        self._lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # size in bytes, terminator included
            ctypes.c_uint,  # start position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier out
            ctypes.c_void_p,  # user data
        ]
        rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path()).encode(), _INITIALIZE_DONT_EXIT
        )
        if rate != SAMPLE_RATE_ESPEAK:
            raise ConfigError(
                f"libespeak-ng at {loader.get_library_path()} failed to start or runs at "
                f"{rate} Hz (expected {SAMPLE_RATE_ESPEAK} Hz)"
            )
        self._chunks: list[np.ndarray] = []
        # Kept on the instance: the library holds only the raw pointer.
        self._callback = _SynthCallback(self._collect)
        self._lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def _collect(self, wav, n_samples: int, _events) -> int:
        if n_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0  # 0: go on synthesising

    def synthesize(self, text: str, voice_name: str, rate: int, pitch: int) -> np.ndarray:
        with self.lock:
            status = self._lib.espeak_SetVoiceByName(voice_name.encode())
            if status != _EE_OK:
                raise ConfigError(
                    f"espeak-ng voice {voice_name!r} not found (error {status}); "
                    f"voices: {', '.join(available_voices())}"
                )
            self._lib.espeak_SetParameter(_PARAM_RATE, rate, 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            status = self._lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            chunks, self._chunks = self._chunks, []
        if status != _EE_OK:
            raise ConfigError(f"espeak-ng failed (error {status}) on text {text[:60]!r}")
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_library: _Library | None = None
_library_lock = threading.Lock()


def _get_library() -> _Library:
    global _library
    with _library_lock:
        if _library is None:
            _library = _Library()
        return _library


def check_rate_and_pitch(rate: int, pitch: int) -> None:
    """ConfigError unless both are within what espeak-ng accepts (it clamps silently)."""
    for name, value, (low, high) in (("rate", rate, RATE_RANGE), ("pitch", pitch, PITCH_RANGE)):
        check_number(value, f"espeak-ng {name}", low, high, integer=True)


def voice_name(voice: str = "en-us", variant: str | None = None) -> str:
    """``"en-us"`` + ``"m3"`` -> ``"en-us+m3"``, after checking both exist."""
    if voice.lower() not in available_voices():
        raise ConfigError(
            f"unknown espeak-ng voice {voice!r}; voices: {', '.join(available_voices())}"
        )
    if variant is None:
        return voice
    variant = variant.removeprefix("+")
    if variant not in available_variants():
        raise ConfigError(
            f"unknown espeak-ng voice variant {variant!r}; "
            f"variants: {', '.join(available_variants())}"
        )
    return f"{voice}+{variant}"


def synthesize(
    text: str,
    voice: str = "en-us",
    variant: str | None = None,
    rate: int = 175,
    pitch: int = 50,
) -> np.ndarray:
    """Speak ``text``; int16 mono samples at ``SAMPLE_RATE_ESPEAK``, empty for blank text.

    ``voice`` is a language voice (``en-us``, ``en-029``, ``cmn``...), ``variant`` a speaker
    (``m1``..``m8``, ``f1``..``f5``...), ``rate`` words per minute, ``pitch`` 0..100.
    """
    name = voice_name(voice, variant)
    check_rate_and_pitch(rate, pitch)
    text = text.replace("\0", " ").strip()
    if not text:
        return np.zeros(0, dtype=np.int16)
    return _get_library().synthesize(text, name, rate, pitch)
