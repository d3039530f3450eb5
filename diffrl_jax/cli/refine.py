"""`diffrl refine`: PPO adapts a grasp dataset to a scenario (the host shell).

Parses the flags into a `workflows.refine.RefineRunConfig`, draws the
progress bars and prints the summary; the run itself (its files: run.json,
checkpoints/, metrics.jsonl, tensorboard/, learning_curve.png, adapted/,
adaptation.npz, summary.json) is `workflows.refine.run_refine`.
"""

from __future__ import annotations

import argparse
import json

from diffrl_jax.cli.common import non_negative_floats, non_negative_int, positive_int, typed_assignments
from diffrl_jax.workflows.presets import REFINE_PRESETS as PRESETS
from diffrl_jax.workflows.presets import SCENARIOS


def config_from_args(args: argparse.Namespace):
    """The `RefineRunConfig` of parsed `diffrl refine` arguments (FIELD=VALUE options typed)."""
    from diffrl_jax.rl import ppo
    from diffrl_jax.rl.refine_env import RefineConfig
    from diffrl_jax.sim.protocol import HoldProtocol
    from diffrl_jax.workflows.refine import RefineRunConfig, scenario_overrides

    scenario_overrides(args.scenario)  # an unknown scenario before the overrides' errors
    return RefineRunConfig(
        dataset=args.dir, objects=None if args.objects is None else tuple(args.objects), limit=args.limit,
        scenario=args.scenario, protocol=args.protocol,
        hold=typed_assignments(args.set, "--set", HoldProtocol, "protocol"),
        preset=args.preset, backend=args.backend, iterations=args.iterations, envs=args.envs,
        steps=args.steps, block=args.block, attempts=args.attempts, rounds=args.rounds,
        explore=args.explore, robustness=args.robustness,
        ppo=typed_assignments(args.ppo, "--ppo", ppo.PPOConfig, "PPO config"),
        refine=typed_assignments(args.refine, "--refine", RefineConfig, "refine config"),
        heldout=args.heldout, seed=args.seed, threads=args.threads, budget_pieces=args.budget_pieces,
        resume=args.resume)


def cmd_refine(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.progress import TqdmBars
    from diffrl_jax.workflows.refine import run_refine, summary_table

    bars = TqdmBars()

    def progress_fn(iteration: int, metrics: dict) -> None:
        def number(key):
            return float("nan") if metrics.get(key) is None else float(metrics[key])

        bars.current.set_postfix(success=f"{number('env/success'):.2f}", reward=f"{number('reward'):.2f}")

    result = run_refine(config_from_args(args), args.out, progress_fn=progress_fn, bars=bars)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(summary_table(result)))
    return 0


def add_commands(commands) -> None:
    p = commands.add_parser(
        "refine", help="adapt a grasp dataset to a scenario with PPO",
        description="Train a PPO refiner on DIR's grasps under a scenario, apply it to every "
                    "grasp and write the adapted dataset to OUTDIR/adapted.")
    p.add_argument("dir", help="DexGraspNet-format dataset directory")
    p.add_argument("--out", required=True, help="output directory of the run")
    p.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    p.add_argument("--limit", type=positive_int, help="first N grasps of each object")
    p.add_argument("--scenario", default="default",
                   help=f"target scenario: {', '.join(SCENARIOS)} (default: %(default)s)")
    p.add_argument("--protocol", default="strict", choices=("strict", "dexgraspnet"))
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a protocol field of the scenario, e.g. --set friction=0.5")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--backend", choices=("mjx", "mujoco"), help="default: the preset's")
    p.add_argument("--iterations", type=positive_int, help="PPO iterations (default: the preset's)")
    p.add_argument("--envs", type=positive_int, help="parallel environments (default: the preset's)")
    p.add_argument("--steps", type=positive_int,
                   help="corrections per episode, each after the first from the grasp where the last hold "
                        "test's settle left it (default: the preset's, 3)")
    p.add_argument("--block", type=positive_int,
                   help="PPO iterations per compiled block and checkpoint (default: the preset's)")
    p.add_argument("--attempts", type=positive_int,
                   help="episodes per grasp when adapting (default: the preset's)")
    p.add_argument("--rounds", type=positive_int, metavar="R",
                   help="adaptation rounds: raw failures that no attempt fixed get up to R - 1 more rounds "
                        "of --attempts attempts each, stopping once one holds (default 1)")
    p.add_argument("--explore", type=non_negative_floats, metavar="STD[,STD...]",
                   help="when adapting, Gaussian noise added to the sampled attempts' actions "
                        "(action units, [-1, 1] per component; one value per step, the last repeating, "
                        "default: the preset's, 0.2,0)")
    p.add_argument("--robustness", type=non_negative_int, metavar="K",
                   help="label each kept grasp with the fraction of K perturbed copies that hold "
                        "(0: no label; default: the preset's, 16)")
    p.add_argument("--ppo", action="append", metavar="FIELD=VALUE", help="override a PPOConfig field")
    p.add_argument("--refine", action="append", metavar="FIELD=VALUE",
                   help="override a RefineConfig field (bounds, reward scales)")
    p.add_argument("--heldout", type=float, default=0.2, help="held-out fraction per object")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, help="MuJoCo C threads (default: all CPUs)")
    p.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_refine)

