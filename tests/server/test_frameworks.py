"""Pipecat's and LiveKit Agents' realtime clients against a real server, in their environment.

The frameworks pin packages of their own, so ``scripts/setup.sh --tests`` installs them in
``.venv-frameworks`` beside mooer's environment; ``test_framework_pipecat.py`` and
``test_framework_livekit.py`` skip here and run there, in one subprocess started by this test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.other_env import ROOT, environ, missing

PYTHON = os.environ.get(
    "MOOER_FRAMEWORKS_PYTHON", str(ROOT / ".venv-frameworks" / "bin" / "python")
)
FILES = ["tests/server/test_framework_pipecat.py", "tests/server/test_framework_livekit.py"]


def test_the_frameworks_standard_flows_pass_in_their_environment():
    reason = missing(PYTHON, "pipecat", "livekit.agents", "livekit.plugins.openai")
    if reason is not None:
        print(f"skipping the Pipecat and LiveKit tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    run = subprocess.run(
        [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES],
        cwd=ROOT,
        env=environ(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert f"{len(FILES)} passed" in run.stdout, run.stdout[-2000:]
