"""`diffrl evaluate`: pose-sampling success of a trained diffusion model, per object.

Writes to --out (never half-written; an existing summary is refused):
    summary.json   per object: rate, Wilson 95% interval, counts, timings;
                   the mean over objects; protocol, selection, device
    poses.jsonl    one record per (object, pose): pose, chosen grasp, score,
                   clearance, lift height, slip, success
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

from diffrl_jax.cli.common import parse_assignments, positive_int, write_json_atomic, write_jsonl_atomic
from diffrl_jax.errors import ConfigError, DataError


def _lift_protocol(items):
    from diffrl_jax.sim import lift

    overrides = {}
    for field, text in parse_assignments(items, "--set").items():
        try:
            overrides[field] = json.loads(text)
        except json.JSONDecodeError:
            overrides[field] = text
        if isinstance(overrides[field], list):
            overrides[field] = tuple(overrides[field])
    return lift.DEFAULT.replace(**overrides)


def _object_asset(spec):
    """The physical object of a sampler ObjectSpec (its mesh at its scale)."""
    from diffrl_jax.data import dexgraspnet
    from diffrl_jax.objects import assets

    if spec.mesh_source_root is not None:
        return assets.mesh_object(dexgraspnet.mesh_path(spec.mesh_source_root, spec.code), spec.scale)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "decomposed.obj"
        path.write_text(spec.mesh_text)
        return assets.mesh_object(path, spec.scale, name=spec.code)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import jax
    import numpy as np
    from tqdm import tqdm

    from diffrl_jax.diffusion import pipeline
    from diffrl_jax.evaluation import pose_sampling
    from diffrl_jax.evaluation.stats import rate
    from diffrl_jax.sim import bank, lift
    from diffrl_jax.sim.validate import device_name

    out = pathlib.Path(args.out)
    if (out / "summary.json").exists():
        raise DataError(f"{out} already holds an evaluation (summary.json); choose another --out")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    protocol = _lift_protocol(args.set)
    config = pose_sampling.PoseSamplingConfig(
        poses=args.poses, candidates=args.candidates, select=args.select, sampler=args.sampler,
        steps=args.steps, seed=args.seed).validate()
    trained = pipeline.load_trained(args.checkpoint)
    names = args.objects or list(trained.dataset.get("object_codes", []))
    if not names:
        raise ConfigError("the checkpoint names no training objects: pass --objects")
    specs = [pipeline.resolve_object(trained, name) for name in names]  # every name checked first
    template = lift.make_template(protocol, bank.ObjectBudget(pieces=args.budget_pieces))

    objects, records = {}, []
    start = time.perf_counter()
    for spec in tqdm(specs, desc=f"evaluating ({args.backend})", unit="object", file=sys.stderr, disable=None):
        prepared = lift.prepare_object(template, _object_asset(spec))

        def sample_fn(n, seed, spec=spec):
            return pipeline.sample_grasps(trained, spec.cond, n, method=config.sampler, steps=config.steps,
                                          seed=seed, guidance_scale=config.guidance)

        result = pose_sampling.evaluate_object(template, prepared, sample_fn, config, args.backend,
                                               nthread=args.threads)
        objects[spec.code] = {"scale": spec.scale, "seen_in_training": spec.seen, **result["summary"]}
        records += [{"object": spec.code, **r} for r in result["records"]]
    successes = sum(o["successes"] for o in objects.values())
    summary = {
        "objects": objects,
        "mean": {"rate": float(np.mean([o["rate"] for o in objects.values()])),
                 "pooled": rate(successes, sum(o["n"] for o in objects.values()))},
        "checkpoint": str(args.checkpoint), "checkpoint_step": trained.step,
        "config": {k: v for k, v in vars(config).items()},
        "protocol": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(protocol).items()},
        "backend": args.backend, "device": device_name(args.backend), "jax_device": jax.devices()[0].device_kind,
        "seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "poses.jsonl", records)
    write_json_atomic(out / "summary.json", summary)  # last: its presence marks a finished evaluation
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for code, o in objects.items():
            print(f"{code[:48]:<48} {o['successes']:>4}/{o['n']:<4} {o['rate']:6.1%} "
                  f"[{o['ci_low']:.1%}, {o['ci_high']:.1%}]  no clear candidate: {o['no_clear_candidate']}")
        print(f"mean {summary['mean']['rate']:.1%} over {len(objects)} object(s); {summary['seconds']:.0f} s; "
              f"records in {out}")
    return 0


def add_command(commands) -> None:
    p = commands.add_parser(
        "evaluate",
        help="pose-sampling success of a trained diffusion model: objects on a table, grasps sampled and lifted",
        description="Per object: N resting poses, K sampled grasps per pose, table-colliding ones "
                    "rejected, one chosen by a kinematic contact score, then lifted 20 cm and held 1 s. "
                    "Success rates come with Wilson 95%% intervals.",
    )
    p.add_argument("checkpoint", metavar="CKPT_DIR", help="directory written by diffrl train")
    p.add_argument("--objects", nargs="+", metavar="CODE|builtin:NAME",
                   help="objects to evaluate (default: the training objects)")
    p.add_argument("--poses", type=positive_int, default=100, help="resting poses per object (default 100)")
    p.add_argument("--candidates", type=positive_int, default=16, help="sampled grasps per pose (default 16)")
    p.add_argument("--select", choices=("contact", "first"), default="contact",
                   help="how to choose among table-clear candidates (default: contact score)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--steps", type=positive_int, help="denoising steps (DDIM)")
    p.add_argument("--backend", choices=("mjx", "mujoco"), default="mjx")
    p.add_argument("--threads", type=positive_int, help="threads (mujoco backend)")
    p.add_argument("--budget-pieces", type=positive_int, default=32, metavar="P",
                   help="convex pieces per object the compiled scene holds")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a lift protocol field")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_evaluate)
