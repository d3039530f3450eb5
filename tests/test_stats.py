"""Wilson score intervals against published values and their defining properties."""

import math

import pytest

from diffrl_jax.errors import ConfigError
from diffrl_jax.evaluation.stats import rate, wilson_interval


def test_known_values():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> 0.2553-0.3662 (95%).
    low, high = wilson_interval(81, 263)
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    # 15/148 -> 0.0624-0.1605 (same table).
    low, high = wilson_interval(15, 148)
    assert low == pytest.approx(0.0624, abs=1e-4) and high == pytest.approx(0.1605, abs=1e-4)


def test_ends_and_symmetry():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    # 0 of n: the upper bound is z^2 / (n + z^2).
    z = 1.959963984540054
    assert wilson_interval(0, 100)[1] == pytest.approx(z * z / (100 + z * z))
    low, high = wilson_interval(30, 100)
    low2, high2 = wilson_interval(70, 100)
    assert low == pytest.approx(1 - high2) and high == pytest.approx(1 - low2)


def test_narrows_with_n_and_widens_with_confidence():
    widths = [h - l for l, h in (wilson_interval(k // 2, k) for k in (10, 100, 1000))]
    assert widths[0] > widths[1] > widths[2]
    l95, h95 = wilson_interval(40, 100, 0.95)
    l99, h99 = wilson_interval(40, 100, 0.99)
    assert l99 < l95 and h99 > h95


def test_rate_record():
    r = rate(90, 100)
    assert r["rate"] == 0.9 and r["n"] == 100 and r["ci_low"] < 0.9 < r["ci_high"]
    assert math.isclose(r["confidence"], 0.95)


@pytest.mark.parametrize("successes, n, confidence", [(1, 0, 0.95), (5, 4, 0.95), (-1, 4, 0.95), (1, 4, 1.0)])
def test_bad_input(successes, n, confidence):
    with pytest.raises(ConfigError):
        wilson_interval(successes, n, confidence)
