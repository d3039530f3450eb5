"""DiffusionConfig: every choice that shapes a diffusion grasp model and its training.

Frozen and JSON round-trippable: it is written next to every checkpoint, so a
model can be rebuilt and its training resumed from disk alone. `validate()`
raises ConfigError on values a user can get wrong (CLI `--set`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from diffrl_jax import configs
from diffrl_jax.configs import between, boolean, choice, integer, non_negative, positive
from diffrl_jax.diffusion.schedule import PREDICTIONS
from diffrl_jax.errors import ConfigError

SCHEDULES = ("cosine", "linear")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    # Diffusion process.
    num_diffusion_steps: int = integer(100, min=2)
    schedule: str = choice("cosine", SCHEDULES)
    prediction: str = choice("v", PREDICTIONS)
    x0_clip: float = non_negative(5.0)  # |x_0| bound in normalised units while sampling; 0 = off
    # Network (see model.Denoiser).
    width: int = integer(256, min=1)
    depth: int = integer(3, min=1)
    time_dim: int = integer(64, min=1)  # even
    cond_scale: float = positive(10.0)  # encoding metres -> about unit range
    cond_dropout: float = between(0.1, 0.0, 1.0, open_high=True)  # probability of the null condition (CFG)
    # Condition on the object's resting pose too (its up-direction: the
    # dataset's up_x/up_y/up_z labels, as `diffrl tabletop` writes them);
    # the pose alone is dropped with probability pose_dropout (and with the
    # object's), so sampling without a pose still works.
    pose_condition: bool = boolean(False)
    pose_dropout: float = between(0.1, 0.0, 1.0, open_high=True)
    # Object encoding (see objects.encoding).
    encoding_points: int = integer(128, min=1)
    encoding_radius: float = positive(0.15)
    encoding_samples: int = integer(2048, min=1)
    # Optimisation.
    num_steps: int = integer(5000, min=1)
    batch_size: int = integer(256, min=1)
    learning_rate: float = positive(1e-3)
    end_learning_rate: float = non_negative(1e-5)
    warmup_steps: int = integer(200, min=0)
    weight_decay: float = non_negative(1e-4)
    grad_clip: float = non_negative(1.0)
    ema_decay: float = between(0.999, 0.0, 1.0, open_high=True)
    block_steps: int = integer(100, min=1)  # optimisation steps per compiled call
    checkpoint_every: int = integer(1000, min=1)
    seed: int = 0

    def validate(self) -> DiffusionConfig:
        """Returns self; raises ConfigError naming the first bad field."""
        configs.check(self, "diffusion config")
        if self.time_dim % 2:
            raise ConfigError(f"time_dim must be even, got {self.time_dim}")
        if self.warmup_steps >= self.num_steps:
            raise ConfigError(
                f"warmup_steps ({self.warmup_steps}) must be smaller than num_steps ({self.num_steps})")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "DiffusionConfig":
        """From `to_dict()` output; unknown keys raise ConfigError, missing ones take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown diffusion config field(s) {unknown}; known: {sorted(known)}")
        return cls(**values).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DiffusionConfig":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"diffusion config is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError("diffusion config must be a JSON object")
        return cls.from_dict(values)

    def with_overrides(self, items: Mapping[str, str]) -> "DiffusionConfig":
        """A copy with fields set from strings (CLI `--set FIELD=VALUE`), parsed by field type."""
        from diffrl_jax.overrides import parse_overrides

        return dataclasses.replace(self, **parse_overrides(self, items, "diffusion config")).validate()
