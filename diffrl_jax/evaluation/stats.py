"""Success rates with honest uncertainty: Wilson score intervals.

A success rate over n poses is a binomial proportion; the Wilson interval
stays inside [0, 1] and keeps its coverage for small n and rates near 0 or 1,
where the normal approximation (p +- z sqrt(p(1-p)/n)) fails.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from diffrl_jax.errors import ConfigError


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of `successes` out of `n`."""
    if not (isinstance(n, int) and n >= 1):
        raise ConfigError(f"a rate needs at least one trial, got n={n!r}")
    if not (isinstance(successes, int) and 0 <= successes <= n):
        raise ConfigError(f"successes must lie in [0, {n}], got {successes!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # Exact at the ends (rounding would otherwise leave 1e-17 off 0 or 1).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def rate(successes: int, n: int, confidence: float = 0.95) -> dict:
    """{"n", "successes", "rate", "ci_low", "ci_high", "confidence"} for reports."""
    low, high = wilson_interval(successes, n, confidence)
    return {"n": n, "successes": successes, "rate": successes / n, "ci_low": low, "ci_high": high,
            "confidence": confidence}
