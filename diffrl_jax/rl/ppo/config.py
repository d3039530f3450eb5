"""PPO's hyperparameters: `PPOConfig`, validated on construction, with its JSON form."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from diffrl_jax.errors import ConfigError, check_fields

__all__ = ["PPOConfig"]


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
