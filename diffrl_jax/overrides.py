"""Text overrides of config dataclasses (`--set FIELD=VALUE`), typed by each field's annotation.

Every CLI flag and experiment script that sets config fields from text goes
through `parse_overrides`, so `--set physics.friction=0.5` (or the unique leaf
name, `--set friction=0.5`; see `configs.resolve`), `--ppo hidden_sizes=64,64`
and `--set limit=none` mean the same thing everywhere:

- `bool`: true/false, yes/no, on/off, 1/0 (any case);
- `int`, `float`: Python's literals (`inf` for a float);
- `str`: the text as given;
- `tuple[T, ...]` and `tuple[T1, T2]`: comma-separated values, optionally in
  `()` or `[]`;
- `T | None`: `none`, `null` or nothing for None, else a `T`.

A value that does not parse, or a field the config lacks (or a leaf name
that several of its nested fields share), is a `ConfigError` naming the
field and the config. Range checks stay with the config's own `validate()`.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Any

from diffrl_jax import configs
from diffrl_jax.errors import ConfigError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_NONE = ("none", "null")


def _split(text: str) -> list[str]:
    text = text.strip()
    if text[:1] in "([" and text[-1:] in ")]":
        text = text[1:-1]
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_value(text: str, kind: Any, label: str) -> Any:
    """`text` as a value of the annotation `kind`; `label` names the field in errors."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != len(args) and text.strip().lower() in (*_NONE, ""):
            return None
        if len(inner) != 1:
            raise TypeError(f"{label}: unsupported annotation {kind}")
        return parse_value(text, inner[0], label)
    if origin is tuple:
        items = _split(text)
        if len(args) == 2 and args[1] is Ellipsis:
            kinds = [args[0]] * len(items)
        else:
            if len(items) != len(args):
                raise ConfigError(f"{label}: expected {len(args)} comma-separated values, got {text!r}")
            kinds = list(args)
        return tuple(parse_value(item, k, label) for item, k in zip(items, kinds))
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise ConfigError(f"{label}: {text!r} is not a boolean (true or false)")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{label}: {text!r} is not an integer") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{label}: {text!r} is not a number") from None
    if kind is str:
        return text
    raise TypeError(f"{label}: unsupported annotation {kind}")


def parse_overrides(config: Any, items: Mapping[str, str], what: str) -> dict[str, Any]:
    """`{field: text}` -> `{dotted path: typed value}` for the dataclass (or instance) `config`.

    A field is its dotted path or a unique leaf name (`friction` ->
    `physics.friction`, see `configs.resolve`). `what` names the config in
    messages ("protocol", "PPO config", ...).
    """
    paths = configs.resolve_all(config, items, what)
    out = {}
    for name, text in items.items():
        path = paths[name]
        kind = configs.leaf_type(config, path)
        if kind is None:
            raise ConfigError(f"{what} field {path} is a group of fields; set one of its fields "
                              f"({path}.FIELD=VALUE)")
        out[path] = parse_value(text, kind, f"{what} field {path}")
    return out
