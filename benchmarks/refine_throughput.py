"""PPO refiner throughput: environment steps/s, physics steps/s, simulation vs learning.

Builds the refinement environment on the shared DexGraspNet sample, then
times (JIT apart from run time):
  * the environment alone: `vmap(env.step)` on B worlds with random actions
    (each step is one hold test: settle + 6 pulls);
  * one PPO iteration (rollout of B envs + normaliser + minibatch epochs).
The share of simulation is env-step time over iteration time; the rest is the
policy, GAE and the updates.

    python benchmarks/refine_throughput.py --backend mujoco --envs 64 128
    python benchmarks/refine_throughput.py --backend mjx --envs 256 1024 4096   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from diffrl_jax import runtime  # noqa: E402

runtime.configure()

import jax  # noqa: E402

from diffrl_jax.data.dexgraspnet import load_dexgraspnet  # noqa: E402
from diffrl_jax.rl import ppo, refine  # noqa: E402
from diffrl_jax.rl.refine_env import RefineConfig  # noqa: E402
from diffrl_jax.sim import bank, protocol  # noqa: E402
from diffrl_jax.sim.validate import device_name  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "dexgraspnet"


def _time(fn, *args, repeat=2):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    jit_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args))  # warm
    t = time.perf_counter()
    for _ in range(repeat):
        out = jax.block_until_ready(compiled(*args))
    return (time.perf_counter() - t) / repeat, jit_s, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED))
    parser.add_argument("--backend", default="mujoco", choices=("mujoco", "mjx"))
    parser.add_argument("--envs", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--pieces", type=int, default=32, help="object budget (pieces)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    hold = protocol.protocol("strict")
    dataset = load_dexgraspnet(args.data)
    problem = refine.build_problem(dataset, hold, bank.ObjectBudget(pieces=args.pieces))
    env = refine.make_env(problem, RefineConfig(), args.backend)
    rows = []
    for b in args.envs:
        config = ppo.PPOConfig(num_envs=b, num_minibatches=4, num_epochs=4, num_iterations=1,
                               init_action_std=0.3)
        state = ppo.init(config, env, jax.random.PRNGKey(2))
        # The env alone, with the actions the iteration's policy takes (the
        # cost of a hold test depends on how far a correction moves the hand).
        networks = ppo.make_networks(env.observation_size, env.action_size, config)
        policy = ppo.make_policy(networks, state.params, state.normalizer_params, False)
        states = state.env_state
        actions = jax.vmap(policy)(states.obs, jax.random.split(jax.random.PRNGKey(1), b))
        env_s, env_jit, _ = _time(jax.vmap(env.step), states, actions)
        it_s, it_jit, _ = _time(ppo.make_iteration(config, env), state)
        row = {
            "device": device_name(args.backend), "backend": args.backend, "envs": b,
            "env_steps_per_s": b / env_s,
            "physics_steps_per_s": b * hold.total_steps / env_s,
            "ppo_env_steps_per_s": b / it_s,
            "simulation_share": env_s / it_s,
            "env_jit_s": env_jit, "iteration_jit_s": it_jit,
        }
        rows.append(row)
        if not args.json:
            print(f"{row['device']}, {args.backend}, B={b}: env {row['env_steps_per_s']:.1f} steps/s "
                  f"({row['physics_steps_per_s']:.0f} physics steps/s), PPO {row['ppo_env_steps_per_s']:.1f} "
                  f"env steps/s, simulation {100 * row['simulation_share']:.0f}% of an iteration; "
                  f"jit env {env_jit:.1f} s, iteration {it_jit:.1f} s", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
