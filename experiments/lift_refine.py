"""PPO on the lift refinement environment, against random edits of the same spread.

    python experiments/lift_refine.py [--objects box cylinder mug] [--grasps 32] [--poses 10]
        [--envs 64] [--iterations 5] [--attempts 4] [--pairs-per-grasp 2] [--set FIELD=VALUE]

The built-in example dataset (`diffrl_jax.data.example`: kinematic grasps, no
simulation) of each object is written to a temporary directory and becomes a
lift problem (`rl.lift_env.build_lift_problem`: one resting bank of `--poses`
drops per object on MuJoCo's C engine; a fifth of the grasps and the last
fifth of the poses held out). PPO (`rl.ppo`) trains on the training grasps and
poses for `--iterations` iterations of `--envs` one-step episodes; each
iteration prints its success and reward terms (stderr).

Then every held-out grasp meets each held-out pose (random yaw and table
offset, fixed by `--seed`), and five edits are lifted: none; the policy's
deterministic edit (1 lift); one random edit (1 lift) and the best of
`--attempts` random edits (K lifts), each component N(0, s^2) clipped to
[-1, 1] with s the RMS of that component of the policy's deterministic
edits on these pairs (the same spread); and the best of the deterministic
edit plus K - 1 policy samples (K lifts). Rows of equal lifts are the
comparisons at equal simulation budget.

The lift protocol is the default one with a coarser timestep (0.008 s: 400
steps per lift), to keep a CPU run to minutes; `--set` changes protocol
fields. `--refine FIELD=VALUE` changes `LiftRefineConfig` fields.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from diffrl_jax.cli.common import (
    positive_int,
    run_script,
    save_out_json,
    typed_assignments,
)

QUICK = ["timestep=0.008"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lift_refine", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", nargs="+", metavar="NAME",
                        help="built-in objects (default: box cylinder mug), or with --dataset object codes "
                             "(default: all of them)")
    parser.add_argument("--dataset", nargs="+", metavar="DIR",
                        help="DexGraspNet directories to refine instead of the example grasps (pooled, "
                             "e.g. a pipeline run's dataset/ and refine/adapted/)")
    parser.add_argument("--min-clearance", type=float, metavar="M",
                        help="draw only (grasp, pose) pairs whose unedited grasp clears the table by M metres "
                             "(negative: reaches at most -M into it), in training and in the comparison; "
                             "default: every pair")
    parser.add_argument("--grasps-cap", type=positive_int, metavar="N",
                        help="with --dataset: at most N grasps per object (the first ones)")
    parser.add_argument("--grasps", type=positive_int, default=32, metavar="N", help="example grasps per object")
    parser.add_argument("--poses", type=positive_int, default=10, metavar="P", help="resting poses per object")
    parser.add_argument("--envs", type=positive_int, default=64, metavar="B", help="PPO num_envs")
    parser.add_argument("--iterations", type=positive_int, default=5, metavar="I", help="PPO iterations")
    parser.add_argument("--attempts", type=positive_int, default=4, metavar="K", help="edits per pair for best-of-K")
    parser.add_argument("--pairs-per-grasp", type=positive_int, default=2, metavar="R",
                        help="random yaws and offsets per held-out (grasp, pose) pair (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help=f"override a lift protocol field (default {' '.join(QUICK)})")
    parser.add_argument("--refine", action="append", metavar="FIELD=VALUE", help="override a LiftRefineConfig field")
    parser.add_argument("--budget-pieces", type=positive_int, default=16, metavar="P")
    parser.add_argument("--threads", type=positive_int, help="MuJoCo C threads")
    parser.add_argument("--out", metavar="FILE.json", help="write the result here")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    import tempfile

    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffrl_jax import configs
    from diffrl_jax.data.dexgraspnet import (
        concatenate,
        load_dexgraspnet,
        write_dexgraspnet,
        write_mesh,
    )
    from diffrl_jax.data.example import example_dataset
    from diffrl_jax.rl import lift_env, ppo
    from diffrl_jax.sim import backends, bank
    from diffrl_jax.sim.lift import LiftProtocol

    start_time = time.perf_counter()
    protocol = LiftProtocol().replace(
        **typed_assignments(QUICK + (args.set or []), "--set", LiftProtocol, "lift protocol"))
    config = lift_env.LiftRefineConfig().replace(
        **typed_assignments(args.refine, "--refine", lift_env.LiftRefineConfig, "lift refine config"))
    backend = backends.MuJoCo(args.threads)
    with tempfile.TemporaryDirectory() as root:
        if args.dataset:
            dataset = concatenate([load_dexgraspnet(d) for d in args.dataset])
            if args.objects:
                dataset = dataset.select(args.objects)
            dataset = dataset.first_per_object(args.grasps_cap)
        else:
            for name in args.objects or ["box", "cylinder", "mug"]:
                source, text = example_dataset(name, args.grasps, seed=args.seed)
                write_mesh(root, source.object_codes[0], text)
                write_dexgraspnet(root, source)
            dataset = load_dexgraspnet(root)
        problem = lift_env.build_lift_problem(dataset, protocol, backend, bank.ObjectBudget(pieces=args.budget_pieces),
                                              poses_per_object=args.poses, seed=args.seed)
    _log(f"problem: {len(dataset)} grasps on {len(problem.entries)} objects, "
         f"{int((~problem.heldout_poses).sum())} training + {int(problem.heldout_poses.sum())} held-out poses "
         f"each ({time.perf_counter() - start_time:.0f} s)")

    # Training (host loop: not jittable; each iteration is one compiled call).
    env = lift_env.make_lift_env(problem, config, backend, min_clearance_m=args.min_clearance)
    if env.data.pairs is not None:
        _log(f"training pairs clearing the table by {args.min_clearance} m: {env.data.pairs.shape[0]} of "
             f"{env.data.grasps.shape[0] * env.data.poses.shape[1]}")
    ppo_config = ppo.PPOConfig(num_envs=args.envs, num_iterations=args.iterations, num_minibatches=2,
                               num_epochs=4, learning_rate=3e-4, entropy_cost=1e-3, init_action_std=0.1)
    state = ppo.init(ppo_config, env, jax.random.PRNGKey(args.seed))
    # Compiled once for this state's signature: a plain jit of the iteration compiled twice
    # (the initial state comes from eager ops, later ones from the compiled call).
    t = time.perf_counter()
    iteration = jax.jit(ppo.make_iteration(ppo_config, env)).lower(state).compile()
    jit_s = time.perf_counter() - t
    _log(f"PPO iteration compiled in {jit_s:.0f} s")
    terms = [f"reward/{t}" for t in lift_env.REWARD_TERMS]
    history = []
    _log("iter  success  reward  " + "  ".join(t.split("/")[1] for t in terms) + "  seconds")
    for i in range(args.iterations):
        t = time.perf_counter()
        state, metrics = iteration(state)
        metrics = jax.device_get(metrics)
        row = {"iteration": i + 1, "success": float(metrics["env/success"]), "reward": float(metrics["reward"]),
               **{t_: float(metrics[f"env/{t_}"]) for t_ in terms}, "seconds": time.perf_counter() - t}
        history.append(row)
        _log(f"{i + 1:>4}  {row['success']:7.3f}  {row['reward']:6.3f}  "
             + "  ".join(f"{row[t_]:+.3f}" for t_ in terms) + f"  {row['seconds']:.1f}")

    # Held-out (grasp, pose) pairs with random yaws and offsets.
    test_env = lift_env.make_lift_env(problem, config, backend, heldout_poses=True, min_clearance_m=args.min_clearance)
    n_rows, n_poses = test_env.data.grasps.shape[0], test_env.data.poses.shape[1]
    rng = np.random.default_rng(args.seed + 1)
    if test_env.data.pairs is None:
        pairs = np.stack(np.meshgrid(np.arange(n_rows), np.arange(n_poses), indexing="ij"), -1).reshape(-1, 2)
    else:
        pairs = np.asarray(test_env.data.pairs)
    index, pose_index = np.repeat(pairs[:, 0], args.pairs_per_grasp), np.repeat(pairs[:, 1], args.pairs_per_grasp)
    n = len(index)
    yaw = rng.uniform(-np.pi, np.pi, n) if config.randomize_yaw else np.zeros(n)
    offset = rng.uniform(-config.table_jitter_m, config.table_jitter_m, (n, 2))
    starts = jax.jit(jax.vmap(test_env.start))(jnp.asarray(index, jnp.int32), jnp.asarray(pose_index, jnp.int32),
                                              jnp.asarray(yaw, jnp.float32), jnp.asarray(offset, jnp.float32))
    networks = ppo.make_networks(env.observation_size, env.action_size, ppo_config)
    deterministic = ppo.make_policy(networks, state.params, state.normalizer_params, True)
    stochastic = ppo.make_policy(networks, state.params, state.normalizer_params, False)
    k, a = args.attempts, env.action_size
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 2), (n, max(k - 1, 1)))
    det = jax.jit(jax.vmap(deterministic))(starts.obs, keys[:, 0])
    samples = jax.jit(jax.vmap(jax.vmap(stochastic, in_axes=(None, 0))))(starts.obs, keys)[:, :k - 1]
    spread = np.sqrt(np.mean(np.square(np.asarray(det)), axis=0))  # [A]
    noise = rng.normal(size=(n, k, a)) * spread
    random_edits = np.clip(noise, -1.0, 1.0)
    actions = jnp.concatenate([jnp.zeros((n, 1, a)), det[:, None], jnp.asarray(random_edits, jnp.float32),
                               samples], axis=1)  # [n, 2 + 2K - 1, A]
    step_all = jax.jit(jax.vmap(jax.vmap(test_env.step, in_axes=(None, 0))))
    out = jax.device_get(step_all(starts, actions))
    success, reward = np.asarray(out.info["success"], bool), np.asarray(out.reward)

    def best(columns):
        return {"success": float(success[:, columns].any(axis=1).mean()),
                "reward": float(reward[:, columns].max(axis=1).mean()), "lifts": len(columns)}

    rand = list(range(2, 2 + k))
    table = {"no edit": best([0]), "policy (deterministic)": best([1]), "random, 1 edit": best(rand[:1]),
             f"random, best of {k}": best(rand),
             f"policy, deterministic + {k - 1} samples": best([1] + list(range(2 + k, 1 + 2 * k)))}
    return {
        "objects": list(dataset.object_codes), "datasets": args.dataset, "min_clearance_m": args.min_clearance,
        "grasps_per_object": args.grasps, "poses_per_object": args.poses,
        "protocol": configs.to_json(protocol), "refine": config.to_json(), "ppo": ppo_config.to_json(),
        "training": history, "jit_seconds": jit_s, "heldout_pairs": n, "spread": spread.tolist(), "comparison": table,
        "seconds": time.perf_counter() - start_time,
    }


def _print_table(result: dict) -> None:
    spread = result["spread"]
    print(f"held-out pairs: {result['heldout_pairs']} (grasp, pose, yaw, offset); random edit spread "
          f"(RMS of the policy's edits): wrist {sum(spread[:6]) / 6:.3f}, mean over all {sum(spread) / len(spread):.3f}")
    print(f"{'edit':<34} {'lifts':>5} {'success':>8} {'reward':>8}")
    for name, row in result["comparison"].items():
        print(f"{name:<34} {row['lifts']:>5} {row['success']:>8.3f} {row['reward']:>8.3f}")
    print(f"{result['seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(argv, build_parser(), run, _print_table, save_out_json)


if __name__ == "__main__":
    sys.exit(main())
