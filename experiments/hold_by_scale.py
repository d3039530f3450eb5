"""Hold-test success of a grasp dataset per object and scale, under a protocol and its overrides.

    python experiments/hold_by_scale.py DATASET [--protocol strict] [--set FIELD=VALUE ...] [--limit N]

`diffrl validate` reports one success rate per object; DexGraspNet gives
each object at several scales, and a grasp's difficulty grows with the
object's size and mass (at one density, scale 0.15 is 16 times the mass of
0.06). This script runs the same hold test (`validate.validate_dataset`) and
breaks the result down by scale: per (object, scale) the number of grasps,
the success rate, the per-direction hold rates and the median initial
penetration. With `--set` it is the tool for asking what a physics or
protocol change does, and where (for example `--set impratio=10`, `--set
finger_kp=10`, `--set acceleration=0`).

It prints one row per object and scale (`--json`: one JSON object) and,
with `--out FILE.json`, writes the result there (atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from diffrl_jax.cli.common import positive_int, run_script, save_out_json, typed_assignments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hold_by_scale", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="DexGraspNet-format dataset directory")
    parser.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="only the first N grasps of each object")
    parser.add_argument("--protocol", default="strict", help="hold protocol preset (default strict)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override a protocol field (as diffrl validate --set)")
    parser.add_argument("--backend", choices=("mujoco", "mjx"), default="mujoco",
                        help="physics (default mujoco: MuJoCo C)")
    parser.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P")
    parser.add_argument("--budget-vertices", type=positive_int, default=32, metavar="V",
                        help="hull vertices per convex piece (default 32; hulls with more are capped)")
    parser.add_argument("--threads", type=positive_int, help="MuJoCo C threads")
    parser.add_argument("--out", metavar="FILE.json", help="write the result here")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser


def scale_rows(dataset, rows: dict) -> list[dict]:
    """Per-grasp hold results -> one row per (object, scale) present; plain numbers."""
    import numpy as np

    from diffrl_jax.sim import validate

    out = []
    for entry in validate.entries(dataset):
        m = entry.rows[rows["done"][entry.rows]]
        if m.size:
            out.append({
                "object": entry.code, "scale": entry.scale, "n": int(m.size),
                "success_rate": float(rows["success"][m].mean()),
                "direction_success": [float(x) for x in rows["held"][m].mean(axis=0)],
                "penetration_mm_median": float(np.median(rows["penetration_mm"][m])),
            })
    return out


def run(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from diffrl_jax.data import dexgraspnet
    from diffrl_jax.sim import bank, validate
    from diffrl_jax.sim.protocol import HoldProtocol, protocol

    hold = protocol(args.protocol, **typed_assignments(args.set, "--set", HoldProtocol, "protocol"))
    v = args.budget_vertices
    budget = bank.ObjectBudget(pieces=args.budget_pieces, vertices=v, faces=max(60, 2 * v - 4),
                               edges=max(90, 3 * v - 6)).validate()
    dataset = dexgraspnet.load_dexgraspnet(args.dataset, objects=args.objects).first_per_object(args.limit)
    start = time.perf_counter()
    with tqdm(total=len(dataset), desc=f"hold tests ({args.backend})", unit="grasp", file=sys.stderr,
              disable=None) as bar:
        report, rows = validate.validate_dataset(dataset, hold, backend=args.backend, budget=budget,
                                                 nthread=args.threads, progress=bar.update)
    per_object = {code: o["success_rate"] for code, o in report["objects"].items()}
    return {
        "dataset": str(args.dataset), "protocol": validate.protocol_json(hold), "backend": args.backend,
        "budget": {"pieces": budget.pieces, "vertices": budget.vertices},
        "directions": report["directions"], "rows": scale_rows(dataset, rows), "objects": per_object,
        "seconds": time.perf_counter() - start,
    }


def _print_table(result: dict) -> None:
    dirs = " ".join(f"{d:>5}" for d in result["directions"])
    print(f"{'object':<44} {'scale':>6} {'n':>4} {'success':>8} {dirs} {'pen mm':>7}")
    for r in result["rows"]:
        held = " ".join(f"{x:>5.2f}" for x in r["direction_success"])
        print(f"{r['object'][:44]:<44} {r['scale']:>6.3g} {r['n']:>4} {r['success_rate']:>8.3f} {held} "
              f"{r['penetration_mm_median']:>7.2f}")
    for code, rate in result["objects"].items():
        print(f"{code[:44]:<44} {'all':>6} {'':>4} {rate:>8.3f}")
    print(f"{result['seconds']:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    return run_script(argv, build_parser(), run, _print_table, save_out_json)


if __name__ == "__main__":
    sys.exit(main())
