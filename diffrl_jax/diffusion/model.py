"""The denoiser: an MLP-ResNet with a sinusoidal time embedding and FiLM conditioning.

The network sees a noisy normalised sample x_t `[B, D]`, its timestep and
the object's shape encoding (`objects.encoding`, `[C]`), and predicts eps or
v (`schedule.PREDICTIONS`). Time and object are embedded, summed, and scale
and shift every residual block's normalised input (FiLM). A learned null
embedding replaces the object's for classifier-free guidance.

With `pose_dim` > 0 the network also sees how the object lies: its
up-direction (world +z in the object frame, `sim.resting`) `[B, 3]` or
`[1, 3]`, embedded and added like the object's. A second learned null
embedding stands for "pose unknown": it replaces the pose's where
`drop_pose` is set or no pose is given, so one model samples both for a
resting pose and without one.

Timesteps and conditions may have a batch of 1 while x has B: the sampler
gives every sample of a batch the same timestep (and, for one object, the
same condition), so the conditioning path then runs once per step instead
of B times, which keeps sampling cost close to the trunk's matmuls.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


def timestep_embedding(t, dim: int, num_train_steps: int, max_period: float = 10000.0):
    """t `[B]` -> `[B, dim]` sin/cos features; t is rescaled to [0, 1000) as in DDPM."""
    half = dim // 2
    frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = (t.astype(jnp.float32) * (1000.0 / num_train_steps))[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class ResBlock(nn.Module):
    """x + Dense(silu(Dense(silu(FiLM(LayerNorm(x)))))), the last Dense zero-initialised."""

    width: int

    @nn.compact
    def __call__(self, x, conditioning):
        scale, shift = jnp.split(nn.Dense(2 * self.width, name="film")(conditioning), 2, axis=-1)
        h = nn.LayerNorm()(x) * (1.0 + scale) + shift
        h = nn.Dense(self.width)(nn.silu(h))
        h = nn.Dense(self.width, kernel_init=nn.initializers.zeros)(nn.silu(h))
        return x + h


class Denoiser(nn.Module):
    """(x_t `[B, D]`, t `[B]` or `[1]`, cond `[B, C]` or `[1, C]`, drop_cond `[B]`/`[1]` bool,
    pose `[B, P]`/`[1, P]` or None, drop_pose `[B]`/`[1]` bool) -> `[B, D]`.

    `cond_scale` multiplies the raw encoding (metres) into unit range;
    `pose_dim` 0: no pose input (a pose given is then an error).
    """

    data_dim: int
    cond_dim: int
    width: int = 256
    depth: int = 3
    time_dim: int = 64
    num_train_steps: int = 100
    cond_scale: float = 10.0
    pose_dim: int = 0

    @nn.compact
    def __call__(self, x, t, cond, drop_cond=None, pose=None, drop_pose=None):
        t = jnp.reshape(t, (-1,))
        cond = jnp.reshape(cond, (-1, self.cond_dim))
        time = timestep_embedding(t, self.time_dim, self.num_train_steps)
        time = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(time)))
        obj = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(cond * self.cond_scale)))
        null = self.param("null_cond", nn.initializers.normal(0.02), (self.width,))
        if drop_cond is not None:
            obj = jnp.where(jnp.reshape(drop_cond, (-1, 1)), null, obj)
        conditioning = time + obj
        if self.pose_dim:
            null_pose = self.param("null_pose", nn.initializers.normal(0.02), (self.width,))
            if pose is None:
                conditioning = conditioning + null_pose
            else:
                pose = jnp.reshape(pose, (-1, self.pose_dim))
                embedded = nn.Dense(self.width, name="pose_out")(nn.silu(nn.Dense(self.width, name="pose_in")(pose)))
                if drop_pose is not None:
                    embedded = jnp.where(jnp.reshape(drop_pose, (-1, 1)), null_pose, embedded)
                conditioning = conditioning + embedded
        elif pose is not None:
            raise ValueError("this Denoiser has no pose input (pose_dim=0)")
        conditioning = nn.silu(conditioning)  # [1 or B, width]
        h = nn.Dense(self.width, name="input")(x)
        for i in range(self.depth):
            h = ResBlock(self.width, name=f"block_{i}")(h, conditioning)
        h = nn.silu(nn.LayerNorm()(h))
        return nn.Dense(self.data_dim, kernel_init=nn.initializers.zeros, name="output")(h)


def model_kwargs(config, data_dim: int, cond_dim: int, pose_dim: int = 0) -> dict:
    """The keyword arguments of `Denoiser` for `config` (a DiffusionConfig); JSON-able."""
    kwargs = {
        "data_dim": int(data_dim),
        "cond_dim": int(cond_dim),
        "width": int(config.width),
        "depth": int(config.depth),
        "time_dim": int(config.time_dim),
        "num_train_steps": int(config.num_diffusion_steps),
        "cond_scale": float(config.cond_scale),
    }
    if pose_dim:  # absent otherwise, so checkpoints without a pose read as before
        kwargs["pose_dim"] = int(pose_dim)
    return kwargs


def make_denoiser(**kwargs) -> Denoiser:
    """A Denoiser from `model_kwargs` (as written next to a checkpoint)."""
    return Denoiser(**kwargs)
