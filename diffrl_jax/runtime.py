"""Process-level JAX setup for the shell (CLI, tests, benchmarks, experiments).

The library itself never touches global configuration; entry points call
`configure()` once, before JAX creates its backend.

Why the XLA flag: on CPU, XLA's concurrency-optimised scheduler deadlocks on
MJX programs with larger batches (every worker thread parks and the program
never finishes; measured with jax 0.10.2 on a batch of 48 hand worlds, not on
24). Turning that scheduler off costs nothing measurable here. Library users
who build their own MJX programs on CPU should set the same flag.
"""

from __future__ import annotations

import os
import pathlib

CPU_XLA_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "diffrl_jax" / "jax"


def xla_flags(existing: str = "") -> str:
    """`existing` XLA_FLAGS plus ours, keeping any value the user set."""
    flags = existing.split()
    names = {f.split("=", 1)[0] for f in flags}
    flags += [f for f in CPU_XLA_FLAGS if f.split("=", 1)[0] not in names]
    return " ".join(flags)


def usable_cpus() -> int:
    """CPUs this process may run on (Linux: honours container CPU limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure(cache_dir: str | os.PathLike | None = None) -> None:
    """Sets the XLA flags and turns on JAX's persistent compilation cache.

    `cache_dir` defaults to $DIFFRL_JAX_CACHE or ~/.cache/diffrl_jax/jax; an
    empty string turns the cache off.
    """
    os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", ""))
    import jax

    if cache_dir is None:
        cache_dir = os.environ.get("DIFFRL_JAX_CACHE", str(DEFAULT_CACHE))
    if str(cache_dir):
        jax.config.update("jax_compilation_cache_dir", str(cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
