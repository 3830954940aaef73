"""``check_number``: the one check of numeric settings."""

from __future__ import annotations

import math

import pytest

from mooer.errors import AudioError, ConfigError, check_number


@pytest.mark.parametrize("value", [True, "5", None, math.nan, math.inf, 1e12, -1, 5.5, [5]])
def test_what_is_not_a_whole_number_in_range_is_refused_by_name(value):
    with pytest.raises(ConfigError, match=r"^field=.*: expected an integer in 0\.\.100$"):
        check_number(value, "field", 0, 100, integer=True)


def test_in_range_values_come_back_and_open_ends_are_stated():
    assert check_number(100, "f", 0, 100, integer=True) == 100
    assert check_number(0.5, "f", 0.2, 0.99) == 0.5
    with pytest.raises(AudioError, match=r"^rate=0: expected a number >= 1$"):
        check_number(0, "rate", 1, error=AudioError)
    with pytest.raises(ConfigError, match=r"expected an integer <= 3$"):
        check_number(4, "f", high=3, integer=True)
