"""PPO's learner state and training steps: init, rollout, iteration, blocks of
iterations, and their sharding over a device mesh. Pure and jittable; the
host-side loop (progress, evaluation, checkpoints) lives in `diffrl_jax.workflows.refine`.

- All learner state is one pytree, `TrainState`: network params, optimiser
  state, observation normaliser, the batched env state with its per-env
  episode counters, and the PRNG key. An iteration is a function of it alone,
  so saving it (`diffrl_jax.checkpoint`) and resuming is bitwise identical to
  not stopping.
- `env` is one unbatched brax `Env`; this module vmaps `reset`/`step` over
  `num_envs`. Done envs are reset with a fresh key each (not brax's
  AutoResetWrapper, which replays the first state and would show a contextual
  bandit the same context forever).
- The time limit `episode_length` truncates episodes; `losses` says how
  truncation and termination differ.
- Advantages and value targets come from GAE computed once per iteration with
  the value network that acted; the epochs then shuffle single transitions
  (T*B of them) into minibatches.
- The observation normaliser is updated *after* the epochs, with the
  iteration's observations, so the minibatch updates see exactly the policy
  that collected the data (the importance ratio starts at 1; brax updates it
  before and starts from a slightly stale ratio).

Axes in shapes: B envs (`num_envs`), T time (`unroll_length`), N = T*B
transitions, O observation size, A action size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from brax.envs.base import Env
from brax.envs.base import State as EnvState
from brax.training.acme import running_statistics
from brax.training.agents.ppo import networks as ppo_networks
from brax.training.agents.ppo.losses import PPONetworkParams
from jax.sharding import NamedSharding, PartitionSpec

from diffrl_jax import parallel
from diffrl_jax.rl.ppo.config import PPOConfig
from diffrl_jax.rl.ppo.losses import Batch, compute_gae, ppo_loss
from diffrl_jax.rl.ppo.networks import make_networks

__all__ = [
    "TrainState",
    "Transition",
    "init",
    "make_block",
    "make_iteration",
    "make_optimizer",
    "make_train",
    "sgd_step",
    "shard_state",
    "state_shardings",
    "update",
]

_INT32_MAX = jnp.iinfo(jnp.int32).max


# ---------------------------------------------------------------------------
# State and data


class TrainState(flax.struct.PyTreeNode):
    """All learner state. Leaves are arrays without weak types.

    `env_steps` counts environment steps and saturates at 2**31 - 1 instead of
    wrapping (int32: JAX has no 64-bit ints by default).
    """

    params: PPONetworkParams
    opt_state: optax.OptState
    normalizer_params: running_statistics.RunningStatisticsState
    env_state: EnvState  # batched [B]
    episode_step: jax.Array  # int32 [B], steps taken in the current episode
    episode_return: jax.Array  # float32 [B], unscaled return of the current episode
    key: jax.Array
    iteration: jax.Array  # int32 []
    env_steps: jax.Array  # int32 []


class Transition(flax.struct.PyTreeNode):
    """One rollout, time-major: every leaf is [T, B, ...]."""

    obs: jax.Array  # [T, B, O]
    raw_action: jax.Array  # [T, B, A] pre-tanh sample
    log_prob: jax.Array  # [T, B] of raw_action under the acting policy
    reward: jax.Array  # [T, B] unscaled
    termination: jax.Array  # [T, B] float 0/1: the env ended the episode
    truncation: jax.Array  # [T, B] float 0/1: the time limit ended it (and the env did not)


def _strip_weak_types(tree):
    """Same dtypes without weak types, so jitted calls see stable signatures."""

    def strip(leaf):
        leaf = jnp.asarray(leaf)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return leaf  # typed keys are never weak
        return leaf.astype(leaf.dtype)

    return jax.tree.map(strip, tree)


# ---------------------------------------------------------------------------
# Gradient steps


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """Adam after clipping the global gradient norm to `max_grad_norm`."""
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate))


def update(
    params: PPONetworkParams,
    opt_state: optax.OptState,
    normalizer_params: running_statistics.RunningStatisticsState,
    data: Batch,
    key: jax.Array,
    *,
    networks: ppo_networks.PPONetworks,
    optimizer: optax.GradientTransformation,
    config: PPOConfig,
) -> tuple[PPONetworkParams, optax.OptState, dict[str, jax.Array]]:
    """One gradient step on minibatch `data`; metrics include the pre-clip grad norm."""
    loss_fn = functools.partial(ppo_loss, networks=networks, config=config)
    grads, metrics = jax.grad(loss_fn, has_aux=True)(params, normalizer_params, data, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {**metrics, "grad_norm": optax.tree.norm(grads)}


sgd_step = update  # the name brax users look for


# ---------------------------------------------------------------------------
# Rollout


def _select_tree(done: jax.Array, on_true, on_false):
    """Per env: `on_true` where done [B], else `on_false`; keeps `on_false`'s dtypes."""

    def select(a, b):
        mask = jnp.reshape(done, done.shape + (1,) * (b.ndim - done.ndim))
        return jnp.where(mask, a, b).astype(b.dtype)

    return jax.tree.map(select, on_true, on_false)


def _rollout(
    env: Env,
    networks: ppo_networks.PPONetworks,
    config: PPOConfig,
    state: TrainState,
    key: jax.Array,
) -> tuple[TrainState, Transition, dict[str, jax.Array]]:
    """`unroll_length` steps of all envs with the current policy, resetting done
    envs with fresh keys. Returns the advanced state, the time-major
    transitions and [T, B] episode statistics (`finished`, `returns`, `lengths`,
    plus `env/<name>` for each env metric)."""
    distribution = networks.parametric_action_distribution
    reset = jax.vmap(env.reset)
    step = jax.vmap(env.step)

    def one_step(carry, step_key):
        env_state, episode_step, episode_return = carry
        action_key, reset_key = jax.random.split(step_key)
        obs = env_state.obs
        logits = networks.policy_network.apply(state.normalizer_params, state.params.policy, obs)
        raw_action = distribution.sample_no_postprocessing(logits, action_key)
        log_prob = distribution.log_prob(logits, raw_action)
        next_state = step(env_state, distribution.postprocess(raw_action))

        episode_step = episode_step + 1
        episode_return = episode_return + next_state.reward
        terminated = next_state.done > 0
        truncated = (episode_step >= config.episode_length) & ~terminated
        done = terminated | truncated

        fresh = reset(jax.random.split(reset_key, config.num_envs))
        carried_state = _select_tree(done, fresh, next_state)
        transition = Transition(
            obs=obs,
            raw_action=raw_action,
            log_prob=log_prob,
            reward=next_state.reward,
            termination=terminated.astype(jnp.float32),
            truncation=truncated.astype(jnp.float32),
        )
        stats = {
            "finished": done.astype(jnp.float32),
            "returns": episode_return,
            "lengths": episode_step.astype(jnp.float32),
            **{f"env/{name}": value for name, value in next_state.metrics.items()
               if jnp.shape(value) == (config.num_envs,)},
        }
        carry = (
            carried_state,
            jnp.where(done, 0, episode_step),
            jnp.where(done, 0.0, episode_return),
        )
        return carry, (transition, stats)

    carry = (state.env_state, state.episode_step, state.episode_return)
    keys = jax.random.split(key, config.unroll_length)
    (env_state, episode_step, episode_return), (transitions, stats) = jax.lax.scan(one_step, carry, keys)
    state = state.replace(env_state=env_state, episode_step=episode_step, episode_return=episode_return)
    return state, transitions, stats


def _rollout_metrics(transitions: Transition, stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Scalars: mean reward, and returns/lengths of the episodes that finished
    during the rollout (NaN when none did)."""
    finished = stats["finished"]
    episodes = jnp.sum(finished)

    def mean_finished(x):
        return jnp.where(episodes > 0, jnp.sum(x * finished) / jnp.maximum(episodes, 1.0), jnp.nan)

    metrics = {
        "reward": jnp.mean(transitions.reward),
        "episodes": episodes,
        "episode_return": mean_finished(stats["returns"]),
        "episode_length": mean_finished(stats["lengths"]),
        "truncated_fraction": jnp.mean(transitions.truncation),
    }
    for name, value in stats.items():
        if name.startswith("env/"):
            metrics[name] = jnp.mean(value)
    return metrics


# ---------------------------------------------------------------------------
# Init, iteration, training


def init(config: PPOConfig, env: Env, key: jax.Array) -> TrainState:
    """Fresh networks, optimiser, normaliser and `num_envs` reset envs."""
    config.validate()
    networks = make_networks(env.observation_size, env.action_size, config)
    policy_key, value_key, env_key, key = jax.random.split(key, 4)
    params = PPONetworkParams(
        policy=networks.policy_network.init(policy_key),
        value=networks.value_network.init(value_key),
    )
    normalizer_params = running_statistics.init_state(jnp.zeros((env.observation_size,), jnp.float32))
    env_state = jax.vmap(env.reset)(jax.random.split(env_key, config.num_envs))
    state = TrainState(
        params=params,
        opt_state=make_optimizer(config).init(params),
        normalizer_params=normalizer_params,
        env_state=env_state,
        episode_step=jnp.zeros((config.num_envs,), jnp.int32),
        episode_return=jnp.zeros((config.num_envs,), jnp.float32),
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        env_steps=jnp.zeros((), jnp.int32),
    )
    return _strip_weak_types(state)


def state_shardings(state: TrainState, mesh) -> TrainState:
    """Shardings of a TrainState on `mesh`: the envs split over its devices, the rest replicated."""
    batch, whole = parallel.batch_sharding(mesh), parallel.replicated_sharding(mesh)
    shardings = jax.tree.map(lambda _: whole, state)
    return shardings.replace(
        env_state=jax.tree.map(lambda _: batch, state.env_state),
        episode_step=batch, episode_return=batch)


def shard_state(state: TrainState, mesh) -> TrainState:
    """Places `state` on `mesh` (host copy first, so any placement works)."""
    parallel.check_divisible(state.episode_step.shape[0], mesh, "num_envs")
    host = jax.device_get(state)
    envs = (host.env_state, host.episode_step, host.episode_return)
    env_state, episode_step, episode_return = parallel.shard_batch(envs, mesh)
    rest = parallel.replicate(host.replace(env_state=None, episode_step=None, episode_return=None), mesh)
    return rest.replace(env_state=env_state, episode_step=episode_step, episode_return=episode_return)


def make_iteration(config: PPOConfig, env: Env, mesh=None) -> Callable[[TrainState], tuple[TrainState, dict]]:
    """`iteration(state) -> (state, metrics)`: one PPO iteration, pure and jittable.

    Rollout of T = unroll_length steps in B = num_envs envs, GAE with the
    acting value network, num_epochs passes of num_minibatches shuffled
    minibatch updates, then the normaliser update. Metrics are scalars: rollout
    statistics (`reward`, `episode_return`, ...) and losses averaged over all
    minibatch updates.

    `mesh`: data parallel -- envs and every minibatch are split over its
    devices (num_envs and the minibatch size must divide), parameters
    replicated; place the state with `shard_state`. XLA all-reduces the
    gradients, so results equal one device's up to reduction order.
    """
    config.validate()
    parallel.check_divisible(config.num_envs, mesh, "num_envs")
    parallel.check_divisible(config.minibatch_size, mesh, "minibatch size")
    networks = make_networks(env.observation_size, env.action_size, config)
    optimizer = make_optimizer(config)
    update_fn = functools.partial(update, networks=networks, optimizer=optimizer, config=config)

    def iteration(state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        state = _strip_weak_types(state)
        key, rollout_key, sgd_key = jax.random.split(state.key, 3)
        state, transitions, stats = _rollout(env, networks, config, state, rollout_key)

        def value_of(obs):
            return networks.value_network.apply(state.normalizer_params, state.params.value, obs)

        values = value_of(transitions.obs)  # [T, B]
        bootstrap_value = value_of(state.env_state.obs)  # [B]
        vs, advantages = compute_gae(
            truncation=transitions.truncation,
            termination=transitions.termination,
            rewards=transitions.reward * config.reward_scaling,
            values=values,
            bootstrap_value=bootstrap_value,
            lambda_=config.gae_lambda,
            discount=config.discount,
        )
        def flat(x):  # [T, B, ...] -> [N, ...]
            return jnp.reshape(x, (config.batch_size,) + x.shape[2:])

        batch = Batch(
            obs=flat(transitions.obs),
            raw_action=flat(transitions.raw_action),
            log_prob=flat(transitions.log_prob),
            advantage=flat(advantages),
            target_value=flat(vs),
            mask=flat(1.0 - transitions.truncation),
        )

        def minibatch_step(carry, minibatch_and_key):
            params, opt_state = carry
            minibatch, key = minibatch_and_key
            params, opt_state, metrics = update_fn(
                params, opt_state, state.normalizer_params, minibatch, key
            )
            return (params, opt_state), metrics

        def epoch(carry, epoch_key):
            permutation_key, loss_key = jax.random.split(epoch_key)
            permutation = jax.random.permutation(permutation_key, config.batch_size)
            shape = (config.num_minibatches, config.minibatch_size)
            minibatches = jax.tree.map(lambda x: jnp.reshape(x[permutation], shape + x.shape[1:]), batch)
            if mesh is not None:  # split every minibatch (axis 1), not the scan over them
                split = NamedSharding(mesh, PartitionSpec(None, parallel.AXIS))
                minibatches = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, split), minibatches)
            loss_keys = jax.random.split(loss_key, config.num_minibatches)
            return jax.lax.scan(minibatch_step, carry, (minibatches, loss_keys))

        (params, opt_state), losses = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(sgd_key, config.num_epochs)
        )
        normalizer_params = running_statistics.update(state.normalizer_params, transitions.obs)
        increment = jnp.int32(config.batch_size)
        env_steps = state.env_steps + jnp.minimum(increment, _INT32_MAX - state.env_steps)
        state = state.replace(
            params=params,
            opt_state=opt_state,
            normalizer_params=normalizer_params,
            key=key,
            iteration=state.iteration + 1,
            env_steps=env_steps,
        )
        metrics = {
            **_rollout_metrics(transitions, stats),
            **jax.tree.map(jnp.mean, losses),
            "value_mean": jnp.mean(values),
        }
        return _strip_weak_types(state), _strip_weak_types(metrics)

    return iteration


def make_block(
    config: PPOConfig, env: Env, num_iterations: int, mesh=None
) -> Callable[[TrainState], tuple[TrainState, dict]]:
    """`block(state) -> (state, metrics)`: `num_iterations` iterations in one
    `lax.scan`; each metric is stacked to [num_iterations]. `mesh`: see
    `make_iteration`."""
    iteration = make_iteration(config, env, mesh)

    def block(state: TrainState) -> tuple[TrainState, dict[str, jax.Array]]:
        return jax.lax.scan(
            lambda s, _: iteration(s), _strip_weak_types(state), None, length=num_iterations
        )

    return block


def make_train(config: PPOConfig, env: Env) -> Callable[[jax.Array], tuple[TrainState, dict]]:
    """Pure `train(key) -> (state, metrics [num_iterations])`; `jax.jit(jax.vmap(train))`
    trains one independent run per key."""
    block = make_block(config, env, config.num_iterations)

    def train(key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        return block(init(config, env, key))

    return train
