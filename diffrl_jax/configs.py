"""Config dataclasses that compose: declared field checks and dotted field paths.

A field declares its valid values where it is defined,

    friction: float = positive(1.0)
    max_contacts: int = integer(64, min=1)

and `check(config, what)` enforces every declaration, recursing into nested
config dataclasses (`HoldProtocol.physics`), with one message per kind
("protocol field physics.friction must be positive, got -1.0"). Rules that
relate several fields stay as explicit code in each config's `validate()`.

A field is named by its dotted path from the outermost config
(`physics.friction`); `resolve` also accepts a bare leaf name that is unique
in the tree (`friction`) and a leaf's declared former name (`alias=`, so
records and scripts written before a field moved keep working). `replace`
and `from_dict` build on it, so every config's `replace(**overrides)`,
`--set` and the readers of saved configs name fields the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Callable, Mapping
from typing import Any

from diffrl_jax.errors import ConfigError

_RULE = "rule"
_ALIAS = "alias"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A declared check: `test(value)` is true for valid values; `expected` completes "must ..."."""

    test: Callable[[Any], bool]
    expected: str  # "be positive"


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _field(default, rule: Rule | None, alias: str | None):
    metadata = {_RULE: rule} if rule else {}
    if alias:
        metadata[_ALIAS] = alias
    return dataclasses.field(default=default, metadata=metadata)


def positive(default=dataclasses.MISSING, *, finite: bool = False, alias: str | None = None):
    """A number > 0 (NaN never; inf unless `finite`)."""
    if finite:
        return _field(default, Rule(lambda v: _number(v) and math.isfinite(v) and v > 0,
                                    "be positive and finite"), alias)
    return _field(default, Rule(lambda v: _number(v) and v > 0, "be positive"), alias)


def non_negative(default=dataclasses.MISSING, *, alias: str | None = None):
    """A finite number >= 0."""
    return _field(default, Rule(lambda v: _number(v) and math.isfinite(v) and v >= 0,
                                "be a finite number >= 0"), alias)


def finite(default=dataclasses.MISSING, *, alias: str | None = None):
    """Any finite number."""
    return _field(default, Rule(lambda v: _number(v) and math.isfinite(v), "be finite"), alias)


def between(default=dataclasses.MISSING, low: float = 0.0, high: float = 1.0, *,
            open_high: bool = False, alias: str | None = None):
    """A number in [low, high], or [low, high) with `open_high`."""
    bracket = ")" if open_high else "]"
    return _field(default, Rule(
        lambda v: _number(v) and low <= v and (v < high if open_high else v <= high),
        f"lie in [{low:g}, {high:g}{bracket}"), alias)


def integer(default=dataclasses.MISSING, *, min: int = 1, max: int | None = None,
            optional: bool = False, alias: str | None = None):
    """An int (not a bool) >= `min` (and <= `max`); None too when `optional`."""
    def test(v):
        if v is None:
            return optional
        return (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= min
                and (max is None or v <= max))

    if max is not None:
        expected = f"be an integer in [{min}, {max}]"
    else:
        expected = "be a positive integer" if min == 1 else f"be an integer >= {min}"
    return _field(default, Rule(test, expected + (" or none" if optional else "")), alias)


def choice(default=dataclasses.MISSING, options: tuple = (), *, alias: str | None = None):
    """One of `options`."""
    return _field(default, Rule(lambda v: v in options, f"be one of {tuple(options)}"), alias)


def boolean(default=dataclasses.MISSING, *, alias: str | None = None):
    """True or False (not 1 or "yes")."""
    return _field(default, Rule(lambda v: isinstance(v, bool), "be true or false"), alias)


# ---------------------------------------------------------------------------
# Walking a config tree.


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """{field: resolved annotation} of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _nested(kind) -> type | None:
    """The config dataclass a field of annotation `kind` holds, if it holds one."""
    return kind if isinstance(kind, type) and dataclasses.is_dataclass(kind) else None


@functools.cache
def leaves(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """{dotted path: (field, annotation)} of every leaf field of the config class `cls`."""
    out = {}
    for f in dataclasses.fields(cls):
        kind = field_types(cls)[f.name]
        inner = _nested(kind)
        if inner is None:
            out[f.name] = (f, kind)
        else:
            out.update({f"{f.name}.{path}": leaf for path, leaf in leaves(inner).items()})
    return out


@functools.cache
def _names(cls: type) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(exact paths and aliases -> path, bare leaf name -> the paths ending in it)."""
    exact, by_leaf = {}, {}
    groups = [p.rsplit(".", 1)[0] for p in leaves(cls) if "." in p]
    for group in groups:  # a path to a nested config names it whole
        parts = group.split(".")
        for i in range(1, len(parts) + 1):
            exact[".".join(parts[:i])] = ".".join(parts[:i])
    for path, (f, _) in leaves(cls).items():
        exact[path] = path
        by_leaf.setdefault(path.rsplit(".", 1)[-1], []).append(path)
        if _ALIAS in f.metadata:
            by_leaf.setdefault(f.metadata[_ALIAS], []).append(path)
    return exact, by_leaf


def resolve(config, name: str, what: str) -> str:
    """The dotted path `name` stands for in the config (class or instance) `config`.

    An exact path (`physics.friction`, or `physics` for the whole group) first,
    else the one leaf of that name or alias (`friction`). Unknown or ambiguous:
    `ConfigError` listing the dotted names.
    """
    cls = config if isinstance(config, type) else type(config)
    exact, by_leaf = _names(cls)
    if name in exact:
        return exact[name]
    paths = by_leaf.get(name, [])
    if len(paths) == 1:
        return paths[0]
    known = list(leaves(cls))
    if paths:
        raise ConfigError(f"ambiguous {what} field {name!r}: it could be any of {paths}; "
                          f"give the dotted name (known: {known})")
    raise ConfigError(f"unknown {what} field(s) [{name!r}]; known: {known}")


def resolve_all(config, names, what: str) -> dict[str, str]:
    """{name: dotted path} for each of `names`; all unknown names in one `ConfigError`."""
    cls = config if isinstance(config, type) else type(config)
    exact, by_leaf = _names(cls)
    unknown = sorted(n for n in names if n not in exact and n not in by_leaf)
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; known: {list(leaves(cls))}")
    return {n: resolve(cls, n, what) for n in names}


def leaf_type(config, path: str):
    """The annotation of the leaf at dotted `path` (None for a group)."""
    cls = config if isinstance(config, type) else type(config)
    leaf = leaves(cls).get(path)
    return None if leaf is None else leaf[1]


def get(config, path: str):
    """The value at dotted `path` of a config instance."""
    for part in path.split("."):
        config = getattr(config, part)
    return config


def _set(config, parts: list[str], value):
    head = parts[0]
    if len(parts) > 1:
        value = _set(getattr(config, head), parts[1:], value)
    return dataclasses.replace(config, **{head: value})


def replace(config, overrides: Mapping[str, Any], what: str):
    """A copy of the config instance with `overrides` ({name: value}, names as `resolve` takes) set.

    Not validated. In order: a later name for the same field wins, as in
    `dict.update` of merged overrides.
    """
    paths = resolve_all(config, overrides, what)
    for name, value in overrides.items():
        config = _set(config, paths[name].split("."), value)
    return config


# ---------------------------------------------------------------------------
# Checks and (de)serialisation.


def check(config, what: str, prefix: str = ""):
    """Raises `ConfigError` at the first field whose declared rule rejects its value; returns `config`.

    Nested config dataclasses are checked too, their fields named by dotted
    path: "{what} field physics.friction must be positive, got -1.0".
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        path = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check(value, what, path + ".")
            continue
        rule = f.metadata.get(_RULE)
        if rule is not None and not rule.test(value):
            raise ConfigError(f"{what} field {path} must {rule.expected}, got {value!r}")
    return config


def to_json(config) -> dict:
    """The config as nested dicts of JSON values: tuples as lists, inf and NaN as null."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return plain(dataclasses.asdict(config))


def _typed(value, kind):
    """A JSON value back as the annotation `kind`: null floats as inf, lists as tuples."""
    if value is None and kind is float:
        return math.inf
    if isinstance(value, list) and typing.get_origin(kind) is tuple:
        return tuple(value)
    return value


def from_dict(cls: type, record: Mapping, what: str):
    """A `cls()` with the fields of `record` set: nested dicts (`to_json`) or the flat names
    `resolve` takes (records written before fields were grouped). Not validated."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{what} must be a JSON object, got {type(record).__name__}")
    flat = {}

    def walk(items: Mapping, prefix: str):
        for key, value in items.items():
            path = prefix + key
            if isinstance(value, Mapping) and leaf_type(cls, path) is None:
                walk(value, path + ".")  # a group written nested
            else:
                flat[path] = value

    walk(record, "")
    paths = resolve_all(cls, flat, what)
    return replace(cls(), {name: _typed(value, leaf_type(cls, paths[name]))
                           for name, value in flat.items()}, what)
