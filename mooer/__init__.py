"""mooer: LLM-based speech recognition, translation and spoken chat, compatible with MooER.

::

    model = mooer.load_model()                 # the bundled demo model, or a MooER checkpoint dir
    results = mooer.transcribe(model, ["a.wav"], task="asr")

The public names are imported when first used: torch and transformers take seconds to import,
and commands such as ``mooer meetings list`` or ``mooer --help`` need neither, nor does Ray Serve's
proxy, which imports ``mooer.server.ray_serve``.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mooer.audio import load_audio as load_audio
    from mooer.errors import MooerError as MooerError
    from mooer.llm.decoding import DecodingOptions as DecodingOptions
    from mooer.model import SpeechLLM as SpeechLLM
    from mooer.model import load_model as load_model
    from mooer.transcribe import Result as Result
    from mooer.transcribe import transcribe as transcribe

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
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module 'mooer' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # found here from now on
    return value


class _Package(types.ModuleType):
    """Importing the submodule ``mooer.transcribe`` sets the package's attribute of that name to
    the module; ``mooer.transcribe`` stays the function, as it was when it was imported eagerly."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in _HOMES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
