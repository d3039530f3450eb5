"""Pieces every `diffrl` command shares: argument types, FIELD=VALUE options,
and output files that are never left half-written."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile

from diffrl_jax.errors import ConfigError, DiffrlError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def parse_assignments(items, flag: str) -> dict[str, str]:
    """`FIELD=VALUE` strings of a repeatable option -> {field: value text}."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"{flag} expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def write_text_atomic(path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise DiffrlError(f"directory {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))


def write_jsonl_atomic(path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path, key: str, upto: int | None = None) -> list[dict]:
    """The records of a JSONL log, keeping those with `record[key] <= upto`.

    Used on resume to drop what was logged after the last checkpoint.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if upto is None or r[key] <= upto]


def save_figure_atomic(fig, path, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
