"""Proximal policy optimisation as pure functions over a brax `Env`.

Everything here is jittable and free of host side effects; the host-side loop
(progress, evaluation, checkpoints) lives elsewhere and only calls

    state = init(config, env, key)
    iteration = jax.jit(make_iteration(config, env))   # or make_block(...)
    state, metrics = iteration(state)

or, for sweeps over seeds, `jax.jit(jax.vmap(make_train(config, env)))(keys)`.

Laid out as brax's PPO (https://arxiv.org/abs/1707.06347, brax/training/agents/ppo):
- `config`: `PPOConfig`, the hyperparameters, validated on construction.
- `networks`: policy and value networks, rebuilt from JSON kwargs stored with
  a checkpoint (`network_kwargs`, `networks_from_kwargs`), and `make_policy`.
- `losses`: GAE (truncation kept apart from termination) and the clipped PPO loss.
- `train`: the learner state `TrainState`, `init`, the rollout, one iteration,
  blocks of iterations, `make_train`, and sharding over a device mesh.

Every public name is re-exported here: `from diffrl_jax.rl import ppo; ppo.init(...)`.

Axes in shapes: B envs (`num_envs`), T time (`unroll_length`), N = T*B
transitions, O observation size, A action size.
"""

from diffrl_jax.rl.ppo.config import PPOConfig
from diffrl_jax.rl.ppo.losses import Batch, compute_gae, ppo_loss
from diffrl_jax.rl.ppo.networks import (
    PPONetworkParams,
    make_networks,
    make_policy,
    network_kwargs,
    networks_from_kwargs,
)
from diffrl_jax.rl.ppo.train import (
    TrainState,
    Transition,
    init,
    make_block,
    make_iteration,
    make_optimizer,
    make_train,
    sgd_step,
    shard_state,
    state_shardings,
    update,
)

__all__ = [
    "Batch",
    "PPOConfig",
    "PPONetworkParams",
    "TrainState",
    "Transition",
    "compute_gae",
    "init",
    "make_block",
    "make_iteration",
    "make_networks",
    "make_optimizer",
    "make_policy",
    "make_train",
    "network_kwargs",
    "networks_from_kwargs",
    "ppo_loss",
    "sgd_step",
    "shard_state",
    "state_shardings",
    "update",
]
