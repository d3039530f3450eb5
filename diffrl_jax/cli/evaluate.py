"""`diffrl evaluate`: pose-sampling success of a trained diffusion model, per object.

Writes to --out (never half-written; an existing summary is refused):
    summary.json   per object: rate, Wilson 95% interval, counts, timings;
                   the mean over objects; protocol, selection, device
    poses.jsonl    one record per (object, pose): pose, chosen grasp, score,
                   clearance, lift height, slip, success
    videos/        <object>-pose<k>-success.mp4 / -failure.mp4: the first --videos
                   successes and failures of each object, re-run on MuJoCo C and
                   rendered offscreen (`evaluation/render.py`)
    grasps/        <object>-pose<k>.png: a still of each of those poses' chosen grasp

Rendering needs a headless OpenGL backend (EGL or OSMesa). Without one the
evaluation still finishes: a warning, and summary.json says
`"videos": "skipped: <reason>"`. summary.json is written last.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import tempfile
import time

from diffrl_jax.cli.common import non_negative_int, positive_int, typed_assignments
from diffrl_jax.files import write_json_atomic, write_jsonl_atomic, write_text_atomic
from diffrl_jax.errors import ConfigError, DataError


def lift_protocol(items):
    """`--set FIELD=VALUE` items (typed by the field) -> the default LiftProtocol with them."""
    from diffrl_jax.sim import lift

    return lift.DEFAULT.replace(**typed_assignments(items, "--set", lift.LiftProtocol, "lift protocol"))


def _object_asset(spec):
    """The physical object of a sampler ObjectSpec (its mesh at its scale)."""
    from diffrl_jax.data import dexgraspnet
    from diffrl_jax.objects import assets

    if spec.mesh_source_root is not None:
        return assets.mesh_object(dexgraspnet.mesh_path(spec.mesh_source_root, spec.code), spec.scale)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "decomposed.obj"
        write_text_atomic(path, spec.mesh_text)  # a full temporary disk is an OutputError too
        return assets.mesh_object(path, spec.scale, name=spec.code)


VIDEO_FPS = 30
VIDEO_SIZE = (480, 360)  # width, height (even, as H.264 wants)
STILL_SIZE = (640, 480)


def file_stem(code: str, pose: int) -> str:
    """`<object>-pose<k>`, with characters unsafe in a file name replaced by `_`."""
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', code)}-pose{pose}"


def select_poses(records: list[dict], n: int) -> list[tuple[int, str]]:
    """Pose records -> [(index into records, "success" | "failure")]: the first n of each, in pose order.

    Failures whose pose had a table-clear candidate come first: the hand then
    grasped; without one it went through the table.
    """
    successes = [i for i, r in enumerate(records) if r["success"]]
    failures = sorted((i for i, r in enumerate(records) if not r["success"]),
                      key=lambda i: (records[i].get("clear_candidates", 1.0) == 0, i))
    chosen = [(i, "success") for i in successes[:n]] + [(i, "failure") for i in failures[:n]]
    return sorted(chosen)


def write_grasp_pngs(directory, template, prepared, code: str, records: list[dict],
                     size: tuple[int, int] = STILL_SIZE) -> list[pathlib.Path]:
    """A PNG still of each record's chosen grasp on its resting object: `<object>-pose<k>.png`.

    records: `poses.jsonl` records of one object (keys "pose", "object_pose",
    "grasp"). The directory is made if missing. For the pipeline's report too.
    Raises `render.RenderError` when no OpenGL backend works.
    """
    import numpy as np

    from diffrl_jax.evaluation import render

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in records:
        image = render.grasp_image(template, prepared, np.asarray(r["object_pose"]), np.asarray(r["grasp"]),
                                   width=size[0], height=size[1])
        path = directory / f"{file_stem(code, r['pose'])}.png"
        render.write_png(image, path)
        paths.append(path)
    return paths


def write_lift_video(path, template, prepared, record: dict, fps: float = VIDEO_FPS,
                     size: tuple[int, int] = VIDEO_SIZE) -> pathlib.Path:
    """An mp4 of one pose record's lift, re-run on MuJoCo C (`render.lift_frames`)."""
    import numpy as np

    from diffrl_jax.evaluation import render

    frames = render.lift_frames(template, prepared, np.asarray(record["object_pose"]),
                                np.asarray(record["grasp"]), fps=fps, width=size[0], height=size[1])
    render.write_mp4(frames, path, fps)
    return pathlib.Path(path)


def _write_media(out: pathlib.Path, template, evaluated, n: int, written: dict, fps: float = VIDEO_FPS,
                 video_size: tuple[int, int] = VIDEO_SIZE, still_size: tuple[int, int] = STILL_SIZE) -> None:
    """Videos and stills of the first n successes and failures of each object; appends to `written`.

    evaluated: [(object code, prepared object, its pose records)].
    """
    from tqdm import tqdm

    jobs = [(code, prepared, records[i], label) for code, prepared, records in evaluated
            for i, label in select_poses(records, n)]
    (out / "videos").mkdir(exist_ok=True)
    for code, prepared, record, label in tqdm(jobs, desc="rendering", unit="video", file=sys.stderr,
                                              disable=None):
        stem = file_stem(code, record["pose"])
        write_lift_video(out / "videos" / f"{stem}-{label}.mp4", template, prepared, record, fps, video_size)
        written["videos"].append(f"videos/{stem}-{label}.mp4")
        for path in write_grasp_pngs(out / "grasps", template, prepared, code, [record], still_size):
            written["grasp_images"].append(f"grasps/{path.name}")


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
    protocol = lift_protocol(args.set)
    config = pose_sampling.PoseSamplingConfig(
        poses=args.poses, candidates=args.candidates, select=args.select, check_top=args.check_top,
        sampler=args.sampler,
        steps=args.steps, seed=args.seed).validate()
    trained = pipeline.load_trained(args.checkpoint)
    names = args.objects or list(trained.dataset.get("object_codes", []))
    if not names:
        raise ConfigError("the checkpoint names no training objects: pass --objects")
    specs = [pipeline.resolve_object(trained, name, args.scale) for name in names]  # every name checked first
    template = lift.make_template(protocol, bank.ObjectBudget(pieces=args.budget_pieces))
    media_skipped, gl_backend = ("skipped: --videos 0" if args.videos == 0 else None), None
    if media_skipped is None:  # asked before the evaluation, so the warning comes early
        from diffrl_jax.evaluation import render

        try:
            gl_backend = render.gl_backend()
            render.video_codec()
        except render.RenderError as e:
            media_skipped = f"skipped: {e}"
            print(f"warning: no videos or grasp images: {e}", file=sys.stderr)

    objects, records, evaluated = {}, [], []
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
        evaluated.append((spec.code, prepared, result["records"]))
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
    written = {"videos": [], "grasp_images": []}
    if media_skipped is None:
        from diffrl_jax.evaluation import render

        t = time.perf_counter()
        try:
            _write_media(out, template, evaluated, args.videos, written, VIDEO_FPS, VIDEO_SIZE, STILL_SIZE)
        except render.RenderError as e:  # the evaluation is the product: keep it
            media_skipped = f"skipped: {e}"
            print(f"warning: videos and grasp images stopped: {e}", file=sys.stderr)
            if written["videos"]:
                summary["videos_written"] = written["videos"]  # each whole, written before the error
        summary["render"] = {"backend": gl_backend, "fps": VIDEO_FPS, "video_size": list(VIDEO_SIZE),
                             "still_size": list(STILL_SIZE), "seconds": time.perf_counter() - t}
    summary["videos"] = media_skipped if media_skipped is not None else written["videos"]
    summary["grasp_images"] = written["grasp_images"]
    write_json_atomic(out / "summary.json", summary)  # last: its presence marks a finished evaluation
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for code, o in objects.items():
            print(f"{code[:48]:<48} {o['successes']:>4}/{o['n']:<4} {o['rate']:6.1%} "
                  f"[{o['ci_low']:.1%}, {o['ci_high']:.1%}]  no clear candidate: {o['no_clear_candidate']}")
        print(f"mean {summary['mean']['rate']:.1%} over {len(objects)} object(s); {summary['seconds']:.0f} s; "
              f"records in {out}")
        if isinstance(summary["videos"], list):
            print(f"{len(summary['videos'])} video(s) in {out / 'videos'}, "
                  f"{len(summary['grasp_images'])} grasp image(s) in {out / 'grasps'}")
        else:
            print(f"videos {summary['videos']}")
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
    p.add_argument("--select", choices=("check", "contact", "first"), default="check",
                   help="how to choose among table-clear candidates: check (the default: hold-test the "
                        "--check-top of best contact score in the object frame, take the one holding in "
                        "most directions; its physics steps are counted), contact (kinematic contact "
                        "score only: no physics) or first")
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
