"""Tiny brax envs with known optima, for PPO tests on a CPU."""

import jax
import jax.numpy as jnp
from brax.envs.base import Env, State


class _ToyEnv(Env):
    @property
    def backend(self) -> str:
        return "toy"


class Bandit(_ToyEnv):
    """Contextual bandit: obs ~ U[-1, 1]^K, reward -||a - target(obs)||^2, one step.

    target(obs) = 0.5 * obs reversed, inside the tanh-policy's [-1, 1] range,
    so the optimum is reward 0. Uniform random actions score about -0.83 for
    K = 2 (2 * (1/3 + 1/12)).
    """

    def __init__(self, size: int = 2):
        self._size = size

    @staticmethod
    def target(obs: jax.Array) -> jax.Array:
        return 0.5 * obs[..., ::-1]

    def reset(self, rng: jax.Array) -> State:
        obs = jax.random.uniform(rng, (self._size,), minval=-1.0, maxval=1.0)
        zero = jnp.zeros(())
        return State(pipeline_state=None, obs=obs, reward=zero, done=zero, metrics={"error": zero}, info={})

    def step(self, state: State, action: jax.Array) -> State:
        error = jnp.sum((action - self.target(state.obs)) ** 2)
        return state.replace(reward=-error, done=jnp.ones(()), metrics={"error": error})

    @property
    def observation_size(self) -> int:
        return self._size

    @property
    def action_size(self) -> int:
        return self._size


class PointMass(_ToyEnv):
    """1-D point to a goal: obs (x, goal, t / horizon), x += 0.25 * a.

    Reward -|x - goal| after each move; the env terminates when |x - goal| <
    0.05; it never ends episodes by time itself (PPO's `episode_length`
    truncates them). From x, goal ~ U[-1, 1] the goal is up to 8 moves away.
    """

    def __init__(self, horizon: int = 10):
        self._horizon = horizon

    def reset(self, rng: jax.Array) -> State:
        x, goal = jax.random.uniform(rng, (2,), minval=-1.0, maxval=1.0)
        zero = jnp.zeros(())
        info = {"x": x, "goal": goal, "t": jnp.zeros((), jnp.int32)}
        return State(pipeline_state=None, obs=self._obs(x, goal, info["t"]), reward=zero, done=zero,
                     metrics={"distance": jnp.abs(x - goal)}, info=info)

    def _obs(self, x, goal, t):
        return jnp.stack([x, goal, t.astype(jnp.float32) / self._horizon])

    def step(self, state: State, action: jax.Array) -> State:
        info = state.info
        x = jnp.clip(info["x"] + 0.25 * action[0], -1.0, 1.0)
        t = info["t"] + 1
        distance = jnp.abs(x - info["goal"])
        info = {"x": x, "goal": info["goal"], "t": t}
        return state.replace(obs=self._obs(x, info["goal"], t), reward=-distance,
                             done=(distance < 0.05).astype(jnp.float32),
                             metrics={"distance": distance}, info=info)

    @property
    def observation_size(self) -> int:
        return 3

    @property
    def action_size(self) -> int:
        return 1
