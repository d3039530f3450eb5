"""The evaluation workflow: pose-sampling success of a trained diffusion model, per object.

`run_evaluate(config, out)` writes to `out` (never half-written; an existing
summary is refused) and returns the summary:
    summary.json   per object: rate, Wilson 95% interval, counts, timings;
                   the mean over objects; protocol, selection, device
    poses.jsonl    one record per (object, pose): pose, chosen grasp, score,
                   clearance, lift height, slip, success
    videos/        <object>-pose<k>-success.mp4 / -failure.mp4: the first `videos`
                   successes and failures of each object, re-run on MuJoCo C and
                   rendered offscreen (`evaluation/render/`)
    grasps/        <object>-pose<k>.png: a still of each of those poses' chosen grasp

Rendering needs a headless OpenGL backend (EGL or OSMesa). Without one the
evaluation still finishes: a warning, and summary.json says
`"videos": "skipped: <reason>"`. summary.json is written last. Not jittable:
the host-side loop over objects around `pose_sampling.evaluate_object`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
import tempfile
import time
from collections.abc import Callable
from typing import Any

from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.files import write_json_atomic, write_jsonl_atomic, write_text_atomic
from diffrl_jax.workflows.progress import no_bars, warn_stderr


@dataclasses.dataclass(frozen=True)
class EvaluateRunConfig:
    """Every setting of an evaluation, as a user gives it."""

    checkpoint: str  # a directory written by `workflows.diffusion.run_train`
    protocol: Any = None  # the `lift.LiftProtocol` (None: `lift.DEFAULT`)
    objects: tuple[str, ...] | None = None  # default: the training objects
    scale: float | None = None  # for every object (default: each object's most common training scale)
    poses: int = 100
    candidates: int = 256
    select: str = "check"  # the records' and videos' mode (`evaluation.selections.SELECTIONS`)
    compare: tuple[str, ...] = ()  # further modes run on the same poses and samples
    check_top: int = 16
    sampler: str = "ddim"
    steps: int | None = None
    backend: str = "mjx"
    threads: int | None = None
    budget_pieces: int = 32
    seed: int = 0
    videos: int = 2  # per object, mp4s of the first N successes and N failures (0: none)
    # Sample each pose's candidates for its up-direction: None when the model
    # has a pose condition; True with a model without one is an error.
    pose_condition: bool | None = None
    scorer: str | None = None  # a `diffrl train-scorer` directory: what --select learned ranks by


def object_asset(spec):
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
                 video_size: tuple[int, int] = VIDEO_SIZE, still_size: tuple[int, int] = STILL_SIZE,
                 bars: Callable[..., Any] = no_bars) -> None:
    """Videos and stills of the first n successes and failures of each object; appends to `written`.

    evaluated: [(object code, prepared object, its pose records)].
    """
    jobs = [(code, prepared, records[i], label) for code, prepared, records in evaluated
            for i, label in select_poses(records, n)]
    (out / "videos").mkdir(exist_ok=True)
    with bars("rendering", len(jobs), "video") as bar:
        for code, prepared, record, label in jobs:
            _write_job(out, template, code, prepared, record, label, written, fps, video_size, still_size)
            bar.update(1)


def _write_job(out, template, code, prepared, record, label, written, fps, video_size, still_size) -> None:
    stem = file_stem(code, record["pose"])
    write_lift_video(out / "videos" / f"{stem}-{label}.mp4", template, prepared, record, fps, video_size)
    written["videos"].append(f"videos/{stem}-{label}.mp4")
    for path in write_grasp_pngs(out / "grasps", template, prepared, code, [record], still_size):
        written["grasp_images"].append(f"grasps/{path.name}")


def run_evaluate(config: EvaluateRunConfig, out, *, bars: Callable[..., Any] = no_bars,
                 warn: Callable[[str], None] = warn_stderr) -> dict:
    """Evaluates every object into `out` (see the module docstring); the summary.

    `bars(desc, total, unit, initial=0)`: the evaluating and rendering bars
    (`workflows.progress`); `warn(message)`: videos skipped or stopped.
    """
    import jax
    import numpy as np

    from diffrl_jax import configs
    from diffrl_jax.diffusion import pipeline
    from diffrl_jax.evaluation import pose_sampling
    from diffrl_jax.evaluation.stats import rate
    from diffrl_jax.sim import bank, lift
    from diffrl_jax.sim.validate import device_name

    out = pathlib.Path(out)
    if (out / "summary.json").exists():
        raise DataError(f"{out} already holds an evaluation (summary.json); choose another --out")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    protocol = lift.DEFAULT if config.protocol is None else config.protocol
    sampling = pose_sampling.PoseSamplingConfig(
        poses=config.poses, candidates=config.candidates, select=config.select, check_top=config.check_top,
        sampler=config.sampler, steps=config.steps, seed=config.seed, compare=tuple(config.compare)).validate()
    if "learned" in sampling.modes and config.scorer is None:  # before anything is loaded
        raise ConfigError("--select learned needs --scorer DIR (a scorer made by `diffrl train-scorer`)")
    trained = pipeline.load_trained(config.checkpoint)
    has_pose = pipeline.has_pose_condition(trained)
    if config.pose_condition and not has_pose:
        raise ConfigError(f"the model in {config.checkpoint} was trained without a pose condition: evaluate "
                          "without --pose on, or train on a table-top dataset with --set pose_condition=true")
    use_pose = has_pose if config.pose_condition is None else bool(config.pose_condition)
    sampling = dataclasses.replace(sampling, pose_condition=use_pose)
    scorer = None
    if "learned" in sampling.modes:
        from diffrl_jax.evaluation.scorer import load_scorer

        scorer, scorer_config = load_scorer(config.scorer)
        if scorer_config.encoding_points != trained.config.encoding_points:
            raise ConfigError(f"the scorer in {config.scorer} encodes objects with {scorer_config.encoding_points} "
                              f"points, the model with {trained.config.encoding_points}")
    names = list(config.objects or ()) or list(trained.dataset.get("object_codes", []))
    if not names:
        raise ConfigError("the checkpoint names no training objects: pass --objects")
    specs = [pipeline.resolve_object(trained, name, config.scale) for name in names]  # every name checked first
    template = lift.make_template(protocol, bank.ObjectBudget(pieces=config.budget_pieces))
    media_skipped, gl_backend = ("skipped: --videos 0" if config.videos == 0 else None), None
    if media_skipped is None:  # asked before the evaluation, so the warning comes early
        from diffrl_jax.evaluation import render

        try:
            gl_backend = render.gl_backend()
            render.video_codec()
        except render.RenderError as e:
            media_skipped = f"skipped: {e}"
            warn(f"warning: no videos or grasp images: {e}")

    objects, records, evaluated = {}, [], []
    start = time.perf_counter()
    with bars(f"evaluating ({config.backend})", len(specs), "object") as bar:
        for spec in specs:
            prepared = lift.prepare_object(template, object_asset(spec))

            def sample_fn(n, seed, up=None, spec=spec):
                return pipeline.sample_grasps(trained, spec.cond, n, method=sampling.sampler, steps=sampling.steps,
                                              seed=seed, guidance_scale=sampling.guidance, pose=up)

            score_fn = None
            if scorer is not None:
                score_fn = functools.partial(_learned_score, scorer, spec.cond)
            result = pose_sampling.evaluate_object(template, prepared, sample_fn, sampling, config.backend,
                                                   nthread=config.threads, score_fn=score_fn)
            objects[spec.code] = {"scale": spec.scale, "seen_in_training": spec.seen, **result["summary"]}
            records += [{"object": spec.code, **r} for r in result["records"]]
            evaluated.append((spec.code, prepared, result["records"]))
            bar.update(1)
    successes = sum(o["successes"] for o in objects.values())
    summary = {
        "objects": objects,
        "mean": {"rate": float(np.mean([o["rate"] for o in objects.values()])),
                 "pooled": rate(successes, sum(o["n"] for o in objects.values())),
                 "pose_sampling": {mode: {"success": float(np.mean([o["pose_sampling"][mode]["success"]
                                                                     for o in objects.values()]))}
                                   for mode in sampling.modes}},
        "checkpoint": str(config.checkpoint), "checkpoint_step": trained.step,
        "config": dict(vars(sampling)),
        "protocol": configs.to_json(protocol),
        "backend": config.backend, "device": device_name(config.backend),
        "jax_device": jax.devices()[0].device_kind,
        "seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "poses.jsonl", records)
    written = {"videos": [], "grasp_images": []}
    if media_skipped is None:
        from diffrl_jax.evaluation import render

        t = time.perf_counter()
        try:
            _write_media(out, template, evaluated, config.videos, written, VIDEO_FPS, VIDEO_SIZE, STILL_SIZE,
                         bars=bars)
        except render.RenderError as e:  # the evaluation is the product: keep it
            media_skipped = f"skipped: {e}"
            warn(f"warning: videos and grasp images stopped: {e}")
            if written["videos"]:
                summary["videos_written"] = written["videos"]  # each whole, written before the error
        summary["render"] = {"backend": gl_backend, "fps": VIDEO_FPS, "video_size": list(VIDEO_SIZE),
                             "still_size": list(STILL_SIZE), "seconds": time.perf_counter() - t}
    summary["videos"] = media_skipped if media_skipped is not None else written["videos"]
    summary["grasp_images"] = written["grasp_images"]
    write_json_atomic(out / "summary.json", summary)  # last: its presence marks a finished evaluation
    return summary


def _learned_score(scorer, cond, grasps, up):
    """Object-frame grasps [P, K, 31], up [P, 3] -> the scorer's logits [P, K]."""
    import numpy as np

    return np.asarray(_score_program()(scorer, grasps, np.asarray(cond, np.float32), up))


@functools.lru_cache(maxsize=1)
def _score_program():
    import jax

    return jax.jit(lambda scorer, grasps, cond, up: scorer.score(grasps, cond, up[:, None, :]))


def summary_lines(summary: dict, out) -> list[str]:
    """The summary as the lines `diffrl evaluate` prints without --json."""
    out = pathlib.Path(out)
    objects = summary["objects"]
    lines = [f"{code[:48]:<48} {o['successes']:>4}/{o['n']:<4} {o['rate']:6.1%} "
             f"[{o['ci_low']:.1%}, {o['ci_high']:.1%}]  no clear candidate: {o['no_clear_candidate']}"
             for code, o in objects.items()]
    lines.append(f"mean {summary['mean']['rate']:.1%} over {len(objects)} object(s); {summary['seconds']:.0f} s; "
                 f"records in {out}")
    modes = summary["mean"].get("pose_sampling", {})
    if len(modes) > 1:  # every selection mode on the same poses and samples
        for mode, m in modes.items():
            per_object = ", ".join(f"{o['pose_sampling'][mode]['success']:.1%}" for o in objects.values())
            steps = sum(o["pose_sampling"][mode]["physics_steps_choosing"] for o in objects.values())
            lines.append(f"  --select {mode:<9} mean {m['success']:6.1%} ({per_object}); "
                         f"{steps} physics steps choosing")
    if isinstance(summary["videos"], list):
        lines.append(f"{len(summary['videos'])} video(s) in {out / 'videos'}, "
                     f"{len(summary['grasp_images'])} grasp image(s) in {out / 'grasps'}")
    else:
        lines.append(f"videos {summary['videos']}")
    return lines
