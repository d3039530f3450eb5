"""Pieces every `diffrl` command shares: argument types, FIELD=VALUE options,
the lock on a command's output, the experiment scripts' shell. Output files
are written by `diffrl_jax.files`."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import sys

from diffrl_jax.errors import ConfigError, DiffrlError
from diffrl_jax.files import run_lock, write_errors_reported, write_json_atomic


def resume_step(directory, primary: bool = True) -> int | None:
    """`checkpoint.resume_step`, warning on stderr (imported lazily: the CLI starts without JAX)."""
    from diffrl_jax import checkpoint

    return checkpoint.resume_step(directory, primary)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be an integer >= 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError("must be a finite number >= 0")
    return value


def unit_interval(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = float(text)
    if not (0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError("must be a number in [0, 1]")
    return value


def positive_floats(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated positive finite numbers (e.g. object scales)."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive finite numbers, got {text!r}")
    return values


def non_negative_floats(text: str) -> tuple[float, ...]:
    """argparse type: comma-separated finite numbers >= 0 (e.g. one exploration std per step)."""
    try:
        return tuple(non_negative_float(x) for x in text.split(","))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {text!r}") from None


def parse_assignments(items, flag: str) -> dict[str, str]:
    """`FIELD=VALUE` strings of a repeatable option -> {field: value text}."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"{flag} expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def typed_assignments(items, flag: str, config, what: str) -> dict:
    """`FIELD=VALUE` strings of `flag` -> {field: value typed by the dataclass `config`'s annotations}."""
    from diffrl_jax.overrides import parse_overrides

    return parse_overrides(config, parse_assignments(items, flag), what)


def save_json_result(out, payload: dict) -> None:
    """A script's `--out FILE.json`: parents made, written atomically; a directory is a user error."""
    out = pathlib.Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, payload)


def save_out_json(args: argparse.Namespace, result: dict) -> None:
    """`run_script`'s save for scripts whose only file is `--out FILE.json` (optional)."""
    if args.out:
        save_json_result(args.out, result)


def add_distributed_options(parser: argparse.ArgumentParser) -> None:
    """--coordinator/--num-processes/--process-id (else $JAX_COORDINATOR_ADDRESS, ...)."""
    group = parser.add_argument_group(
        "several processes", "run as one of N processes (jax.distributed); defaults come from "
        "$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and $JAX_PROCESS_ID")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    group.add_argument("--num-processes", type=positive_int, metavar="N")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")


def join_processes(args: argparse.Namespace) -> None:
    """Joins jax.distributed when the command was given (or inherited) process settings."""
    from diffrl_jax import parallel

    if not hasattr(args, "coordinator"):
        return
    config = parallel.DistributedConfig.from_env(args.coordinator, args.num_processes, args.process_id)
    if not config.enabled:
        return
    # The collectives' C++ code (gloo) logs to file descriptor 1; keep the
    # command's stdout (its --json output) clean by sending fd 1 to stderr
    # and printing through a copy of the original stdout.
    sys.stdout.flush()
    stdout = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(stdout, "w", buffering=1)
    parallel.initialize(config)


EXIT_USER_ERROR = 2


def _process_index(args: argparse.Namespace) -> int:
    """This process's index when the command joined several (`join_processes`), else 0."""
    if not hasattr(args, "coordinator"):
        return 0
    from diffrl_jax import parallel

    if not parallel.DistributedConfig.from_env(args.coordinator, args.num_processes, args.process_id).enabled:
        return 0
    import jax

    return jax.process_index()


def output_lock(args: argparse.Namespace, what: str):
    """The run lock (`files.run_lock`) on what a command writes, held for as long as it runs.

    Every command that writes names its output `out` (`--out DIR|FILE`, or
    the positional of `diffrl data example`); a command without one, or
    given none, takes no lock. `out_is_file` (a parser default) marks a file
    whose directory must already exist. Of several processes, process 0
    holds it: the others write beside it under its lock.
    """
    out = getattr(args, "out", None)
    if not out or _process_index(args) != 0:
        return contextlib.nullcontext()
    return run_lock(out, what, create_parent=not getattr(args, "out_is_file", False))


def command_name(args: argparse.Namespace) -> str:
    """`diffrl train`, `diffrl data example`: the parsed command's name."""
    words = [getattr(args, name, None) for name in ("command", "data_command")]
    return " ".join(["diffrl", *(w for w in words if w)])


def run_command(args: argparse.Namespace) -> int:
    """Runs a parsed `diffrl` command (`args.func`) under the lock on its output (`output_lock`).

    `diffrl` itself, the pipeline's stages and the sweeps' in-process runs
    all come through here, so every writer is locked the same way.
    """
    with write_errors_reported(), output_lock(args, command_name(args)):
        return args.func(args)


def run_script(argv, parser: argparse.ArgumentParser, run, show, save=None) -> int:
    """The shell of an experiment script's `main(argv)`; returns the exit status.

    Parses argv, configures JAX (`runtime.configure`), then `result =
    run(args)` and `save(args, result)` under the lock on `args.out` (when
    the script has one: `output_lock`); prints the result as JSON with
    `--json`, else `show(result)`. A user error (`DiffrlError`) in run or
    save prints `error: ...` and returns 2, before anything is printed.
    """
    args = parser.parse_args(argv)
    from diffrl_jax import runtime

    runtime.configure()
    try:
        with write_errors_reported(), output_lock(args, parser.prog):
            result = run(args)
            if save is not None:
                save(args, result)
    except DiffrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
    return 0
