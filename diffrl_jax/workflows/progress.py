"""Progress callbacks of the workflows: bars as context managers, warnings as lines.

A workflow takes `bars(desc, total, unit, initial=0)`, a context manager of
a `Bar` per phase, and `warn(message)`; the defaults show nothing and print
to stderr. `TqdmBars` is what the command line passes.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Protocol


class Bar(Protocol):
    """What a workflow asks of a progress bar (tqdm's names)."""

    total: int | float | None

    def update(self, n: int = 1) -> Any: ...

    def set_description(self, desc: str) -> Any: ...


class _NoBar:
    total = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass


def no_bars(desc: str, total: int, unit: str, initial: int = 0):
    """Bars that show nothing."""
    return contextlib.nullcontext(_NoBar())


def warn_stderr(message: str) -> None:
    """A warning as one line on stderr."""
    print(message, file=sys.stderr)


class TqdmBars:
    """tqdm bars on stderr (hidden when it is not a terminal); `current` is the latest one."""

    def __init__(self):
        self.current = _NoBar()

    def __call__(self, desc: str, total: int, unit: str, initial: int = 0):
        from tqdm import tqdm

        self.current = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=None)
        return self.current
