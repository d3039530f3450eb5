"""Shared test setup: XLA flags, four CPU devices and JAX's persistent compilation cache.

MJX steps take tens of seconds to compile on a CPU; the cache makes the
second run of the suite on a machine cheap. Set here (via
`diffrl_jax.runtime.configure`), not at import time of the library, which
never touches global JAX configuration.

The host platform is split into four devices (unless XLA_FLAGS already says
how many) so the sharding tests run on any machine; everything else keeps
running on the first device, as JAX places uncommitted work there.
"""

import os

from diffrl_jax import runtime

TEST_DEVICES = 4
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={TEST_DEVICES}").strip()
runtime.configure()
