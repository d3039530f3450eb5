"""Shared test setup: XLA flags and JAX's persistent compilation cache.

MJX steps take tens of seconds to compile on a CPU; the cache makes the
second run of the suite on a machine cheap. Set here (via
`diffrl_jax.runtime.configure`), not at import time of the library, which
never touches global JAX configuration.
"""

from diffrl_jax import runtime

runtime.configure()
