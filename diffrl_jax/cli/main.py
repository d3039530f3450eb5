"""The `diffrl` command line: a thin shell over the library.

Errors a user can cause (`DiffrlError`) print `error: ...` and exit 2, never
a traceback; results go to stdout (JSON with `--json`), progress to stderr.
A command that writes holds a lock on its output (`cli.common.run_command`)
from before it looks at it until it exits: a second writer of the same
path exits 2 at once, naming the first one's PID.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from diffrl_jax.cli.common import (EXIT_USER_ERROR, add_distributed_options, join_processes, parse_assignments,
                                   positive_int, run_command, typed_assignments)
from diffrl_jax.errors import DiffrlError
from diffrl_jax.files import write_json_atomic



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
    import pathlib

    from tqdm import tqdm

    from diffrl_jax.data.dexgraspnet import write_dexgraspnet, write_mesh
    from diffrl_jax.data.example import example_dataset

    from diffrl_jax.objects.assets import builtin_object

    for name in args.objects:  # all names checked before anything is written
        builtin_object(name)
    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise DiffrlError(f"{out} exists and is not a directory")
    for name in tqdm(args.objects, desc="grasping", unit="object", file=sys.stderr, disable=None):
        dataset, text = example_dataset(name, args.n, seed=args.seed)
        write_mesh(out, dataset.object_codes[0], text)
        write_dexgraspnet(out, dataset)
    print(f"wrote {len(args.objects)} object(s) x {args.n} grasps to {out}")
    return 0


def _cmd_data_library(args: argparse.Namespace) -> int:
    import collections
    import pathlib

    from diffrl_jax.objects.library import generate_library, write_library

    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise DiffrlError(f"{out} exists and is not a directory")
    objects = generate_library(args.n, seed=args.seed)
    manifest = write_library(objects, out)
    families = collections.Counter(obj.family for obj in objects)
    print(f"wrote {len(objects)} object(s) to {out}/meshdata and their scales and masses to {manifest}: "
          + ", ".join(f"{count} {family}" for family, count in families.items()))
    return 0


def _cmd_data_import_mesh(args: argparse.Namespace) -> int:
    from diffrl_jax.objects.mesh_import import import_mesh

    imported = import_mesh(args.mesh, args.out, code=args.code, scale=args.scale, threshold=args.threshold,
                           max_pieces=args.max_pieces, seed=args.seed)
    vertices = "+".join(str(len(p)) for p in imported.pieces)
    size_cm = " x ".join(f"{100 * side:.1f}" for side in imported.size_m)
    print(f"wrote {imported.path}: {len(imported.pieces)} convex piece(s), {vertices} hull vertices, "
          f"scale {imported.scale:.6g} m per mesh unit ({size_cm} cm)")
    return 0


def _protocol_from_args(args: argparse.Namespace):
    from diffrl_jax.sim.protocol import protocol

    return protocol(args.protocol, **_hold_overrides(args))


def _budget_from_args(args: argparse.Namespace):
    from diffrl_jax.sim.bank import ObjectBudget

    return ObjectBudget(pieces=args.budget_pieces).validate()


def _hold_overrides(args: argparse.Namespace) -> dict:
    from diffrl_jax.sim.protocol import HoldProtocol

    return typed_assignments(args.set, "--set", HoldProtocol, "protocol")


def validate_config_from_args(args: argparse.Namespace):
    """The `workflows.dataset.ValidateRunConfig` of parsed `diffrl validate` arguments."""
    from diffrl_jax.workflows.dataset import ValidateRunConfig

    return ValidateRunConfig(
        dataset=args.dir, objects=None if args.objects is None else tuple(args.objects), limit=args.limit,
        protocol=args.protocol, hold=_hold_overrides(args), backend=args.backend,
        budget_pieces=args.budget_pieces, groups=args.groups, group_size=args.group_size, threads=args.threads)


def propose_config_from_args(args: argparse.Namespace):
    """The `workflows.dataset.ProposeRunConfig` of parsed `diffrl propose` arguments."""
    from diffrl_jax.workflows.dataset import ProposeRunConfig

    return ProposeRunConfig(object=args.object, n=args.n, scale=args.scale, seed=args.seed,
                            label=not args.no_label, protocol=args.protocol, hold=_hold_overrides(args),
                            backend=args.backend, budget_pieces=args.budget_pieces)


def _cmd_validate(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.dataset import run_validate, validation_table
    from diffrl_jax.workflows.progress import TqdmBars

    report = run_validate(validate_config_from_args(args), out=args.out, bars=TqdmBars())
    if report is None:
        return 0  # process 0 writes and prints the merged result
    print(json.dumps(report, indent=2) if args.json else "\n".join(validation_table(report)))
    return 0


def _cmd_propose(args: argparse.Namespace) -> int:
    from diffrl_jax.workflows.dataset import run_propose
    from diffrl_jax.workflows.progress import TqdmBars

    result = run_propose(propose_config_from_args(args), args.out, bars=TqdmBars())
    print(f"wrote {result['n']} grasps of {result['code']} to {result['out']}")
    return 0


def _cmd_synthesize(args: argparse.Namespace) -> int:
    from diffrl_jax.synthesis.optimize import SynthesisConfig
    from diffrl_jax.workflows.progress import TqdmBars
    from diffrl_jax.workflows.synthesize import run_synthesize

    overrides = typed_assignments(args.set, "--set", SynthesisConfig, "synthesis")
    if args.steps is not None:
        overrides["steps"] = args.steps
    config = SynthesisConfig().replace(**overrides) if overrides else SynthesisConfig()
    result = run_synthesize(args.dir, args.out, codes=args.objects, scales=args.scale, grasps_per_object=args.n,
                            config=config, batch=args.batch, chunk=args.chunk, seed=args.seed, bars=TqdmBars(),
                            keep=args.keep)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'object':<48} {'n':>5} {'energy':>8} {'dist mm':>8} {'pen':>7}")
    for code, r in result["objects"].items():
        print(f"{code[:48]:<48} {r['n']:>5} {r['median_energy']:>8.3f} {1e3 * r['median_distance_m']:>8.2f} "
              f"{r['median_penetration']:>7.4f}")
    kept = f", the {result['grasps']} of lowest energy kept" if result["grasps"] < result["synthesised"] else ""
    print(f"{result['synthesised']} grasps in {result['seconds']:.0f} s ({result['grasps_per_s']:.2f} grasps/s, "
          f"{result['steps']} steps){kept}; wrote {result['out']} (label them: diffrl validate {result['out']})")
    return 0


def _cmd_robustness(args: argparse.Namespace) -> int:
    import pathlib

    import numpy as np
    from tqdm import tqdm

    from diffrl_jax.data.dexgraspnet import load_dexgraspnet, write_dexgraspnet
    from diffrl_jax.files import staged_directory
    from diffrl_jax.sim import robustness

    protocol = _protocol_from_args(args)
    budget = _budget_from_args(args)
    overrides = typed_assignments(args.perturb, "--perturb", robustness.PerturbConfig, "robustness")
    if args.samples is not None:
        overrides["samples"] = args.samples
    config = robustness.PerturbConfig().replace(**overrides)
    src, out = pathlib.Path(args.dir).resolve(), pathlib.Path(args.out).resolve()
    if out == src:
        raise DiffrlError("--out must differ from the dataset directory (the dataset is not changed in place)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DiffrlError(f"{out} exists and is not an empty directory")
    dataset = load_dexgraspnet(src, objects=args.objects).first_per_object(args.limit)
    with tqdm(total=len(dataset) * config.samples, desc=f"perturbed hold tests ({args.backend})",
              unit="grasp", file=sys.stderr, disable=None) as bar:
        values, timings = robustness.robustness(dataset, protocol, config, backend=args.backend,
                                                budget=budget, nthread=args.threads,
                                                progress=bar.update)
    with staged_directory(out) as staging:  # out is absent or empty (checked above, under the lock)
        write_dexgraspnet(staging, dataset, labels={robustness.LABEL: values})
    report = {"protocol": protocol.name, "backend": args.backend,
              "perturbation": dataclasses.asdict(config), "objects": {},
              "grasps_per_s": timings["grasps_per_s"]}
    for k, code in enumerate(dataset.object_codes):
        r = values[dataset.object_index == k]
        report["objects"][code] = {"n": int(len(r)), "mean": float(r.mean()),
                                   "median": float(np.median(r)),
                                   "at_least_half": float(np.mean(r >= 0.5))}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'object':<48} {'n':>5} {'mean':>6} {'median':>7} {'>=0.5':>6}")
        for code, r in report["objects"].items():
            print(f"{code[:48]:<48} {r['n']:>5} {r['mean']:>6.3f} {r['median']:>7.3f} "
                  f"{r['at_least_half']:>6.3f}")
        print(f"{config.samples} perturbed copies per grasp, {timings['grasps_per_s']:.1f} hold tests/s; "
              f"wrote {out} with the label {robustness.LABEL!r}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import time

    import jax

    from diffrl_jax import bench

    batches = {}
    for stage, text in parse_assignments(args.batch, "--batch").items():
        if stage not in bench.STAGES:
            raise DiffrlError(f"--batch: unknown stage {stage!r}; choose from {list(bench.STAGES)}")
        try:
            sizes = [int(x) for x in text.split(",")]
        except ValueError:
            raise DiffrlError(f"--batch {stage}=... expects comma-separated integers, got {text!r}") from None
        if not sizes or min(sizes) < 1:
            raise DiffrlError(f"--batch {stage}: batch sizes must be positive, got {text!r}")
        batches[stage] = sizes
    stages = args.stages or list(bench.STAGES)

    def show(f):
        if not args.json:
            extra = f" ({f.extra['physics_steps_per_s']:.0f} physics steps/s)" if "physics_steps_per_s" in f.extra \
                else ""
            print(f"{f.stage:>8} batch {f.batch:>6}: {f.value:>11.1f} {f.unit}{extra}  jit {f.jit_s:6.1f} s  "
                  f"{f.device} x{f.devices}", flush=True)

    start = time.perf_counter()
    figures = bench.run(stages, batches, args.backend, on_figure=show)
    d = jax.devices()[0]
    report = {"device": f"{d.platform} ({d.device_kind})", "devices": jax.device_count(),
              "processes": jax.process_count(), "jax": jax.__version__,
              "total_s": time.perf_counter() - start, "figures": [f.to_json() for f in figures]}
    if args.out:
        write_json_atomic(args.out, report)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _add_sim_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", default="strict", choices=("strict", "dexgraspnet"),
                        help="hold-test protocol (default: %(default)s)")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="override a protocol field, e.g. --set friction=0.5 (repeatable)")
    parser.add_argument("--backend", default="mjx", choices=("mjx", "mujoco"),
                        help="mjx (JAX, GPU/TPU) or mujoco (MuJoCo C on CPU threads)")
    parser.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P",
                        help="convex pieces per object in the compiled program (default 32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffrl",
        description="Diffusion grasp policies on RL-adapted DexGraspNet datasets, in JAX.",
    )
    parser.add_argument("--compile-cache", metavar="DIR",
                        help="JAX's persistent compilation cache (default $DIFFRL_JAX_CACHE or "
                             "~/.cache/diffrl_jax/jax; '' turns it off)")
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
    example.add_argument("--n", type=positive_int, default=32, help="grasps per object")
    example.add_argument("--seed", type=int, default=0)
    example.set_defaults(func=_cmd_data_example)

    library = data_commands.add_parser(
        "library",
        help="write a generated library of household objects in DexGraspNet's mesh layout (no downloads)",
        description="Eight families of convex-piece objects (superquadrics, rounded boxes, prisms, mugs, "
                    "rimmed cylinders, frusta, ellipsoids, random compositions), 5-25 cm and 30-600 g: "
                    "OUT/meshdata/<code>/coacd/decomposed.obj, and each object's scale and mass in "
                    "OUT/library.json. The same seed gives the same objects; a larger --n only adds more.",
    )
    library.add_argument("out", help="output directory")
    library.add_argument("--n", type=positive_int, default=200, help="objects (default %(default)s)")
    library.add_argument("--seed", type=int, default=0)
    library.set_defaults(func=_cmd_data_library)

    import_parser = data_commands.add_parser(
        "import-mesh",
        help="decompose a mesh (OBJ, STL, PLY; metres) into convex pieces with CoACD, in DexGraspNet's layout",
        description="Writes OUT/meshdata/<code>/coacd/decomposed.obj: CoACD's convex pieces, each capped at "
                    "32 hull vertices, centred and normalised to unit radius; load it at the printed scale.",
    )
    import_parser.add_argument("mesh", help="mesh file (.obj, .stl or .ply), in metres")
    import_parser.add_argument("--out", required=True, help="dataset directory (meshdata/ inside)")
    import_parser.add_argument("--code", help="object code (default: the file's name)")
    import_parser.add_argument("--scale", type=float,
                               help="the object's radius in metres (default: the mesh's own, in metres)")
    import_parser.add_argument("--threshold", type=float, default=0.05,
                               help="CoACD concavity threshold, lower gives more pieces (default %(default)s)")
    import_parser.add_argument("--max-pieces", type=positive_int, default=8, metavar="K",
                               help="at most K convex pieces (default %(default)s)")
    import_parser.add_argument("--seed", type=int, default=0)
    import_parser.set_defaults(func=_cmd_data_import_mesh)

    validate = commands.add_parser(
        "validate",
        help="hold-test every grasp of a DexGraspNet-format directory",
        description="Per object: success rate under the hold test (six pull directions), "
                    "per-direction success and median initial penetration.",
    )
    validate.add_argument("dir", help="dataset directory (grasps/ and meshdata/ inside)")
    validate.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    validate.add_argument("--limit", type=positive_int, metavar="N",
                          help="the first N grasps of each object")
    validate.add_argument("--out", metavar="FILE.json", help="write the JSON report here")
    validate.add_argument("--json", action="store_true", help="print the JSON report")
    validate.add_argument("--groups", type=positive_int, default=4,
                          help="objects per compiled batch (mjx)")
    validate.add_argument("--group-size", type=positive_int, default=16,
                          help="grasps per object per compiled batch (mjx)")
    validate.add_argument("--threads", type=positive_int, help="threads (mujoco backend)")
    _add_sim_options(validate)
    add_distributed_options(validate)
    validate.set_defaults(func=_cmd_validate, out_is_file=True)

    propose = commands.add_parser(
        "propose",
        help="propose grasps for an object without a dataset, label them, write a dataset",
        description="Palm poses sampled around the object facing it, fingers closed in "
                    "simulation until contact, labelled by the hold test.",
    )
    propose.add_argument("--object", required=True, metavar="builtin:NAME|OBJ",
                         help="a built-in object (builtin:box ...) or a CoACD-style OBJ file")
    propose.add_argument("--scale", type=float, default=1.0, help="mesh scale (OBJ files)")
    propose.add_argument("--n", type=positive_int, default=64, help="grasps to propose")
    propose.add_argument("--seed", type=int, default=0)
    propose.add_argument("--out", required=True, help="output directory")
    propose.add_argument("--no-label", action="store_true", help="skip the hold test")
    _add_sim_options(propose)
    propose.set_defaults(backend="mujoco", func=_cmd_propose)

    synth = commands.add_parser(
        "synthesize",
        help="synthesise grasps on meshes by DexGraspNet's energy optimisation (JAX)",
        description="Force closure, contact distance, penetration, self-penetration and joint limits, "
                    "minimised from palm-facing initial poses by DexGraspNet's annealed gradient steps "
                    "with contact switching. Objects: DIR/meshdata/ (a DexGraspNet release, `diffrl data "
                    "library`, `diffrl data import-mesh`); scales: --scale, else the library's, else those "
                    "of DIR/grasps/. Writes a DexGraspNet-format dataset labelled with its energies.",
    )
    synth.add_argument("dir", help="directory with meshdata/<code>/coacd/decomposed.obj")
    synth.add_argument("--out", required=True, help="output directory (new or empty)")
    synth.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    synth.add_argument("--scale", type=float, nargs="+", metavar="S", help="object scales (mesh units -> m)")
    synth.add_argument("--n", type=positive_int, default=64, help="grasps synthesised per object and scale")
    synth.add_argument("--keep", type=float, default=1.0, metavar="F",
                       help="keep the lowest-energy fraction F of each object and scale's grasps (default 1: all)")
    synth.add_argument("--steps", type=positive_int, help="optimisation steps (default 6000, DexGraspNet's)")
    synth.add_argument("--batch", type=positive_int, default=64, help="grasps optimised at once")
    synth.add_argument("--chunk", type=positive_int, default=100, help="steps per compiled call")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="synthesis config override (e.g. step_size=0.005, weights.penetration=100)")
    synth.add_argument("--json", action="store_true", help="print one JSON object")
    synth.set_defaults(func=_cmd_synthesize)

    robust = commands.add_parser(
        "robustness",
        help="label every grasp with how often it holds when placed a little off",
        description="Each grasp is jittered SAMPLES times (palm position, palm rotation, "
                    "finger joints; truncated Gaussian noise) and each copy hold-tested; the "
                    "fraction that holds is written as the label 'robustness' into a copy "
                    "of the dataset at --out.",
    )
    robust.add_argument("dir", help="dataset directory (grasps/ and meshdata/ inside)")
    robust.add_argument("--out", required=True, help="output directory (new or empty)")
    robust.add_argument("--objects", nargs="+", metavar="CODE", help="only these object codes")
    robust.add_argument("--limit", type=positive_int, metavar="N", help="the first N grasps of each object")
    robust.add_argument("--samples", type=positive_int, help="perturbed copies per grasp (default 16)")
    robust.add_argument("--perturb", action="append", metavar="FIELD=VALUE",
                        help="override a PerturbConfig field, e.g. --perturb translation_m=0.004")
    robust.add_argument("--threads", type=positive_int, help="threads (mujoco backend)")
    robust.add_argument("--json", action="store_true", help="print the JSON report")
    _add_sim_options(robust)
    robust.set_defaults(backend="mujoco", func=_cmd_robustness)

    from diffrl_jax.cli import diffusion, evaluate, refine, tabletop

    refine.add_commands(commands)
    tabletop.add_command(commands)
    diffusion.add_commands(commands)
    evaluate.add_command(commands)

    from diffrl_jax.cli import pipeline

    pipeline_parser = commands.add_parser(
        "pipeline",
        help="every stage end to end: raw grasps, validate, refine, train, sample, evaluate, report",
        description="Runs experiments/pipeline.py: raw dataset -> validate -> refine -> train -> sample -> "
                    "pose-sampling evaluation, writing RUN_DIR/report.md and RUN_DIR/summary.json. A rerun "
                    "skips finished stages and resumes an interrupted one.",
    )
    pipeline.add_arguments(pipeline_parser)
    pipeline_parser.set_defaults(func=pipeline.run_from_args)

    bench_parser = commands.add_parser(
        "bench",
        help="throughput of every stage: physics, validation, PPO, diffusion training and sampling",
        description="One figure per (stage, batch size): the rate of a warm run, JIT seconds apart, "
                    "device kind and count. Batches are split over every device.",
    )
    bench_parser.add_argument("--stages", nargs="+", choices=("physics", "validate", "ppo", "train", "sample"),
                              metavar="STAGE", help="physics validate ppo train sample (default: all)")
    bench_parser.add_argument("--batch", action="append", metavar="STAGE=B[,B...]",
                              help="batch sizes of a stage (repeatable); defaults depend on the platform")
    bench_parser.add_argument("--backend", choices=("mjx", "mujoco"),
                              help="validate/ppo simulator (default: mujoco on CPU, mjx on accelerators)")
    bench_parser.add_argument("--out", metavar="FILE.json", help="also write the JSON report here")
    bench_parser.add_argument("--json", action="store_true", help="print one JSON object")
    bench_parser.set_defaults(func=_cmd_bench, out_is_file=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from diffrl_jax import runtime

    runtime.configure(args.compile_cache)
    try:
        join_processes(args)
        return run_command(args)  # under the lock on its --out
    except DiffrlError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
