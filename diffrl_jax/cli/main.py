"""The `diffrl` command line: a thin shell over the library.

Errors a user can cause (`DiffrlError`) print `error: ...` and exit 2, never
a traceback; results go to stdout (JSON with `--json`), progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from diffrl_jax.errors import DiffrlError

EXIT_USER_ERROR = 2


def _hull_vertices(text: str) -> int | None:
    value = int(text)
    if value == 0:
        return None
    if value < 4:
        raise argparse.ArgumentTypeError("must be 0 (no cap) or at least 4")
    return value


def _cmd_data_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.evaluation.check import check_dataset

    dataset = load_dexgraspnet(args.dir, objects=args.objects, skip_bad=args.skip_bad)
    for code, reason in dataset.skipped:
        print(f"warning: skipped {code}: {reason}", file=sys.stderr)
    with tqdm(total=len(dataset.object_codes), desc="checking", unit="object",
              file=sys.stderr, disable=None) as bar:
        report = check_dataset(
            dataset, max_hull_vertices=args.max_hull_vertices,
            progress=lambda code: bar.update(1),
        )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    header = f"{'object':<48} {'grasps':>6} {'limit viol.':>11} {'worst rad':>9} " \
             f"{'tip mm':>7} {'pen. med mm':>11} {'pen. max mm':>11}"
    print(header)
    print("-" * len(header))
    for code, r in report["objects"].items():
        v = r["joint_limit_violations"]
        print(f"{code[:48]:<48} {r['n_grasps']:>6} {v['count']:>11} {v['worst_rad']:>9.3f} "
              f"{r['fingertip_surface_mm_median']:>7.2f} {r['penetration_mm_median']:>11.2f} "
              f"{r['penetration_mm_max']:>11.2f}")
    return 0


DEFAULT_EXAMPLE_OBJECTS = ("bottle", "box", "cylinder", "mug")


def _cmd_data_example(args: argparse.Namespace) -> int:
    import os
    import pathlib
    import tempfile

    from tqdm import tqdm

    from diffrl_jax.data.dexgraspnet import mesh_path, write_dexgraspnet
    from diffrl_jax.data.example import example_dataset

    from diffrl_jax.objects.assets import builtin_object

    for name in args.objects:  # all names checked before anything is written
        builtin_object(name)
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise DiffrlError(f"{out} exists and is not a directory")
    for name in tqdm(args.objects, desc="grasping", unit="object", file=sys.stderr, disable=None):
        dataset, text = example_dataset(name, args.n, seed=args.seed)
        mesh = mesh_path(out, dataset.object_codes[0])
        mesh.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=mesh.parent, prefix=".decomposed.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, mesh)
        write_dexgraspnet(out, dataset)
    print(f"wrote {len(args.objects)} object(s) x {args.n} grasps to {out}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffrl",
        description="Diffusion grasp policies on RL-adapted DexGraspNet datasets, in JAX.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = commands.add_parser("data", help="inspect grasp datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    check = data_commands.add_parser(
        "check",
        help="check a DexGraspNet-format directory against the hand model",
        description="Per object: grasp count, scales, joint-limit violations, median "
                    "fingertip-to-surface distance and hand-object penetration (mm).",
    )
    check.add_argument("dir", help="dataset directory (grasps/ and meshdata/ inside)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    check.add_argument("--skip-bad", action="store_true",
                       help="report malformed grasp files and go on with the good ones")
    check.add_argument("--max-hull-vertices", type=_hull_vertices, default=32, metavar="N",
                       help="cap on each convex piece's hull vertices (0: no cap; default 32, "
                            "as simulated)")
    check.set_defaults(func=_cmd_data_check)

    example = data_commands.add_parser(
        "example",
        help="write a DexGraspNet-format dataset of built-in objects (no downloads)",
        description="Kinematic grasps (palm facing the object, fingers closed until "
                    "contact) on built-in objects, written in DexGraspNet's layout.",
    )
    example.add_argument("out", help="output directory")
    example.add_argument("--objects", nargs="+", default=list(DEFAULT_EXAMPLE_OBJECTS),
                         metavar="NAME", help="built-in objects (default: %(default)s)")
    example.add_argument("--n", type=_positive_int, default=32, help="grasps per object")
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(func=_cmd_data_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DiffrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
