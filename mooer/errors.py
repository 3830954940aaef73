"""Errors a user can act on.

Every failure that bad input can cause surfaces as a ``MooerError`` subclass whose message names
the file, key or value at fault, so the CLI and the server can report it without a traceback.
"""


class MooerError(Exception):
    """Base class of every error mooer raises on purpose."""


class AudioError(MooerError):
    """Audio that cannot be read or used: not audio, empty, NaN samples, wrong format."""


class CheckpointError(MooerError):
    """A checkpoint file or folder is missing, truncated, or holds unexpected keys or shapes."""


class ConfigError(MooerError):
    """A configuration value is out of range or of the wrong type."""
