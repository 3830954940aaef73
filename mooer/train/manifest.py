"""Reading jsonl manifests line by line, with errors that name the file and line.

Light on purpose (no torch): synthesis workers and the training data pipeline both read them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mooer.errors import ConfigError


def iter_records(path: str | Path) -> Iterator[tuple[dict, str]]:
    """``(record, "file:line")`` for every non-blank line; bad JSON raises ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield json.loads(line), where
            except json.JSONDecodeError as err:
                raise ConfigError(f"{where}: not valid JSON: {err}") from err
