from __future__ import annotations

import platform

import pytest

from mooer.server.app import fix_heap_thresholds


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_takes_the_fixed_heap_thresholds(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    # mallopt returns 1 only for a parameter and value it accepted
    assert fix_heap_thresholds() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_heap_thresholds() is False  # the user's own setting is left alone
