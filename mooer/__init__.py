"""mooer: LLM-based speech recognition, translation and spoken chat, compatible with MooER.

::

    model = mooer.load_model()                 # the bundled demo model, or a MooER checkpoint dir
    results = mooer.transcribe(model, ["a.wav"], task="asr")

The names below are imported when first used, so that importing a light submodule (Ray Serve's
proxy imports ``mooer.server.ray_serve``) does not load torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mooer.audio import load_audio
    from mooer.errors import MooerError
    from mooer.llm.decoding import DecodingOptions
    from mooer.model import SpeechLLM, load_model
    from mooer.transcribe import Result, transcribe

__version__ = "0.1.0"
_HOMES = {
    "DecodingOptions": "mooer.llm.decoding",
    "MooerError": "mooer.errors",
    "Result": "mooer.transcribe",
    "SpeechLLM": "mooer.model",
    "load_audio": "mooer.audio",
    "load_model": "mooer.model",
    "transcribe": "mooer.transcribe",
}
__all__ = [
    "DecodingOptions",
    "MooerError",
    "Result",
    "SpeechLLM",
    "load_audio",
    "load_model",
    "transcribe",
]


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'mooer' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
