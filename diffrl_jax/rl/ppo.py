"""Proximal policy optimisation as pure functions over a brax `Env`.

Everything here is jittable and free of host side effects; the host-side loop
(progress, evaluation, checkpoints) lives elsewhere and only calls

    state = init(config, env, key)
    iteration = jax.jit(make_iteration(config, env))   # or make_block(...)
    state, metrics = iteration(state)

or, for sweeps over seeds, `jax.jit(jax.vmap(make_train(config, env)))(keys)`.

Design (see https://arxiv.org/abs/1707.06347 and brax/training/agents/ppo):
- All learner state is one pytree, `TrainState`: network params, optimiser
  state, observation normaliser, the batched env state with its per-env
  episode counters, and the PRNG key. An iteration is a function of it alone,
  so saving it (`diffrl_jax.checkpoint`) and resuming is bitwise identical to
  not stopping.
- `env` is one unbatched brax `Env`; this module vmaps `reset`/`step` over
  `num_envs`. Done envs are reset with a fresh key each (not brax's
  AutoResetWrapper, which replays the first state and would show a contextual
  bandit the same context forever).
- The time limit `episode_length` gives *truncation*, kept apart from the
  env's own `done` (*termination*). As in brax's GAE, a truncated transition
  carries no learning signal (its next observation is lost to the reset, so it
  has no target): it gets zero advantage and is masked out of the loss, and the
  step before it bootstraps from the value of its observation. A termination
  bootstraps nothing. Consequence: an env that never sets `done` must have
  `episode_length > 1` to learn anything; one-step bandits set `done`.
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

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as linen
import flax.struct
import jax
import jax.numpy as jnp
import optax
from brax.envs.base import Env
from brax.envs.base import State as EnvState
from brax.training import types as brax_types
from brax.training.acme import running_statistics
from brax.training.agents.ppo import networks as ppo_networks
from brax.training.agents.ppo.losses import PPONetworkParams
from jax.sharding import NamedSharding, PartitionSpec

from diffrl_jax import parallel
from diffrl_jax.errors import ConfigError, check_fields

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
    "update",
]

_INT32_MAX = jnp.iinfo(jnp.int32).max

# ---------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of PPO. Validated on construction (`ConfigError`)."""

    num_envs: int = 256  # parallel envs per iteration (B)
    unroll_length: int = 1  # env steps per env per iteration (T); 1 = contextual bandit
    episode_length: int = 1  # steps before truncation (time limit), kept apart from termination
    num_minibatches: int = 4
    num_epochs: int = 4
    num_iterations: int = 100
    learning_rate: float = 3e-4
    max_grad_norm: float = 1.0
    discount: float = 0.97
    gae_lambda: float = 0.95
    clip_epsilon: float = 0.2
    entropy_cost: float = 1e-2
    value_cost: float = 0.5
    reward_scaling: float = 1.0
    normalize_advantage: bool = True
    normalize_observations: bool = True
    # Normalised observations are clipped to +-observation_clip (None: no clip).
    # A feature that is constant in the first batches (the last hold result
    # before an episode's first step, when unroll_length < episode_length) gets
    # the normaliser's minimum std, 1e-6; unclipped, its first non-zero value
    # reaches the networks as ~1e5 and one iteration's update diverges
    # (approx_kl 5e13 in a 3-step refine run before this clip).
    observation_clip: float | None = 5.0
    policy_hidden_sizes: tuple[int, ...] = (256, 256)
    value_hidden_sizes: tuple[int, ...] = (256, 256)
    # None: brax's policy network (mean and std from one MLP head, std ~0.7 at
    # init). A number: the mean head starts near 0 (actions ~ tanh(0) = 0) and
    # the pre-tanh std starts at this value -- for residual actions such as
    # grasp corrections, where "change nothing" is the right first guess.
    init_action_std: float | None = None

    def __post_init__(self):
        for name in ("policy_hidden_sizes", "value_hidden_sizes"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> PPOConfig:
        """Returns self, or raises `ConfigError` naming the bad field(s)."""
        errors = []

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v):
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("num_envs", "unroll_length", "episode_length", "num_minibatches",
                     "num_epochs", "num_iterations"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                errors.append(f"{name} must be an integer >= 1, got {value!r}")
        ranges = {
            "learning_rate": (0.0, math.inf, False),
            "max_grad_norm": (0.0, math.inf, False),
            "discount": (0.0, 1.0, True),
            "gae_lambda": (0.0, 1.0, True),
            "clip_epsilon": (0.0, 1.0, False),
            "entropy_cost": (0.0, math.inf, True),
            "value_cost": (0.0, math.inf, True),
            "reward_scaling": (0.0, math.inf, False),
        }
        for name, (low, high, low_inclusive) in ranges.items():
            value = getattr(self, name)
            ok = is_real(value) and (value >= low if low_inclusive else value > low) and value <= high
            if not ok:
                bracket = "[" if low_inclusive else "("
                high_text = "inf)" if high == math.inf else f"{high}]"
                errors.append(
                    f"{name} must be a finite number in {bracket}{low}, {high_text}, got {value!r}"
                )
        if self.init_action_std is not None and not (
                is_real(self.init_action_std) and self.init_action_std > 0.001):
            errors.append(f"init_action_std must be None or a number > 0.001, got {self.init_action_std!r}")
        if self.observation_clip is not None and not (
                is_real(self.observation_clip) and self.observation_clip > 0):
            errors.append(f"observation_clip must be None or a number > 0, got {self.observation_clip!r}")
        for name in ("normalize_advantage", "normalize_observations"):
            if not isinstance(getattr(self, name), bool):
                errors.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("policy_hidden_sizes", "value_hidden_sizes"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(is_int(v) and v >= 1 for v in value):
                errors.append(f"{name} must be a sequence of integers >= 1, got {value!r}")
        if not errors:
            batch = self.num_envs * self.unroll_length
            if batch % self.num_minibatches:
                errors.append(
                    f"num_envs * unroll_length = {batch} transitions per iteration must be divisible "
                    f"by num_minibatches = {self.num_minibatches}"
                )
        if errors:
            raise ConfigError("invalid PPO config: " + "; ".join(errors))
        return self

    def replace(self, **overrides) -> PPOConfig:
        """A copy with `overrides` applied and validated."""
        check_fields(self, overrides, "PPO config")
        return dataclasses.replace(self, **overrides)

    @property
    def batch_size(self) -> int:
        """Transitions per iteration, N = num_envs * unroll_length."""
        return self.num_envs * self.unroll_length

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def to_json(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PPOConfig:
        """Inverse of `to_json`; missing fields take their defaults."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"PPO config must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown PPO config field(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


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


class Batch(flax.struct.PyTreeNode):
    """Flat transitions for the loss: every leaf is [N, ...]."""

    obs: jax.Array  # [N, O]
    raw_action: jax.Array  # [N, A]
    log_prob: jax.Array  # [N] under the acting policy
    advantage: jax.Array  # [N] GAE, not normalised
    target_value: jax.Array  # [N] lambda-return
    mask: jax.Array  # [N] 1, or 0 for truncated transitions (no target)


def _strip_weak_types(tree):
    """Same dtypes without weak types, so jitted calls see stable signatures."""

    def strip(leaf):
        leaf = jnp.asarray(leaf)
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return leaf  # typed keys are never weak
        return leaf.astype(leaf.dtype)

    return jax.tree.map(strip, tree)


# ---------------------------------------------------------------------------
# Networks

_ACTIVATIONS = {"swish": linen.swish, "relu": linen.relu, "tanh": linen.tanh, "elu": linen.elu}


def network_kwargs(observation_size: int, action_size: int, config: PPOConfig) -> dict:
    """JSON-able kwargs of `networks_from_kwargs`: store them with a checkpoint."""
    return {
        "observation_size": int(observation_size),
        "action_size": int(action_size),
        "policy_hidden_sizes": list(config.policy_hidden_sizes),
        "value_hidden_sizes": list(config.value_hidden_sizes),
        "normalize_observations": bool(config.normalize_observations),
        "activation": "swish",
        "init_action_std": config.init_action_std,
        "observation_clip": config.observation_clip,
    }


def networks_from_kwargs(kwargs: Mapping[str, Any]) -> ppo_networks.PPONetworks:
    """brax PPO networks (tanh-squashed normal policy, actions in [-1, 1])."""
    kwargs = dict(kwargs)
    kwargs.setdefault("init_action_std", None)
    kwargs.setdefault("observation_clip", None)  # checkpoints written before the clip
    expected = {"observation_size", "action_size", "policy_hidden_sizes", "value_hidden_sizes",
                "normalize_observations", "activation", "init_action_std", "observation_clip"}
    if set(kwargs) != expected:
        raise ConfigError(
            f"network kwargs must have exactly the keys {sorted(expected)}, got {sorted(kwargs)}"
        )
    if kwargs["activation"] not in _ACTIVATIONS:
        raise ConfigError(f"unknown activation {kwargs['activation']!r}; known: {sorted(_ACTIVATIONS)}")
    clip = kwargs["observation_clip"]
    if clip is not None and not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise ConfigError(f"observation_clip must be None or a number > 0, got {clip!r}")
    preprocess = (functools.partial(running_statistics.normalize,
                                    max_abs_value=None if clip is None else float(clip))
                  if kwargs["normalize_observations"]
                  else brax_types.identity_observation_preprocessor)
    networks = ppo_networks.make_ppo_networks(
        int(kwargs["observation_size"]),
        int(kwargs["action_size"]),
        preprocess_observations_fn=preprocess,
        policy_hidden_layer_sizes=tuple(kwargs["policy_hidden_sizes"]),
        value_hidden_layer_sizes=tuple(kwargs["value_hidden_sizes"]),
        activation=_ACTIVATIONS[kwargs["activation"]],
        distribution_type="tanh_normal",
    )
    if kwargs["init_action_std"] is None:
        return networks
    policy = _residual_policy_network(
        int(kwargs["observation_size"]), int(kwargs["action_size"]), preprocess,
        tuple(kwargs["policy_hidden_sizes"]), _ACTIVATIONS[kwargs["activation"]],
        float(kwargs["init_action_std"]))
    return networks.replace(policy_network=policy)


class _ResidualPolicy(linen.Module):
    """MLP -> (mean [A], std logits [A]); the mean head starts near 0, the std at `init_std`."""

    hidden_sizes: tuple[int, ...]
    action_size: int
    activation: Callable
    init_std: float

    @linen.compact
    def __call__(self, x):
        for size in self.hidden_sizes:
            x = self.activation(linen.Dense(size, kernel_init=jax.nn.initializers.lecun_uniform())(x))
        mean = linen.Dense(self.action_size,
                           kernel_init=jax.nn.initializers.variance_scaling(1e-4, "fan_in", "uniform"))(x)
        # brax's NormalTanhDistribution: std = softplus(logit) + 0.001.
        logit0 = math.log(math.expm1(self.init_std - 0.001))
        std = linen.Dense(self.action_size, kernel_init=jax.nn.initializers.zeros,
                          bias_init=jax.nn.initializers.constant(logit0))(x)
        return jnp.concatenate([mean, std], axis=-1)


def _residual_policy_network(observation_size, action_size, preprocess, hidden_sizes, activation,
                             init_std):
    from brax.training import networks as brax_networks

    module = _ResidualPolicy(hidden_sizes, action_size, activation, init_std)

    def apply(processor_params, policy_params, obs):
        return module.apply(policy_params, preprocess(obs, processor_params))

    return brax_networks.FeedForwardNetwork(
        init=lambda key: module.init(key, jnp.zeros((1, observation_size))), apply=apply)


def make_networks(
    observation_size: int, action_size: int, config: PPOConfig
) -> ppo_networks.PPONetworks:
    """Policy and value networks for an env with flat observations [O] and actions [A]."""
    if not isinstance(observation_size, int):
        raise TypeError(
            f"only flat observations are supported, got observation_size={observation_size!r}"
        )
    return networks_from_kwargs(network_kwargs(observation_size, action_size, config))


def make_policy(
    networks: ppo_networks.PPONetworks,
    params: PPONetworkParams,
    normalizer_params: running_statistics.RunningStatisticsState,
    deterministic: bool,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`policy(obs [..., O], key) -> action [..., A]` in [-1, 1].

    Deterministic: tanh of the Gaussian mean (the key is ignored).
    """
    distribution = networks.parametric_action_distribution

    def policy(obs: jax.Array, key: jax.Array) -> jax.Array:
        logits = networks.policy_network.apply(normalizer_params, params.policy, obs)
        if deterministic:
            return distribution.mode(logits)
        return distribution.sample(logits, key)

    return policy


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate))


# ---------------------------------------------------------------------------
# Advantages and loss


def compute_gae(
    truncation: jax.Array,
    termination: jax.Array,
    rewards: jax.Array,
    values: jax.Array,
    bootstrap_value: jax.Array,
    lambda_: float,
    discount: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation, time-major.

    Args:
      truncation, termination: [T, B] 0/1 floats; step t ended the episode by
        the time limit / by the env. Never both (termination wins).
      rewards, values: [T, B]; `values[t]` is V(obs_t).
      bootstrap_value: [B], V of the observation after the last step.

    Returns:
      (vs, advantages), both [T, B]: lambda-returns (value targets) and GAE.
      With d_t = r_t + discount * (1 - term_t) * V_{t+1} - V_t,
      A_t = d_t + discount * lambda_ * (1 - term_t) * A_{t+1}, except that a
      truncated step has d_t = A_t = 0 (its target is unknown: the next
      observation belongs to the next episode) and vs_t = V_t. The same
      truncation/termination semantics as brax's `compute_gae`; brax returns
      r_t + discount * vs_{t+1} - V_t as its advantage, which equals GAE only for
      lambda_ = 1.
    """
    keep = 1.0 - truncation
    continues = 1.0 - termination
    next_values = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)
    deltas = (rewards + discount * continues * next_values - values) * keep

    def backwards(advantage_next, step):
        delta, continues_t, keep_t = step
        advantage = delta + discount * lambda_ * continues_t * keep_t * advantage_next
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backwards, jnp.zeros_like(bootstrap_value), (deltas, continues, keep), reverse=True
    )
    vs = advantages + values
    return jax.lax.stop_gradient(vs), jax.lax.stop_gradient(advantages)


def ppo_loss(
    params: PPONetworkParams,
    normalizer_params: running_statistics.RunningStatisticsState,
    data: Batch,
    key: jax.Array,
    *,
    networks: ppo_networks.PPONetworks,
    config: PPOConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped-surrogate PPO loss on a minibatch `data` ([N, ...] leaves).

    loss = -mean(min(r A, clip(r, 1-eps, 1+eps) A))          (policy)
         + value_cost * 0.5 * mean((V - target)^2)             (value)
         - entropy_cost * mean(entropy)                        (entropy bonus)
    with r = exp(log_prob_new - log_prob_old), A optionally normalised over
    the minibatch, and every mean weighted by `data.mask`. The tanh-normal
    entropy has no closed form: `key` draws brax's one-sample estimate.
    """
    distribution = networks.parametric_action_distribution
    logits = networks.policy_network.apply(normalizer_params, params.policy, data.obs)
    values = networks.value_network.apply(normalizer_params, params.value, data.obs)
    weight = data.mask
    count = jnp.maximum(jnp.sum(weight), 1.0)

    def mean(x):
        return jnp.sum(x * weight) / count

    advantage = data.advantage
    if config.normalize_advantage:
        centred = advantage - mean(advantage)
        advantage = centred / (jnp.sqrt(mean(centred**2)) + 1e-8)

    log_ratio = distribution.log_prob(logits, data.raw_action) - data.log_prob
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_epsilon, 1.0 + config.clip_epsilon)
    policy_loss = -mean(jnp.minimum(ratio * advantage, clipped_ratio * advantage))
    value_loss = config.value_cost * 0.5 * mean((values - data.target_value) ** 2)
    entropy = mean(distribution.entropy(logits, key))
    entropy_loss = -config.entropy_cost * entropy
    total_loss = policy_loss + value_loss + entropy_loss
    clipped = (jnp.abs(ratio - 1.0) > config.clip_epsilon).astype(jnp.float32)
    metrics = {
        "total_loss": total_loss,
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy_loss": entropy_loss,
        "entropy": entropy,
        # k3 estimator of KL(old || new): unbiased, non-negative.
        "approx_kl": jax.lax.stop_gradient(mean((ratio - 1.0) - log_ratio)),
        "clip_fraction": jax.lax.stop_gradient(mean(clipped)),
    }
    return total_loss, metrics


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
        flat = lambda x: jnp.reshape(x, (config.batch_size,) + x.shape[2:])  # noqa: E731
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
