"""mooer: LLM-based speech recognition, translation and spoken chat, compatible with MooER.

::

    model = mooer.load_model()                 # the bundled demo model, or a MooER checkpoint dir
    results = mooer.transcribe(model, ["a.wav"], task="asr")
"""

from mooer.audio import load_audio
from mooer.errors import MooerError
from mooer.llm.decoding import DecodingOptions
from mooer.model import SpeechLLM, load_model
from mooer.transcribe import Result, transcribe

__version__ = "0.1.0"
__all__ = [
    "DecodingOptions",
    "MooerError",
    "Result",
    "SpeechLLM",
    "load_audio",
    "load_model",
    "transcribe",
]
