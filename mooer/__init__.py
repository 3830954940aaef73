"""mooer: LLM-based speech recognition, translation and spoken chat, compatible with MooER.

The public API, imported lazily so that ``import mooer.audio`` does not pull in transformers::

    model = mooer.load_model()                 # the bundled demo model, or a MooER checkpoint dir
    results = mooer.transcribe(model, ["a.wav"], task="asr")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "mooer.model",
    "SpeechLLM": "mooer.model",
    "transcribe": "mooer.transcribe",
    "Result": "mooer.transcribe",
    "load_audio": "mooer.audio",
    "DecodingOptions": "mooer.llm.decoding",
    "MooerError": "mooer.errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mooer' has no attribute {name!r}")
