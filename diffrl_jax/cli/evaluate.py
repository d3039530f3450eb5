"""`diffrl evaluate`: pose-sampling success of a trained diffusion model, per object.

The shell of `workflows.evaluate.run_evaluate` (its files: summary.json,
poses.jsonl, videos/, grasps/; see there): parses the flags, draws the
progress bars, prints the summary.
"""

from __future__ import annotations

import argparse
import json

from diffrl_jax.cli.common import non_negative_int, positive_int, typed_assignments
from diffrl_jax.evaluation.selections import SELECTIONS


def lift_protocol(items):
    """`--set FIELD=VALUE` items (typed by the field) -> the default LiftProtocol with them."""
    from diffrl_jax.sim import lift

    return lift.DEFAULT.replace(**typed_assignments(items, "--set", lift.LiftProtocol, "lift protocol"))


def config_from_args(args: argparse.Namespace):
    """The `EvaluateRunConfig` of parsed `diffrl evaluate` arguments."""
    from diffrl_jax.workflows.evaluate import EvaluateRunConfig

    return EvaluateRunConfig(
        checkpoint=args.checkpoint, protocol=lift_protocol(args.set),
        objects=None if args.objects is None else tuple(args.objects), scale=args.scale, poses=args.poses,
        candidates=args.candidates, select=args.select[0], compare=tuple(args.select[1:]),
        check_top=args.check_top, sampler=args.sampler,
        steps=args.steps, backend=args.backend, threads=args.threads, budget_pieces=args.budget_pieces,
        seed=args.seed, videos=args.videos, pose_condition={"auto": None, "on": True, "off": False}[args.pose],
        scorer=args.scorer)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.evaluate import run_evaluate, summary_lines
    from diffrl_jax.workflows.progress import TqdmBars

    summary = run_evaluate(config_from_args(args), args.out, bars=TqdmBars())
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print("\n".join(summary_lines(summary, args.out)))
    return 0


def add_command(commands) -> None:
    p = commands.add_parser(
        "evaluate",
        help="pose-sampling success of a trained diffusion model: objects on a table, grasps sampled and lifted",
        description="Per object: N resting poses, K sampled grasps per pose, table-colliding ones "
                    "rejected, one chosen (by a kinematic contact score, or by a short hold check "
                    "in simulation), then lifted 20 cm and held 1 s. "
                    "Success rates come with Wilson 95%% intervals.",
    )
    p.add_argument("checkpoint", metavar="CKPT_DIR", help="directory written by diffrl train")
    p.add_argument("--objects", nargs="+", metavar="CODE|builtin:NAME",
                   help="objects to evaluate (default: the training objects)")
    p.add_argument("--scale", type=float,
                   help="object scale for every object (default: each object's most common training scale)")
    p.add_argument("--poses", type=positive_int, default=100, help="resting poses per object (default 100)")
    p.add_argument("--candidates", type=positive_int, default=256,
                   help="sampled grasps per pose (default 256; most put the hand through the table)")
    p.add_argument("--select", choices=SELECTIONS, default=["check"], nargs="+",
                   help="how to choose among table-clear candidates; several modes run on the same poses "
                        "and samples, the first one's records and videos kept: check (the default: hold-test the "
                        "--check-top of best contact score in the object frame, take the one holding in "
                        "most directions; its physics steps are counted), contact (kinematic contact "
                        "score only: no physics), first (the first clear one) or one-shot (the first "
                        "sample, clear or not: nothing simulated, nothing rejected) or learned (the clear "
                        "one of highest learned lift score, --scorer: nothing simulated)")
    p.add_argument("--scorer", metavar="DIR", help="--select learned: a scorer made by diffrl train-scorer")
    p.add_argument("--pose", choices=("auto", "on", "off"), default="auto",
                   help="sample each pose's candidates for how the object lies (its up-direction): auto (the "
                        "default) when the model was trained with a pose condition; on with a model without "
                        "one is an error")
    p.add_argument("--check-top", type=positive_int, default=16, metavar="M",
                   help="--select check: clear candidates hold-tested per pose (default 16)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=positive_int, help="denoising steps (DDIM)")
    p.add_argument("--backend", choices=("mjx", "mujoco"), default="mjx")
    p.add_argument("--threads", type=positive_int, help="threads (mujoco backend)")
    p.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P",
                   help="convex pieces per object the compiled scene holds")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a lift protocol field")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--videos", type=non_negative_int, default=2, metavar="N",
                   help="per object, mp4s of the first N successes and N failures (re-run on MuJoCo C, "
                        "rendered offscreen) and PNG stills of their grasps; 0: none (default 2)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_evaluate)
