"""DiffusionConfig: every choice that shapes a diffusion grasp model and its training.

Frozen and JSON round-trippable: it is written next to every checkpoint, so a
model can be rebuilt and its training resumed from disk alone. `validate()`
raises ConfigError on values a user can get wrong (CLI `--set`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

from diffrl_jax.diffusion.schedule import PREDICTIONS
from diffrl_jax.errors import ConfigError

SCHEDULES = ("cosine", "linear")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    # Diffusion process.
    num_diffusion_steps: int = 100
    schedule: str = "cosine"
    prediction: str = "v"
    x0_clip: float = 5.0  # |x_0| bound in normalised units while sampling; 0 = off
    # Network (see model.Denoiser).
    width: int = 256
    depth: int = 3
    time_dim: int = 64
    cond_scale: float = 10.0  # encoding metres -> about unit range
    cond_dropout: float = 0.1  # probability of the null condition (classifier-free guidance)
    # Object encoding (see objects.encoding).
    encoding_points: int = 128
    encoding_radius: float = 0.15
    encoding_samples: int = 2048
    # Optimisation.
    num_steps: int = 5000
    batch_size: int = 256
    learning_rate: float = 1e-3
    end_learning_rate: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    block_steps: int = 100  # optimisation steps per compiled call
    checkpoint_every: int = 1000
    seed: int = 0

    def validate(self) -> "DiffusionConfig":
        """Returns self; raises ConfigError naming the first bad field."""
        positive_ints = ("num_diffusion_steps", "width", "depth", "time_dim", "encoding_points",
                         "encoding_samples", "num_steps", "batch_size", "block_steps",
                         "checkpoint_every")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_diffusion_steps < 2:
            raise ConfigError(f"num_diffusion_steps must be at least 2, got {self.num_diffusion_steps}")
        if self.time_dim % 2:
            raise ConfigError(f"time_dim must be even, got {self.time_dim}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout must lie in [0, 1), got {self.cond_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        for name in ("learning_rate", "encoding_radius", "cond_scale"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("end_learning_rate", "weight_decay", "grad_clip", "x0_clip", "warmup_steps"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
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
