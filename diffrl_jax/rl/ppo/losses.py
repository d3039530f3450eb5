"""PPO's advantages and loss: pure functions over time-major rollouts and flat minibatches.

- The time limit gives *truncation*, kept apart from the env's own `done`
  (*termination*). As in brax's GAE, a truncated transition carries no learning
  signal (its next observation is lost to the reset, so it has no target): it
  gets zero advantage and is masked out of the loss, and the step before it
  bootstraps from the value of its observation. A termination bootstraps
  nothing. Consequence: an env that never sets `done` must have
  `episode_length > 1` to learn anything; one-step bandits set `done`.
- `ppo_loss` is bound with `functools.partial(networks=..., config=...)` and
  differentiated by `train.update`.

Axes in shapes: B envs, T time, N = T*B transitions, O observation size,
A action size.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from brax.training.acme import running_statistics
from brax.training.agents.ppo import networks as ppo_networks
from brax.training.agents.ppo.losses import PPONetworkParams

from diffrl_jax.rl.ppo.config import PPOConfig

__all__ = ["Batch", "compute_gae", "ppo_loss"]


class Batch(flax.struct.PyTreeNode):
    """Flat transitions for the loss: every leaf is [N, ...]."""

    obs: jax.Array  # [N, O]
    raw_action: jax.Array  # [N, A]
    log_prob: jax.Array  # [N] under the acting policy
    advantage: jax.Array  # [N] GAE, not normalised
    target_value: jax.Array  # [N] lambda-return
    mask: jax.Array  # [N] 1, or 0 for truncated transitions (no target)


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
