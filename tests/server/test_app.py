from __future__ import annotations

import platform

import pytest

from mooer.server.app import fix_heap_thresholds


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_glibc_takes_the_fixed_heap_thresholds():
    # mallopt returns 1 only for a parameter and value it accepted
    assert fix_heap_thresholds() is True
