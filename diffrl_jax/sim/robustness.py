"""Grasp robustness: how often a grasp still holds when placed a little off.

A grasp that passes the hold test may sit in a narrow basin: move the palm a
few millimetres and it fails. A generative model trained on such grasps
reproduces them only up to its own precision, so its samples near fragile
grasps fail while those near robust ones hold. Robustness measures that
basin: the fraction of `samples` perturbed copies of a grasp (palm
translation, palm rotation and finger joints jittered by truncated Gaussian
noise) that pass the hold test.

The default noise is the precision of the diffusion model measured on the
shared objects: its samples lie a median 4-5 mm (palm position) from their
nearest training grasp, about 2.5 mm per axis.

`perturb` is pure JAX (jit/vmap); `robustness` is the host-side driver that
runs the perturbed copies through `validate.validate_dataset`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax import configs
from diffrl_jax.configs import integer, non_negative, positive
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.hand import constants

LABEL = "robustness"


@dataclasses.dataclass(frozen=True)
class PerturbConfig:
    """Perturbed copies per grasp and their noise (standard deviations)."""

    samples: int = integer(16, min=1)
    translation_m: float = non_negative(0.0025)  # palm position, each object-frame axis
    rotation_rad: float = non_negative(0.04)  # palm rotation, each axis of a palm-frame rotation vector
    joints_rad: float = non_negative(0.05)  # each finger joint
    truncate: float = positive(2.0, finite=True)  # noise is clipped at this many standard deviations
    seed: int = 0

    def validate(self) -> PerturbConfig:
        return configs.check(self, LABEL)

    def replace(self, **overrides) -> PerturbConfig:
        return configs.replace(self, overrides, LABEL).validate()


def perturb(grasps: jax.Array, key: jax.Array, config: PerturbConfig) -> jax.Array:
    """grasps [..., 31] -> perturbed copies [..., samples, 31].

    Translation moves the palm in the object frame; rotation turns it about
    its own origin; joints stay inside their limits (a joint that starts
    outside may not move further out, as `refine_env.correct` treats it).
    """
    grasps = jnp.asarray(grasps)
    shape = grasps.shape[:-1] + (config.samples,)
    kt, kr, kq = jax.random.split(key, 3)
    lim = config.truncate

    def noise(k, n, std):
        return std * jax.random.truncated_normal(k, -lim, lim, shape + (n,), grasps.dtype)

    t, rot, q = grasp_lib.split_grasps(grasps[..., None, :])
    t = t + noise(kt, 3, config.translation_m)
    rot = rot @ rotations.rotvec_to_matrix(noise(kr, 3, config.rotation_rad))
    low = jnp.asarray(constants.JOINT_RANGES[:, 0], grasps.dtype)
    high = jnp.asarray(constants.JOINT_RANGES[:, 1], grasps.dtype)
    moved = q + noise(kq, constants.NUM_JOINTS, config.joints_rad)
    q = jnp.clip(moved, jnp.minimum(low, q), jnp.maximum(high, q))
    return grasp_lib.make_grasps(t, rot, q).astype(grasps.dtype)


def perturbed_holds(dataset, protocol, config: PerturbConfig = PerturbConfig(), *,
                    backend: str = "mujoco", budget=None, nthread: int | None = None,
                    progress: Callable[[int], None] | None = None):
    """Perturbed copies of every grasp of `dataset` and their hold results.

    Returns (copies [N, samples, 31] float64, held [N, samples] bool, timings
    {"grasps_per_s", "run_s"}); `progress` counts simulated copies. The copies
    of grasp i are the same for any dataset holding it at row i (the key is
    `fold_in(PRNGKey(seed), i)`), so the results are deterministic.
    """
    from diffrl_jax.sim import bank, validate

    config.validate()
    n, k = len(dataset), config.samples
    if n == 0:
        return (np.zeros((0, k, grasp_lib.GRASP_DIM)), np.zeros((0, k), bool),
                {"grasps_per_s": 0.0, "run_s": 0.0})
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.seed), i))(jnp.arange(n))
    copies = jax.jit(jax.vmap(lambda g, key: perturb(g, key, config)))(
            jnp.asarray(dataset.grasps, jnp.float32), keys)
    copies = np.asarray(copies, np.float64)
    rows = np.repeat(np.arange(n), k)
    perturbed = dataclasses.replace(dataset.take(rows), grasps=copies.reshape(n * k, -1), extras={})
    t = time.perf_counter()
    _, result = validate.validate_dataset(perturbed, protocol, backend=backend,
                                          budget=budget or bank.ObjectBudget(), nthread=nthread,
                                          progress=progress)
    run_s = time.perf_counter() - t
    held = np.asarray(result["success"], bool).reshape(n, k)
    return copies, held, {"grasps_per_s": n * k / max(run_s, 1e-9), "run_s": run_s}


def robustness(dataset, protocol, config: PerturbConfig = PerturbConfig(), **kwargs
               ) -> tuple[np.ndarray, dict]:
    """Per grasp of `dataset` [N]: the fraction of its perturbed copies that hold.

    Returns (robustness [N] float in [0, 1], timings); keyword arguments as
    for `perturbed_holds`.
    """
    _, held, timings = perturbed_holds(dataset, protocol, config, **kwargs)
    return held.mean(axis=1), timings
