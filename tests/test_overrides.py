"""diffrl_jax.overrides: `--set FIELD=VALUE` text typed by the config's annotations, the same for every config."""

from __future__ import annotations

import dataclasses
import math

import pytest

from diffrl_jax import overrides
from diffrl_jax.diffusion.config import DiffusionConfig
from diffrl_jax.errors import ConfigError
from diffrl_jax.rl.ppo import PPOConfig
from diffrl_jax.sim import lift, protocol, robustness
from experiments.pipeline import PipelineConfig


@dataclasses.dataclass(frozen=True)
class _Example:
    flag: bool = False
    count: int = 1
    rate: float = 0.5
    name: str = "a"
    sizes: tuple[int, ...] = (1,)
    point: tuple[float, float, float] = (0.0, 0.0, 0.0)
    limit: int | None = None
    ceiling: float | None = 1.0


def test_every_annotation_parses():
    got = overrides.parse_overrides(_Example, {
        "flag": "Yes", "count": "-3", "rate": "inf", "name": "x=y", "sizes": "(64, 64)",
        "point": "[0.1, 0.2, 0.3]", "limit": "none", "ceiling": "2"}, "example")
    assert got == {"flag": True, "count": -3, "rate": math.inf, "name": "x=y", "sizes": (64, 64),
                   "point": (0.1, 0.2, 0.3), "limit": None, "ceiling": 2.0}
    assert type(got["ceiling"]) is float and type(got["count"]) is int
    assert overrides.parse_overrides(_Example(), {"flag": "0", "limit": "7", "sizes": "8"}, "example") == \
        {"flag": False, "limit": 7, "sizes": (8,)}
    assert overrides.parse_overrides(_Example, {"limit": "", "ceiling": "NULL"}, "example") == \
        {"limit": None, "ceiling": None}
    assert overrides.parse_overrides(_Example, {}, "example") == {}


@pytest.mark.parametrize("items, message", [
    ({"cuont": "1"}, r"unknown example field\(s\) \['cuont'\]"),
    ({"count": "1.5"}, "example field count: '1.5' is not an integer"),
    ({"rate": "fast"}, "example field rate: 'fast' is not a number"),
    ({"flag": "maybe"}, "example field flag: 'maybe' is not a boolean"),
    ({"point": "1,2"}, "example field point: expected 3 comma-separated values"),
    ({"sizes": "64,big"}, "example field sizes: 'big' is not an integer"),
    ({"limit": "lots"}, "example field limit: 'lots' is not an integer"),
])
def test_bad_text_is_a_config_error_naming_the_field(items, message):
    with pytest.raises(ConfigError, match=message):
        overrides.parse_overrides(_Example, items, "example")


@pytest.mark.parametrize("config", [
    protocol.HoldProtocol, lift.LiftProtocol, robustness.PerturbConfig, PPOConfig, DiffusionConfig,
    PipelineConfig,
])
def test_every_project_config_round_trips_its_defaults_through_text(config):
    """Each field's default, written as text, parses back to itself: every annotation is supported."""
    default = config()

    def text(value):
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return "none" if value is None else str(value)

    items = {f.name: text(getattr(default, f.name)) for f in dataclasses.fields(config)
             if not (isinstance(getattr(default, f.name), tuple) and not getattr(default, f.name))}
    parsed = overrides.parse_overrides(config, items, "config")
    assert parsed == {name: getattr(default, name) for name in items}
