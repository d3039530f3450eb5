"""Errors a user can cause: bad paths, malformed data, bad configs.

The CLI catches `DiffrlError`, prints `error: <message>` and exits non-zero,
so every message must say which file, record or key is wrong and what was
expected. Programming errors (wrong shapes passed between library functions)
stay `ValueError`/`TypeError` and keep their tracebacks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


class DiffrlError(Exception):
    """Base of all errors caused by user input rather than by a bug."""


class DataError(DiffrlError):
    """Missing or malformed data: dataset directories, grasp files, meshes."""


class ConfigError(DiffrlError):
    """An invalid configuration value or combination of values."""


def check_fields(config, names: Iterable[str], what: str) -> None:
    """Raises `ConfigError` naming `names` that are not fields of the dataclass `config`.

    `what` names the config in the message ("lift protocol": "unknown lift
    protocol field(s) [...]; known: [...]").
    """
    known = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(f"unknown {what} field(s) {unknown}; known: {known}")
