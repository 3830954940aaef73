"""The meeting store on both backends: a SQLite file, and PostgreSQL in a throwaway cluster that
these fixtures start themselves (``initdb`` + ``pg_ctl`` in a temporary folder, on a free port,
as an unprivileged user when the tests run as root). Where PostgreSQL cannot start, its tests
skip and say why."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.ports import free_port


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_user() -> list[str]:
    """PostgreSQL refuses to run as root: run it as ``nobody`` then."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and runuser is missing")
    return [runuser, "-u", "nobody", "--"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own for this test session: its URL (user postgres, trust)."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed")
    bindir = _postgres_bin()
    if bindir is None:
        print("PostgreSQL tests skipped: no initdb (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (no initdb): apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="mooer-pg-"))
    data, port = root / "data", free_port()
    started = False
    try:
        user = _as_user()
        if user:
            shutil.chown(root, "nobody")
        options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -F"
        for command in (
            [bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-sync"],
            [bindir / "pg_ctl", "-D", data, "-o", options, "-w", "-l", root / "log", "start"],
        ):  # fmt: skip
            subprocess.run(user + [str(c) for c in command], check=True, capture_output=True,
                           timeout=60)  # fmt: skip
        started = True
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = f"PostgreSQL could not start: {exc} {detail.decode(errors='replace')[-300:]}"
        print(reason)
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(reason)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            subprocess.run(user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                   "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def empty_store(backend: str, folder: Path, request) -> Iterator[str]:
    """An empty store's URL on ``backend``: a SQLite file in ``folder``, or the PostgreSQL
    cluster of ``postgres_url`` (its tables dropped afterwards)."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'meetings.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    from mooer.meetings.store import MeetingStore, metadata

    store = MeetingStore(url)
    metadata.drop_all(store.engine)
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> Iterator[str]:
    """An empty store's URL on each backend."""
    with empty_store(request.param, tmp_path, request) as url:
        yield url


@pytest.fixture
def store(store_url):
    from mooer.meetings.store import MeetingStore

    store = MeetingStore(store_url)
    yield store
    store.close()
