"""Errors a user can act on.

Every failure that bad input can cause surfaces as a ``MooerError`` subclass whose message names
the file, key or value at fault, so the CLI and the server can report it without a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MooerError(Exception):
    """Base class of every error mooer raises on purpose."""


class AudioError(MooerError):
    """Audio that cannot be read or used: not audio, empty, NaN samples, wrong format."""


class CheckpointError(MooerError):
    """A checkpoint file or folder is missing, truncated, or holds unexpected keys or shapes."""


class ConfigError(MooerError):
    """A configuration value is out of range or of the wrong type."""


def read_json_file(path: Path, error: type[MooerError], where: str = "") -> Any:
    """The JSON value in ``path``, or ``error`` naming the file (after ``where``) and the flaw."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{where}{path} is not valid JSON: {exc}") from exc


class LLMServerError(MooerError):
    """The LLM server (``--llm-url``) cannot be reached or refused a request."""
