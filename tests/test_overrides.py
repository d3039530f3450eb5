"""diffrl_jax.overrides: `--set FIELD=VALUE` text typed by the config's annotations, the same for every config."""

from __future__ import annotations

import dataclasses
import math

import pytest

from diffrl_jax import configs, overrides
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
    """Each field's default, written as text, parses back to itself: every annotation is supported.

    Nested configs (the protocols' `physics`, `squeeze`) by their leaves' dotted paths."""
    default = config()

    def text(value):
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return "none" if value is None else str(value)

    items = {path: text(configs.get(default, path)) for path in configs.leaves(config)
             if not (isinstance(configs.get(default, path), tuple) and not configs.get(default, path))}
    parsed = overrides.parse_overrides(config, items, "config")
    assert parsed == {name: configs.get(default, name) for name in items}


@dataclasses.dataclass(frozen=True)
class _Inner:
    x: float = 1.0
    y: int = 2


@dataclasses.dataclass(frozen=True)
class _Outer:
    a: _Inner = _Inner()
    b: _Inner = _Inner()
    z: float = 0.5


def test_dotted_paths_and_unique_leaf_names():
    """`--set physics.friction=0.5` and `--set friction=0.5` both reach the nested field."""
    dotted = overrides.parse_overrides(protocol.HoldProtocol, {"physics.friction": "0.5"}, "protocol")
    leaf = overrides.parse_overrides(protocol.HoldProtocol, {"friction": "0.5"}, "protocol")
    assert dotted == leaf == {"physics.friction": 0.5}
    alias = overrides.parse_overrides(protocol.HoldProtocol, {"squeeze_m": "0"}, "protocol")  # the old flat name
    assert alias == {"squeeze.depth_m": 0.0}
    strict = protocol.protocol("strict")
    assert strict.replace(**{"physics.friction": 0.5}) == strict.replace(friction=0.5)
    assert strict.replace(friction=0.5).physics.friction == 0.5
    assert strict.replace(friction=0.5).physics.mass_scale == strict.physics.mass_scale  # the rest kept
    held = lift.LiftProtocol().replace(**{"physics.mass_scale": 2.0, "squeeze.closure_rad": 0.2, "hold_s": 0.5})
    assert (held.physics.mass_scale, held.squeeze.closure_rad, held.hold_s) == (2.0, 0.2, 0.5)
    assert held.physics.impratio == 10.0  # the lift's own default, not the hold test's
    # Merged overrides (a scenario's, then --set's): the later name of a field wins.
    assert strict.replace(**{"friction": 0.5, "physics.friction": 0.7}).physics.friction == 0.7
    assert overrides.parse_overrides(_Outer, {"a.x": "3", "z": "1"}, "outer") == {"a.x": 3.0, "z": 1.0}
    assert configs.replace(_Outer(), {"b.y": 5}, "outer") == _Outer(b=_Inner(y=5))


@pytest.mark.parametrize("items, message", [
    ({"x": "1"}, r"ambiguous outer field 'x': it could be any of \['a.x', 'b.x'\]"),
    ({"w": "1"}, r"unknown outer field\(s\) \['w'\]; known: \['a.x', 'a.y', 'b.x', 'b.y', 'z'\]"),
    ({"a": "1"}, r"outer field a is a group of fields"),
])
def test_ambiguous_or_unknown_leaf_names_list_the_dotted_names(items, message):
    with pytest.raises(ConfigError, match=message):
        overrides.parse_overrides(_Outer, items, "outer")
    if "group" not in message:
        with pytest.raises(ConfigError, match=message):
            configs.replace(_Outer(), dict.fromkeys(items, 1.0), "outer")


def test_an_unknown_protocol_field_lists_the_dotted_names():
    with pytest.raises(ConfigError, match=r"unknown protocol field\(s\) \['frition'\]; known: .*'physics.friction'"):
        protocol.protocol("strict", frition=1.0)
