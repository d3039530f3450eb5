"""Errors a user can cause: bad paths, malformed data, bad configs.

The CLI catches `DiffrlError`, prints `error: <message>` and exits non-zero,
so every message must say which file, record or key is wrong and what was
expected. Programming errors (wrong shapes passed between library functions)
stay `ValueError`/`TypeError` and keep their tracebacks.
"""


class DiffrlError(Exception):
    """Base of all errors caused by user input rather than by a bug."""


class DataError(DiffrlError):
    """Missing or malformed data: dataset directories, grasp files, meshes."""


class ConfigError(DiffrlError):
    """An invalid configuration value or combination of values."""
