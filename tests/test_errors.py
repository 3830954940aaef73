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


def test_exclusive_bounds_and_non_finite_values_are_refused_with_open_ends_too():
    assert check_number(1.0, "p", high=1.0, above=0.0) == 1.0
    with pytest.raises(ConfigError, match=r"^p=0\.0: expected a number > 0 and <= 1$"):
        check_number(0.0, "p", high=1.0, above=0.0)
    with pytest.raises(ConfigError, match=r"^t=1: expected a number > 0 and < 1$"):
        check_number(1, "t", above=0, below=1)
    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(ConfigError, match=r"^w=.*: expected a number$"):
            check_number(value, "w")
    assert check_number(10**400, "n", 0, integer=True) == 10**400  # no float overflow
