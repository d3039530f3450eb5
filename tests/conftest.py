"""Shared test setup: JAX's persistent compilation cache.

MJX steps take tens of seconds to compile on a CPU; the cache makes the
second run of the suite on a machine cheap. Set here, not at import time of
the library, which never touches global JAX configuration.
"""

import os
import pathlib

import jax

_CACHE = pathlib.Path(
    os.environ.get("DIFFRL_JAX_CACHE", pathlib.Path.home() / ".cache" / "diffrl_jax" / "jax")
)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
