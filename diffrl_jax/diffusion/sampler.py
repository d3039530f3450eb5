"""Samplers: DDPM over all steps or DDIM with K steps, each one `lax.scan`.

`sample_loop` runs any denoiser `(x_t [B, D], t []) -> output [B, D]`, so it
is tested on an analytic denoiser too. `make_grasp_sampler` binds the
Denoiser, optional classifier-free guidance and the grasp post-processing
(un-normalise, re-orthonormalise rot6d, clip joints to their limits) into
one jitted `(params, normaliser, cond, key) -> grasps [B, 31]` per
configuration; new keys, conditions or parameters reuse its compilation.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax import parallel
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.diffusion import schedule as schedule_lib
from diffrl_jax.errors import ConfigError

SAMPLERS = ("ddim", "ddpm")
DEFAULT_DDIM_STEPS = 10


def timesteps_for(method: str, num_train_steps: int, steps: int | None) -> np.ndarray:
    """The `[K]` timesteps a sampler visits, T-1 first (static)."""
    if method == "ddpm":
        if steps not in (None, num_train_steps):
            raise ConfigError(f"the DDPM sampler runs all {num_train_steps} steps; got --steps {steps} "
                              "(use the ddim sampler for fewer)")
        return np.arange(num_train_steps - 1, -1, -1, dtype=np.int32)
    if method == "ddim":
        steps = DEFAULT_DDIM_STEPS if steps is None else steps
        if not 1 <= steps <= num_train_steps:
            raise ConfigError(f"DDIM steps must lie in [1, {num_train_steps}], got {steps}")
        return schedule_lib.ddim_timesteps(num_train_steps, steps)
    raise ConfigError(f"sampler must be one of {SAMPLERS}, got {method!r}")


def sample_loop(denoise: Callable, schedule: schedule_lib.Schedule, x_T, key, timesteps: np.ndarray,
                method: str = "ddim", prediction: str = "v", x0_clip: float = 0.0, eta: float = 0.0):
    """Runs the reverse process from x_T `[B, D]` over `timesteps` `[K]`; returns x_0 `[B, D]`.

    denoise(x_t, t) with t a `[]` int32 predicts eps or v (`prediction`).
    `x0_clip` > 0 bounds the x_0 estimate (eps is made consistent with it).
    DDPM expects every timestep; DDIM any decreasing subset (`eta` = 0:
    deterministic).
    """
    timesteps = np.asarray(timesteps, np.int32)
    previous = np.append(timesteps[1:], -1).astype(np.int32)

    def body(x, inputs):
        t, t_prev, step_key = inputs
        x0, eps = schedule_lib.predict_x0_eps(schedule, x, t, denoise(x, t), prediction)
        if x0_clip > 0:
            x0 = jnp.clip(x0, -x0_clip, x0_clip)
            abar = schedule.alphas_cumprod[t]
            eps = (x - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
        if method == "ddpm":
            x = schedule_lib.ddpm_step(schedule, x, t, x0, jax.random.normal(step_key, x.shape, x.dtype))
        else:
            noise = jax.random.normal(step_key, x.shape, x.dtype) if eta > 0 else None
            x = schedule_lib.ddim_step(schedule, x, t, t_prev, x0, eps, noise, eta)
        return x, None

    keys = jax.random.split(key, len(timesteps))
    x, _ = jax.lax.scan(body, x_T, (jnp.asarray(timesteps), jnp.asarray(previous), keys))
    return x


def postprocess_grasps(grasps):
    """`[..., 31]` -> a valid grasp: rot6d re-orthonormalised, joints clipped to their limits."""
    rot6d = rotations.matrix_to_rot6d(rotations.rot6d_to_matrix(grasps[..., grasp_lib.ROT6D]))
    grasps = jnp.concatenate([grasps[..., grasp_lib.TRANSLATION], rot6d, grasps[..., grasp_lib.JOINTS]], -1)
    return grasp_lib.clip_to_joint_limits(grasps)


def guided_denoiser(model, params, cond, guidance_scale: float = 1.0, pose=None):
    """`(x_t, t) -> output` of `model` for one condition `[C]`/`[1, C]` or `[B, C]`.

    pose: the resting pose condition `[P]`/`[1, P]` or `[B, P]` of a model
    with a pose input, or None (the pose unknown). guidance_scale w != 1
    mixes in the null condition (object and pose):
    uncond + w (cond - uncond); w = 1 is plain conditional sampling.
    """
    cond = jnp.reshape(cond, (-1, model.cond_dim))
    if pose is not None:
        pose = jnp.reshape(pose, (-1, model.pose_dim))

    def denoise(x, t):
        t = jnp.reshape(t, (1,))  # one timestep for the whole batch: conditioning runs once
        out = model.apply(params, x, t, cond, None, pose)
        if guidance_scale == 1.0:
            return out
        null = jnp.ones((1,), bool)
        uncond = model.apply(params, x, t, cond[:1], null, None if pose is None else pose[:1], null)
        return uncond + guidance_scale * (out - uncond)

    return denoise


def make_grasp_sampler(model, schedule: schedule_lib.Schedule, *, num_samples: int,
                       method: str = "ddim", steps: int | None = None, prediction: str = "v",
                       guidance_scale: float = 1.0, x0_clip: float = 0.0, eta: float = 0.0,
                       postprocess: Callable | None = postprocess_grasps, mesh=None):
    """jitted `(params, normaliser, cond, key, pose=None) -> samples [num_samples, D]`.

    cond: `[C]` (one object for the whole batch, the fast path) or
    `[num_samples, C]`; pose (a model with a pose input): `[P]` or
    `[num_samples, P]`, None for none. Samples are un-normalised and, by default,
    post-processed into valid grasps (`postprocess=None` skips that).
    `mesh`: the batch is split over its devices (num_samples must divide);
    the noise is the same whatever the split, so are the samples.
    """
    timesteps = timesteps_for(method, schedule.num_steps, steps)
    parallel.check_divisible(num_samples, mesh, "sample batch")

    def sample(params, normaliser, cond, key, pose=None):
        x_T = jax.random.normal(key, (num_samples, model.data_dim), jnp.float32)
        x_T = parallel.constrain_batch(x_T, mesh)
        denoise = guided_denoiser(model, params, cond, guidance_scale, pose)
        step_key = jax.random.fold_in(key, 1)
        x = sample_loop(denoise, schedule, x_T, step_key, timesteps, method, prediction, x0_clip, eta)
        x = normaliser.denormalise(x)
        return x if postprocess is None else postprocess(x)

    return jax.jit(sample)
