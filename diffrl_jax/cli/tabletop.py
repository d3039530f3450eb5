"""`diffrl tabletop`: a grasp dataset's (grasp, resting pose) pairs, labelled by the table-top lift.

The shell of `workflows.tabletop.run_tabletop` (its files: grasps/, heldout/,
resting/, summary.json; see there): parses the flags, draws the progress
bar, prints the table.
"""

from __future__ import annotations

import argparse
import json

from diffrl_jax.cli.common import positive_int, typed_assignments


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def config_from_args(args: argparse.Namespace):
    """The `TabletopRunConfig` of parsed `diffrl tabletop` arguments."""
    from diffrl_jax.cli.evaluate import lift_protocol
    from diffrl_jax.workflows.tabletop import TabletopRunConfig

    return TabletopRunConfig(
        dataset=args.dir[0], extra_datasets=tuple(args.dir[1:]), protocol=lift_protocol(args.set),
        objects=None if args.objects is None else tuple(args.objects), limit=args.limit,
        only_success=args.only_success, poses=args.poses, yaws=args.yaws, heldout_poses=args.heldout_poses,
        heldout_grasps=args.heldout_grasps, backend=args.backend, threads=args.threads,
        budget_pieces=args.budget_pieces, seed=args.seed)


def cmd_tabletop(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.progress import TqdmBars
    from diffrl_jax.workflows.tabletop import run_tabletop, summary_lines

    summary = run_tabletop(config_from_args(args), args.out, bars=TqdmBars())
    print(json.dumps(summary, indent=2) if args.json else "\n".join(summary_lines(summary)))
    return 0


def scorer_config_from_args(args: argparse.Namespace):
    """The `ScorerConfig` of parsed `diffrl train-scorer` arguments (`--set` typed, then `--steps`)."""
    from diffrl_jax import configs
    from diffrl_jax.evaluation.scorer import ScorerConfig

    fields = typed_assignments(args.set, "--set", ScorerConfig, "scorer config")
    if args.steps is not None:
        fields["steps"] = args.steps
    return configs.replace(ScorerConfig(), fields, "scorer config").validate()


def cmd_train_scorer(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.progress import TqdmBars
    from diffrl_jax.workflows.tabletop import run_train_scorer

    record = run_train_scorer(args.dir, args.out, scorer_config_from_args(args), bars=TqdmBars())
    print(json.dumps(record, indent=2) if args.json else
          f"scorer trained on {record['pairs']} pairs ({record['positives']} lifted): loss {record['loss']:.4f}, "
          f"training accuracy {record['train_accuracy']:.3f}"
          + (f"; held-out pairs: AUC {record['heldout_auc']:.3f}, accuracy {record['heldout_accuracy']:.3f}"
             if record.get("heldout_auc") is not None else "") + f"; saved in {args.out}")
    return 0


def add_command(commands) -> None:
    p = commands.add_parser(
        "tabletop",
        help="label a dataset's (grasp, resting pose) pairs by the table-top lift, for a pose-conditioned model",
        description="Per object and scale: resting poses dropped and settled on the table; every grasp "
                    "moved onto every pose, those whose hand would pass through the table dropped, the "
                    "rest lifted at random yaws. Writes the pairs (object frame, labelled with the pose's "
                    "up-direction, class and lift success) in DexGraspNet format; train on them with "
                    "`diffrl train OUT --set pose_condition=true`.",
    )
    p.add_argument("dir", nargs="+", metavar="DIR",
                   help="dataset directories (grasps/ and meshdata/ inside); the grasps of several are "
                        "pooled, the first one's meshes serving all")
    p.add_argument("--out", required=True, help="output directory (new)")
    p.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    p.add_argument("--limit", type=positive_int, metavar="N", help="the first N grasps of each object")
    p.add_argument("--only-success", action="store_true",
                   help="start only from the grasps labelled success (default: all; the lift judges them)")
    p.add_argument("--poses", type=positive_int, default=32, help="resting drops per object and scale (default 32)")
    p.add_argument("--yaws", type=positive_int, default=2,
                   help="lifts per clear pair, each at a random yaw; success is lifting at all (default 2)")
    p.add_argument("--heldout-poses", type=_fraction, default=0.2, metavar="F",
                   help="fraction of the drops held out, written apart (default 0.2)")
    p.add_argument("--heldout-grasps", type=_fraction, default=0.2, metavar="F",
                   help="fraction of the grasps held out, written apart (default 0.2)")
    p.add_argument("--backend", choices=("mjx", "mujoco"), default="mujoco",
                   help="simulator of the settles and lifts (default mujoco: MuJoCo C on CPU threads)")
    p.add_argument("--threads", type=positive_int, help="threads (mujoco backend)")
    p.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P",
                   help="convex pieces per object the compiled scene holds")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a lift protocol field")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_tabletop)

    s = commands.add_parser(
        "train-scorer",
        help="train the learned lift score of --select learned on a table-top dataset",
        description="A small classifier of lift success from the grasp, the object's shape encoding and the "
                    "resting pose's up-direction, fitted to the success labels of `diffrl tabletop`'s pairs "
                    "(lifted or not, all clear of the table). `diffrl evaluate --select learned --scorer DIR` "
                    "ranks each pose's table-clear samples by it: nothing simulated to choose.",
    )
    s.add_argument("dir", help="a table-top dataset directory (written by diffrl tabletop)")
    s.add_argument("--out", required=True, help="output directory (new)")
    s.add_argument("--steps", type=positive_int, help="optimisation steps (default 2000)")
    s.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a ScorerConfig field, e.g. --set width=128; the encoding fields must match "
                        "the diffusion model's")
    s.add_argument("--json", action="store_true", help="print the training record as JSON")
    s.set_defaults(func=cmd_train_scorer)
