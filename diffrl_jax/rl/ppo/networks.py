"""PPO's policy and value networks: brax's tanh-squashed normal policy (actions in [-1, 1]).

The networks are rebuilt from `network_kwargs` alone (JSON, stored with a
checkpoint), so a policy can be restored from disk without its `PPOConfig`.
`init_action_std` swaps brax's policy head for a residual one whose actions
start near 0.

Axes in shapes: O observation size, A action size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from brax.training import networks as brax_networks
from brax.training import types as brax_types
from brax.training.acme import running_statistics
from brax.training.agents.ppo import networks as ppo_networks
from brax.training.agents.ppo.losses import PPONetworkParams
from flax import linen

from diffrl_jax.errors import ConfigError
from diffrl_jax.rl.ppo.config import PPOConfig

__all__ = ["PPONetworkParams", "make_networks", "make_policy", "network_kwargs", "networks_from_kwargs"]

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
