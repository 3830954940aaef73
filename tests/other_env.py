"""Tests whose packages live in an environment of their own (they pin packages that must not
reach mooer's): the python of that environment runs their side in a subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def missing(python: str, *modules: str) -> str | None:
    """Why ``python`` cannot import ``modules`` (``scripts/setup.sh --tests`` installs them),
    or None."""
    if not os.access(python, os.X_OK):
        return f"no python at {python} (scripts/setup.sh --tests makes it)"
    probe = subprocess.run(
        [python, "-c", f"import {', '.join(modules)}"], capture_output=True, text=True, timeout=300
    )
    if probe.returncode != 0:
        return f"{python} cannot import {', '.join(modules)}: {probe.stderr.strip()[-300:]}"
    return None


def environ() -> dict[str, str]:
    """This process's environment with this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env
