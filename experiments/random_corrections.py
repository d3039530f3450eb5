"""How many raw failures can corrections within the refiner's bounds fix? Random search as a yardstick.

    python experiments/random_corrections.py DATASET [--scales 0.12,0.15] [--failures 16] [--attempts 128]
        [--std 0.1] [--steps 3]

The refiner (`diffrl refine`) keeps a failed grasp when one of its K
attempts, each a bounded correction (`refine_env.correct`: palm +-2 cm,
+-0.2 rad, joints +-0.3 rad, closure), holds. This script asks the same
question without a policy: for the first `--failures` raw failures of each
object and scale, `--attempts` corrections drawn at random (each action
component N(0, `--std`^2), clipped to [-1, 1], as the refiner's exploration
noise around a zero policy) are hold-tested, and it reports the share of
failures fixed by the first k attempts for k = 1, 2, 4, ... If random
search at the GPU preset's 128 attempts fixes few failures of a scale, no
attempt budget will, and the limit is in the bounds or the physics.

With `--steps K` an attempt is an episode of the refiner's iterative mode
(`RefineConfig.from_settled`): each correction after the first starts from
the grasp where the last hold test's settle left hand and object, and the
attempt fixes the failure if any of its steps holds. `--std 0 --attempts 1`
then measures that settle projection alone, and `--std 0.2,0 --steps 3` a
random correction followed by two projections.

It prints one row per object and scale (`--json`: one JSON object) and,
with `--out FILE.json`, writes the result there (atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from diffrl_jax.cli.common import (non_negative_floats, positive_floats, positive_int, run_script, save_out_json,
                                   typed_assignments)
from diffrl_jax.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="random_corrections", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="DexGraspNet-format dataset directory")
    parser.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    parser.add_argument("--scales", type=positive_floats, metavar="S,S,...",
                        help="only these scales (default: every scale)")
    parser.add_argument("--failures", type=positive_int, default=16, metavar="N",
                        help="raw failures per object and scale (the first N; default 16)")
    parser.add_argument("--attempts", type=positive_int, default=128, metavar="K",
                        help="random corrections per failure (default 128)")
    parser.add_argument("--std", type=non_negative_floats, default=(0.1,), metavar="S[,S,...]",
                        help="standard deviation of each action component (default 0.1, the refiner's "
                             "exploration); one per step with --steps, the last repeating (e.g. 0.2,0)")
    parser.add_argument("--steps", type=positive_int, default=1, metavar="K",
                        help="corrections per attempt, each after the first from the last settled grasp (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="strict", help="hold protocol preset (default strict)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a protocol field")
    parser.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P")
    parser.add_argument("--threads", type=positive_int, help="MuJoCo C threads")
    parser.add_argument("--out", metavar="FILE.json", help="write the result here")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def std_of_step(stds: Sequence[float], step: int) -> float:
    """The action std of step `step` (0-based): its own, or the last one given."""
    return stds[min(step, len(stds) - 1)]


def fixed_by(held, ks: Sequence[int]) -> dict[str, float]:
    """held [n, K] (attempt j of failure i holds) -> {k: share of failures fixed by the first k}."""
    import numpy as np

    held = np.asarray(held, bool)
    if held.shape[0] == 0:
        return {str(k): 0.0 for k in ks}
    return {str(k): float(held[:, :k].any(axis=1).mean()) for k in ks}


def attempt_counts(attempts: int) -> list[int]:
    """1, 2, 4, ... up to and including `attempts`."""
    ks, k = [], 1
    while k < attempts:
        ks.append(k)
        k *= 2
    return ks + [attempts]


def random_actions(rows, attempts: int, action_size: int, std: float, seed: int, step: int = 0):
    """[n, K, A] actions for dataset rows `rows`: N(0, std^2) clipped to [-1, 1]; row i's draw
    depends only on (seed, i, step), so a failure gets the same corrections in any selection."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def one(row):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), row)
        if step:
            key = jax.random.fold_in(key, step)
        return jnp.clip(std * jax.random.normal(key, (attempts, action_size)), -1.0, 1.0)

    return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(rows, jnp.int32)))


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    import numpy as np
    from tqdm import tqdm

    from diffrl_jax.data import dexgraspnet
    from diffrl_jax.rl import refine_env
    from diffrl_jax.sim import bank, validate
    from diffrl_jax.sim.protocol import HoldProtocol, protocol

    hold = protocol(args.protocol, **typed_assignments(args.set, "--set", HoldProtocol, "protocol"))
    budget = bank.ObjectBudget(pieces=args.budget_pieces).validate()
    dataset = dexgraspnet.load_dexgraspnet(args.dataset, objects=args.objects)
    rows = np.arange(len(dataset))
    if args.scales is not None:
        rows = rows[np.isclose(dataset.scales[:, None], np.asarray(args.scales)[None], rtol=1e-4).any(axis=1)]
    if rows.size == 0:
        raise ConfigError("no grasps at the given --scales")
    start = time.perf_counter()
    subset = dataset.take(rows)
    with tqdm(total=len(subset), desc="raw hold tests", unit="grasp", file=sys.stderr, disable=None) as bar:
        _, raw = validate.validate_dataset(subset, hold, backend="mujoco", budget=budget, nthread=args.threads,
                                           progress=bar.update)
    groups = validate.entries(subset)  # (object, scale) groups of subset rows
    picks = [e.rows[~raw["success"][e.rows]][:args.failures] for e in groups]  # the first N failures
    chosen = np.concatenate(picks).astype(np.int64)
    config = refine_env.RefineConfig()
    held = np.zeros((chosen.size, args.attempts), bool)
    tested = 0
    if chosen.size:
        owner = np.repeat(chosen, args.attempts)  # subset row of each attempt
        base = subset.grasps[owner].astype(np.float32)
        ok = np.zeros(owner.size, bool)
        for step in range(args.steps):
            live = np.flatnonzero(~ok)  # an attempt stops once a step holds
            if live.size == 0:
                break
            actions = random_actions(rows[chosen], args.attempts, refine_env.ACTION_SIZE,
                                     std_of_step(args.std, step), args.seed, step)
            actions = actions.reshape(-1, refine_env.ACTION_SIZE)
            grasps = np.asarray(refine_env.correct(base[live], actions[live], config), np.float64)
            tries = dataclasses.replace(subset.take(owner[live]), grasps=grasps, extras={})
            with tqdm(total=len(tries), desc=f"corrections, step {step + 1}", unit="grasp", file=sys.stderr,
                      disable=None) as bar:
                _, result = validate.validate_dataset(tries, hold, backend="mujoco", budget=budget,
                                                      nthread=args.threads, progress=bar.update)
            tested += live.size
            ok[live] = np.asarray(result["success"], bool)
            base[live] = np.asarray(refine_env.next_base(grasps.astype(np.float32), result["settled"]))
        held = ok.reshape(chosen.size, args.attempts)
    ks = attempt_counts(args.attempts)
    out_rows, first = [], 0
    for e, pick in zip(groups, picks):
        out_rows.append({
            "object": e.code, "scale": e.scale, "grasps": int(e.rows.size),
            "raw_success": float(raw["success"][e.rows].mean()), "failures": int(pick.size),
            "fixed_by_attempts": fixed_by(held[first:first + pick.size], ks),
        })
        first += pick.size
    return {
        "dataset": str(args.dataset), "protocol": validate.protocol_json(hold), "attempts": args.attempts,
        "std": [std_of_step(args.std, k) for k in range(args.steps)], "steps": args.steps, "seed": args.seed,
        "bounds": config.to_json(), "rows": out_rows,
        "hold_tests": int(len(subset) + tested), "seconds": time.perf_counter() - start,
    }


def _print_table(result: dict) -> None:
    ks = list(result["rows"][0]["fixed_by_attempts"]) if result["rows"] else []
    print(f"{'object':<44} {'scale':>6} {'raw':>6} {'failures':>8}  fixed by the first k attempts, k = "
          + " ".join(ks))
    for r in result["rows"]:
        fixed = " ".join(f"{v:.2f}" for v in r["fixed_by_attempts"].values())
        print(f"{r['object'][:44]:<44} {r['scale']:>6.3g} {r['raw_success']:>6.3f} {r['failures']:>8}  {fixed}")
    print(f"{result['hold_tests']} hold tests, {result['seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(argv, build_parser(), run, _print_table, save_out_json)


if __name__ == "__main__":
    sys.exit(main())
