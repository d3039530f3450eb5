"""The noise schedule as data, and the pure forward/reverse steps over it.

A `Schedule` holds betas and cumulative alphas for timesteps t = 0..T-1;
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. Every function here is pure
and jittable; timesteps are int arrays broadcast against the data's leading
dims (`t: []` or `[B]` for `x: [B, D]`). A previous timestep of -1 means
"the clean sample" (abar = 1).

Networks predict eps or v (Salimans & Ho 2022): v = sqrt(abar) eps -
sqrt(1 - abar) x_0, which stays well scaled at both ends of the schedule,
where eps prediction divides by a vanishing sqrt(abar) to recover x_0.
"""

from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("eps", "v")


@flax.struct.dataclass
class Schedule:
    """betas, alphas, alphas_cumprod: `[T]` float32."""

    betas: jnp.ndarray
    alphas: jnp.ndarray
    alphas_cumprod: jnp.ndarray

    @property
    def num_steps(self) -> int:
        return self.betas.shape[0]


def cosine_schedule(num_steps: int = 100, offset: float = 0.008, max_beta: float = 0.999) -> Schedule:
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2((t/T + s)/(1 + s) pi/2)."""
    if num_steps < 2:
        raise ValueError(f"a schedule needs at least 2 steps, got {num_steps}")
    grid = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos((grid + offset) / (1.0 + offset) * np.pi / 2.0) ** 2
    betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, max_beta)
    return from_betas(betas)


def linear_schedule(num_steps: int = 100, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
    """DDPM's linear betas, scaled so that T steps end as noisy as 1000 of Ho et al.'s."""
    factor = 1000.0 / num_steps
    return from_betas(np.linspace(beta_start * factor, beta_end * factor, num_steps))


def from_betas(betas) -> Schedule:
    """A Schedule from betas `[T]` (cumulated in float64, stored in float32)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    return Schedule(*(jnp.asarray(a, dtype=jnp.float32) for a in (betas, alphas, alphas_cumprod)))


def _expand(values, x):
    """`[...]` -> `[..., 1, ...]` to broadcast against x `[..., D]`."""
    return jnp.reshape(values, jnp.shape(values) + (1,) * (x.ndim - jnp.ndim(values)))


def _at(values, t, x):
    """values[t], shaped to broadcast against x."""
    return _expand(values[t], x)


def _abar(schedule: Schedule, t, x):
    """abar_t, with abar_{-1} = 1 (the clean sample)."""
    t = jnp.asarray(t)
    return jnp.where(_expand(t, x) >= 0, _at(schedule.alphas_cumprod, jnp.maximum(t, 0), x), 1.0)


def add_noise(schedule: Schedule, x0, noise, t):
    """x_0, eps `[..., D]`, t -> x_t."""
    abar = _abar(schedule, t, x0)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise


def v_target(schedule: Schedule, x0, noise, t):
    """The v a network should predict for x_t = add_noise(x0, noise, t)."""
    abar = _abar(schedule, t, x0)
    return jnp.sqrt(abar) * noise - jnp.sqrt(1.0 - abar) * x0


def training_target(schedule: Schedule, x0, noise, t, prediction: str):
    """eps or v, whichever `prediction` names."""
    if prediction == "eps":
        return noise
    if prediction == "v":
        return v_target(schedule, x0, noise, t)
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def predict_x0_eps(schedule: Schedule, x_t, t, model_output, prediction: str):
    """A network's output at (x_t, t) -> its estimates (x_0, eps)."""
    abar = _abar(schedule, t, x_t)
    a, s = jnp.sqrt(abar), jnp.sqrt(1.0 - abar)
    if prediction == "eps":
        eps = model_output
        return (x_t - s * eps) / a, eps
    if prediction == "v":
        # x_t = a x0 + s eps, v = a eps - s x0, a^2 + s^2 = 1.
        return a * x_t - s * model_output, s * x_t + a * model_output
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


def ddpm_step(schedule: Schedule, x_t, t, x0, noise):
    """One ancestral step x_t -> x_{t-1} given an estimate of x_0 (Ho et al. eq. 7).

    Samples the posterior q(x_{t-1} | x_t, x_0) with its own variance; at t = 0
    returns the posterior mean, which is x_0 itself.
    """
    t = jnp.asarray(t)
    beta = _at(schedule.betas, t, x_t)
    alpha = _at(schedule.alphas, t, x_t)
    abar = _abar(schedule, t, x_t)
    abar_prev = _abar(schedule, t - 1, x_t)
    mean = (jnp.sqrt(abar_prev) * beta * x0 + jnp.sqrt(alpha) * (1.0 - abar_prev) * x_t) / (1.0 - abar)
    variance = beta * (1.0 - abar_prev) / (1.0 - abar)
    return mean + jnp.where(_expand(t, x_t) > 0, jnp.sqrt(variance), 0.0) * noise


def ddim_step(schedule: Schedule, x_t, t, t_prev, x0, eps, noise=None, eta: float = 0.0):
    """One DDIM step x_t -> x_{t_prev} (Song et al. eq. 12); t_prev = -1 gives x_0.

    eta = 0 is the deterministic sampler; eta = 1 matches DDPM's variance
    when t_prev = t - 1.
    """
    abar = _abar(schedule, t, x_t)
    abar_prev = _abar(schedule, t_prev, x_t)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps
    x_prev = jnp.sqrt(abar_prev) * x0 + direction
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """`[K]` distinct timesteps from T-1 down to 0, evenly spaced (numpy, static)."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"sampling steps must lie in [1, {num_train_steps}], got {num_steps}")
    # Spacing >= 1 keeps the rounded steps distinct; K = 1 is one step from T-1.
    return np.round(np.linspace(num_train_steps - 1, 0, num_steps)).astype(np.int32)
