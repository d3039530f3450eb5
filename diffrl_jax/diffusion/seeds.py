"""Several seeds of one diffusion model, trained and sampled as one program each.

A seed fixes a run's initial parameters, its minibatches and its noise. S
train states stacked on a leading axis (`init_seeds`) and the training block
`vmap`ped over that axis (`make_seeds_block`) train all S runs in one
compiled call, the `jit(vmap(train))` shape of purejaxrl. Seed i of the
stack follows the same arithmetic as a single run with that seed
(`init_train_state(config, model, seed)` then `make_train_block`); the two
differ only by float rounding of the batched matrix products.

Every function takes the stacked `TrainState` (leaves `[S, ...]`); the data
is shared by all seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax.diffusion import sampler as sampler_lib
from diffrl_jax.diffusion.config import DiffusionConfig
from diffrl_jax.diffusion.model import Denoiser
from diffrl_jax.diffusion.train import (TrainData, TrainState, init_train_state, make_schedule,
                                        make_train_block)
from diffrl_jax.errors import ConfigError

__all__ = ["init_seeds", "make_seeds_block", "run_seeds", "seed_state", "make_seeds_sampler", "spread"]


def init_seeds(config: DiffusionConfig, model: Denoiser, seeds: Sequence[int]) -> TrainState:
    """S fresh train states stacked on axis 0, state i as `init_train_state(config, model, seeds[i])`."""
    seeds = np.asarray(seeds)
    if seeds.ndim != 1 or len(seeds) == 0:
        raise ConfigError(f"seeds must be a non-empty list of integers, got {seeds.tolist()}")
    if len(set(seeds.tolist())) != len(seeds):
        raise ConfigError(f"seeds must differ from each other, got {seeds.tolist()}")
    if seeds.min() < 0 or seeds.max() >= 2**31:
        raise ConfigError(f"seeds must lie in [0, 2^31), got {seeds.tolist()}")
    config.validate()
    init = jax.vmap(lambda seed: init_train_state(config, model, seed))
    return jax.jit(init)(jnp.asarray(seeds, jnp.int32))


def make_seeds_block(config: DiffusionConfig, model: Denoiser, steps: int | None = None):
    """jitted `(states [S], data) -> (states [S], metrics)`: `make_train_block` for every seed.

    metrics: the block's mean loss and gradient norm and its last learning
    rate, each `[S]`. The data is not batched: every seed draws its own
    minibatches from the same samples.
    """
    block = make_train_block(config, model, steps)
    return jax.jit(jax.vmap(block, in_axes=(0, None)))


def run_seeds(states: TrainState, data: TrainData, config: DiffusionConfig, model: Denoiser,
              until_step: int | None = None,
              on_block: Callable[[TrainState, dict], None] | None = None) -> TrainState:
    """Trains the stacked `states` until `until_step` (default config.num_steps) steps.

    The host loop (not jittable): after each block it calls
    `on_block(states, metrics)` with numpy metrics `[S]`. All seeds share a
    step count. Full blocks share one program; a shorter last one compiles
    a second.
    """
    until_step = config.num_steps if until_step is None else int(until_step)
    compiled = {}
    done = int(states.step[0])
    while done < until_step:
        steps = min(config.block_steps, until_step - done)
        if steps not in compiled:
            compiled[steps] = make_seeds_block(config, model, steps)
        states, metrics = compiled[steps](states, data)
        done += steps
        if on_block is not None:
            on_block(states, {name: np.asarray(values) for name, values in metrics.items()})
    return states


def seed_state(states: TrainState, index: int) -> TrainState:
    """The train state of seed `index` of a stack (leaves without the seed axis)."""
    return jax.tree.map(lambda leaf: leaf[index], states)


def make_seeds_sampler(config: DiffusionConfig, model: Denoiser, num_samples: int, method: str = "ddim",
                       steps: int | None = None, guidance_scale: float = 1.0):
    """jitted `(params [S], normaliser, cond [C], keys [S]) -> grasps [S, num_samples, 31]`.

    `sampler.make_grasp_sampler` for every seed's parameters at once, each
    seed with its own key; one object condition for the whole call.
    """
    sample = sampler_lib.make_grasp_sampler(
        model, make_schedule(config), num_samples=num_samples, method=method, steps=steps,
        prediction=config.prediction, guidance_scale=guidance_scale, x0_clip=config.x0_clip)
    return jax.jit(jax.vmap(sample, in_axes=(0, None, None, 0)))


def spread(values) -> dict:
    """{"mean", "std", "min", "max", "n"} of per-seed figures; std with ddof 1 (0 for one seed).

    None and NaN entries (a figure a seed could not give) are left out;
    with none left every statistic is None.
    """
    kept = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if kept.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(kept.mean()), "std": float(kept.std(ddof=1)) if kept.size > 1 else 0.0,
            "min": float(kept.min()), "max": float(kept.max()), "n": int(kept.size)}
