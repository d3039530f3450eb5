"""Table clearance of a grasp dataset: can its grasps reach the object where it rests on a table?

    python experiments/table_clearance.py DATASET [--poses 20] [--scales 0.06,0.08] [--min-robustness R]

The pose-sampling evaluation (`diffrl evaluate`) rejects a sampled grasp
whose hand would pass through the table. A diffusion model samples grasps
like those it was trained on, so if a dataset holds no grasp that clears the
table in an object's resting poses, neither will its samples. This script
measures that bound on the data itself, before any training.

Per object and scale of the dataset: the object is dropped and settled in
`--poses` resting poses (the poses `diffrl evaluate --seed S` uses, same
protocol and seed), every grasp of that object and scale is moved onto it
in each pose, and `lift.table_clearance` (open pre-grasp, open hand at the
grasp, closed hand) is compared with the protocol's `table_margin_m`. It
reports

- `clear_pairs`: the fraction of (pose, grasp) pairs that clear the table;
- `poses_with_clear`: poses in which at least one grasp clears it (a pose
  without one is a likely failure for a model of this data, whose samples
  stay near its training grasps);
- `grasps_clear_somewhere`: the fraction of grasps that clear it in at
  least one pose.

`--min-robustness R` keeps only grasps labelled robustness >= R (what
`diffrl train --min-robustness R` trains on). It prints one row per object
and scale (`--json`: one JSON object) and, with `--out FILE`, writes the
result there (atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from diffrl_jax.cli.common import positive_floats, positive_int, run_script, save_out_json, unit_interval
from diffrl_jax.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="table_clearance", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="DexGraspNet-format dataset directory")
    parser.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    parser.add_argument("--scales", type=positive_floats, metavar="S,S,...",
                        help="only these scales (default: every scale of each object)")
    parser.add_argument("--poses", type=positive_int, default=20, help="resting poses per object (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="settling seed (diffrl evaluate's --seed)")
    parser.add_argument("--min-robustness", type=unit_interval, metavar="R",
                        help="only grasps labelled robustness >= R")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override a lift protocol field (as diffrl evaluate --set)")
    parser.add_argument("--backend", choices=("mujoco", "mjx"), default="mujoco",
                        help="settling physics (default mujoco: MuJoCo C)")
    parser.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P")
    parser.add_argument("--threads", type=positive_int, help="MuJoCo C threads")
    parser.add_argument("--out", metavar="FILE.json", help="write the result here")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def clearance_stats(clearance, margin: float) -> dict:
    """clearance [P, N] (m) -> the figures of one (object, scale); plain numbers."""
    import numpy as np

    clear = np.asarray(clearance) >= margin
    n_poses, n = clear.shape
    return {
        "grasps": int(n), "poses": int(n_poses),
        "clear_pairs": float(clear.mean()) if n else 0.0,
        "poses_with_clear": int(clear.any(axis=1).sum()),
        "grasps_clear_somewhere": float(clear.any(axis=0).mean()) if n else 0.0,
        "best_clearance_m": float(np.asarray(clearance).max()) if n else None,
    }


def run(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np
    from tqdm import tqdm

    from diffrl_jax.cli.evaluate import lift_protocol
    from diffrl_jax.data import dexgraspnet
    from diffrl_jax.evaluation import pose_sampling
    from diffrl_jax.objects import assets
    from diffrl_jax.sim import bank, lift
    from diffrl_jax.sim.robustness import LABEL

    protocol = lift_protocol(args.set)
    dataset = dexgraspnet.load_dexgraspnet(args.dataset, objects=args.objects)
    if args.min_robustness is not None:
        if LABEL not in dataset.extras:
            raise ConfigError(f"--min-robustness needs the {LABEL!r} label, which {args.dataset} lacks "
                              "(label it with diffrl robustness)")
        dataset = dataset.take(dataset.extras[LABEL] >= args.min_robustness)
    template = lift.make_template(protocol, bank.ObjectBudget(pieces=args.budget_pieces))
    clearance_fn = jax.jit(lambda g, p: pose_sampling.clearance_matrix(template, g, p))
    jobs = []
    for k, code in enumerate(dataset.object_codes):
        scales = np.unique(dataset.scales[dataset.object_index == k])
        if args.scales is not None:
            scales = [s for s in scales if np.isclose(s, args.scales, rtol=1e-4).any()]
        jobs += [(k, code, float(s)) for s in scales]
    if not jobs:
        raise ConfigError("no grasps left to measure (check --objects, --scales and --min-robustness)")
    rows, start = [], time.perf_counter()
    for k, code, scale in tqdm(jobs, desc="settling and measuring", unit="scale", file=sys.stderr, disable=None):
        obj = assets.mesh_object(dataset.mesh_path(code), scale)
        prepared = lift.prepare_object(template, obj)
        poses = pose_sampling.settle_poses(template, prepared, args.poses, args.seed, args.backend, args.threads)
        mask = (dataset.object_index == k) & np.isclose(dataset.scales, scale, rtol=1e-4)
        grasps = dataset.grasps[mask].astype(np.float32)
        clearance = np.asarray(clearance_fn(grasps, poses.astype(np.float32)))
        if not np.all(np.isfinite(clearance)):
            raise ConfigError(f"{code} at scale {scale:g}: a grasp has no finite clearance (NaN in the data?)")
        rows.append({"object": code, "scale": scale, **clearance_stats(clearance, protocol.table_margin_m)})
    return {
        "dataset": str(args.dataset), "min_robustness": args.min_robustness, "seed": args.seed,
        "table_margin_m": protocol.table_margin_m, "orientation": protocol.orientation,
        "backend": args.backend, "rows": rows, "seconds": time.perf_counter() - start,
    }


def _print_table(result: dict) -> None:
    print(f"{'object':<44} {'scale':>6} {'grasps':>6} {'clear pairs':>11} {'poses w/ clear':>14} "
          f"{'grasps clear somewhere':>22}")
    for r in result["rows"]:
        print(f"{r['object'][:44]:<44} {r['scale']:>6.3g} {r['grasps']:>6} {r['clear_pairs']:>11.3f} "
              f"{r['poses_with_clear']:>8}/{r['poses']:<5} {r['grasps_clear_somewhere']:>22.2f}")
    print(f"{result['seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(argv, build_parser(), run, _print_table, save_out_json)


if __name__ == "__main__":
    sys.exit(main())
