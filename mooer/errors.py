"""Errors a user can act on.

Every failure that bad input can cause surfaces as a ``MooerError`` subclass whose message names
the file, key or value at fault, so the CLI and the server can report it without a traceback.
"""

from __future__ import annotations

import json
import math
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


def check_number(
    value: object,
    name: str,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    error: type[MooerError] = ConfigError,
    *,
    above: float | None = None,
    below: float | None = None,
) -> Any:
    """``value`` if it is a finite number (with ``integer``, a whole one; never a bool) in
    ``low..high`` and, where given, past the exclusive bounds ``above`` / ``below`` (every
    bound may be left open); else ``error`` naming ``name`` and the range.

    The one check behind the numeric settings clients and users pass in: Python counts
    ``True`` as an int, and JSON readers pass ``1e12``, ``NaN`` and ``Infinity`` as numbers.
    """
    kinds = int if integer else (int, float)
    if not (
        isinstance(value, kinds)
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))  # a huge int overflows a float
        and (low is None or low <= value)
        and (high is None or value <= high)
        and (above is None or above < value)
        and (below is None or value < below)
    ):
        kind = "an integer" if integer else "a number"
        if low is not None and high is not None and above is None and below is None:
            expected = f"{kind} in {low:g}..{high:g}"
        else:
            bounds = ((">=", low), (">", above), ("<=", high), ("<", below))
            limits = " and ".join(f"{op} {b:g}" for op, b in bounds if b is not None)
            expected = f"{kind} {limits}" if limits else kind
        raise error(f"{name}={value!r}: expected {expected}")
    return value


def read_json_file(path: Path, error: type[MooerError], where: str = "") -> Any:
    """The JSON value in ``path``, or ``error`` naming the file (after ``where``) and the flaw."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{where}{path} is not valid JSON: {exc}") from exc


class LLMServerError(MooerError):
    """The LLM server (``--llm-url``) cannot be reached or refused a request."""
