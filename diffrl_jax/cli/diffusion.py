"""`diffrl train` and `diffrl sample`: the diffusion model's command-line shell.

Thin over `diffrl_jax.workflows.diffusion` (`run_train`, `run_sample`):
argument parsing, progress bars, printing. Results go to stdout, progress
to stderr; user errors raise DiffrlError.

    diffrl train DATASET --out CKPT_DIR [--steps N] [--batch B] [--resume] ...
    diffrl sample CKPT_DIR --object CODE|builtin:NAME|MESH.obj --n N --out DIR ...

A training directory holds the checkpoints (`<step>/`), `metrics.jsonl` (one
line per block of steps) and `loss.png`.
"""

from __future__ import annotations

import argparse
import json

from diffrl_jax.cli.common import add_distributed_options, parse_assignments, positive_int, unit_interval


def train_config_from_args(args: argparse.Namespace):
    """The `TrainRunConfig` of parsed `diffrl train` arguments (`--set` typed)."""
    from diffrl_jax.diffusion.config import DiffusionConfig
    from diffrl_jax.overrides import parse_overrides
    from diffrl_jax.workflows.diffusion import TrainRunConfig

    return TrainRunConfig(
        dataset=args.dataset, steps=args.steps, batch=args.batch, seed=args.seed,
        only_success=True if args.only_success else (False if args.all_grasps else None),
        min_robustness=args.min_robustness,
        diffusion=parse_overrides(DiffusionConfig, parse_assignments(args.set, "--set"), "diffusion config"),
        skip_bad=args.skip_bad, resume=args.resume)


def cmd_train(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.diffusion import run_train, train_message
    from diffrl_jax.workflows.progress import TqdmBars

    bars = TqdmBars()
    summary = run_train(train_config_from_args(args), args.out, bars=bars,
                        progress_fn=lambda step, row: bars.current.set_postfix(loss=f"{row['loss']:.4f}"))
    if summary is None:
        return 0  # process 0 writes and prints
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(train_message(summary))
    return 0


def sample_config_from_args(args: argparse.Namespace):
    """The `SampleRunConfig` of parsed `diffrl sample` arguments."""
    from diffrl_jax.workflows.diffusion import SampleRunConfig

    return SampleRunConfig(checkpoint=args.checkpoint, object=args.object, n=args.n, scale=args.scale,
                           steps=args.steps, sampler=args.sampler, guidance=args.guidance, seed=args.seed,
                           batch=args.batch, step=args.step)


def cmd_sample(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.diffusion import run_sample, sample_message
    from diffrl_jax.workflows.progress import TqdmBars

    summary = run_sample(sample_config_from_args(args), args.out, bars=TqdmBars())
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(sample_message(summary))
    return 0


def add_commands(commands) -> None:
    """Adds `train` and `sample` to the `diffrl` subcommands (argparse subparsers)."""
    train = commands.add_parser(
        "train",
        help="train a diffusion grasp model on a DexGraspNet-format dataset",
        description="Trains the conditional denoiser on the dataset's grasps (by default only "
                    "those labelled success when a 'success' label exists), writing "
                    "checkpoints, metrics.jsonl and loss.png to --out.",
    )
    train.add_argument("dataset", help="dataset directory (grasps/ and meshdata/ inside)")
    train.add_argument("--out", required=True, metavar="CKPT_DIR", help="checkpoint directory")
    train.add_argument("--steps", type=positive_int, help="total optimisation steps (default 5000)")
    train.add_argument("--batch", type=positive_int, help="minibatch size (default 256)")
    train.add_argument("--seed", type=int, help="random seed (default 0)")
    which = train.add_mutually_exclusive_group()
    which.add_argument("--only-success", action="store_true",
                       help="train only on grasps labelled success (an error without that label)")
    which.add_argument("--all-grasps", action="store_true", help="ignore a 'success' label")
    train.add_argument("--min-robustness", type=unit_interval, metavar="R",
                       help="train only on grasps whose 'robustness' label is at least R "
                            "(see `diffrl robustness`)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    train.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="override a DiffusionConfig field, e.g. --set width=128 (repeatable)")
    train.add_argument("--skip-bad", action="store_true", help="skip malformed grasp files")
    train.add_argument("--json", action="store_true", help="print a JSON summary")
    add_distributed_options(train)
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser(
        "sample",
        help="sample grasps for an object from a trained model into a DexGraspNet-format directory",
        description="Writes grasps/<code>.npy and meshdata/<code>/coacd/decomposed.obj to --out "
                    "(other objects already there are kept; the same object is overwritten).",
    )
    sample.add_argument("checkpoint", metavar="CKPT_DIR", help="directory written by diffrl train")
    sample.add_argument("--object", required=True, metavar="CODE|builtin:NAME|MESH.obj",
                        help="an object code of the training dataset, a built-in object, or a "
                             "CoACD-style OBJ file (an unseen object)")
    sample.add_argument("--scale", type=float,
                        help="object scale (default: the object's most common training scale; "
                             "built-ins: their natural size; required for mesh files)")
    sample.add_argument("--n", type=positive_int, required=True, help="grasps to sample")
    sample.add_argument("--steps", type=positive_int, help="DDIM steps (default 10)")
    sample.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    sample.add_argument("--guidance", type=float, default=1.0,
                        help="classifier-free guidance scale (1: none)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--batch", type=positive_int, default=4096,
                        help="grasps per compiled sampling call (default 4096)")
    sample.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    sample.add_argument("--out", required=True, help="output directory (DexGraspNet format)")
    sample.add_argument("--json", action="store_true", help="print a JSON summary")
    sample.set_defaults(func=cmd_sample)
