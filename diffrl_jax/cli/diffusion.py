"""`diffrl train` and `diffrl sample`: the diffusion model's command-line shell.

Thin over `diffrl_jax.diffusion`: argument parsing, progress bars, files.
Results go to stdout, progress to stderr; user errors raise DiffrlError.

    diffrl train DATASET --out CKPT_DIR [--steps N] [--batch B] [--resume] ...
    diffrl sample CKPT_DIR --object CODE|builtin:NAME|MESH.obj --n N --out DIR ...

A training directory holds the checkpoints (`<step>/`), `metrics.jsonl` (one
line per block of steps) and `loss.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

from diffrl_jax.cli.common import (add_distributed_options, parse_assignments, positive_int, resume_step,
                                   unit_interval)
from diffrl_jax.files import append_log, jsonl_line, read_jsonl, save_figure_atomic, write_jsonl_atomic
from diffrl_jax.errors import ConfigError, DataError

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
# Fields that shape the network, its inputs or the noise: fixed once training started.
_FROZEN_ON_RESUME = ("num_diffusion_steps", "schedule", "prediction", "width", "depth", "time_dim",
                     "cond_scale", "encoding_points", "encoding_radius", "encoding_samples")


def _training_config(args, saved: dict | None):
    """The DiffusionConfig of this run: defaults or the checkpoint's, plus the options."""
    from diffrl_jax.diffusion.config import DiffusionConfig

    overrides = parse_assignments(args.set, "--set")
    for name, value in (("num_steps", args.steps), ("batch_size", args.batch), ("seed", args.seed)):
        if value is not None:
            overrides[name] = str(value)
    if saved is None:
        return DiffusionConfig().with_overrides(overrides)
    config = DiffusionConfig.from_dict(saved["diffusion"])
    resumed = config.with_overrides(overrides)
    # The same values again are fine: `diffrl pipeline` resumes with the options it started with.
    frozen = sorted(name for name in _FROZEN_ON_RESUME + ("seed",) if getattr(resumed, name) != getattr(config, name))
    if frozen:
        raise ConfigError(f"cannot change {', '.join(frozen)} when resuming; train into a new --out")
    return resumed


def plot_loss(rows: list[dict], path: pathlib.Path) -> None:
    """Loss (log scale) and learning rate against step, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], label="loss (block mean)")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("diffusion loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [r["learning_rate"] for r in rows], color="tab:orange", alpha=0.6,
                 label="learning rate")
    lr_axis.set_ylabel("learning rate")
    fig.legend(loc="upper right")
    fig.tight_layout()
    save_figure_atomic(fig, path)


def cmd_train(args: argparse.Namespace) -> int:
    import jax
    from tqdm import tqdm

    from diffrl_jax import checkpoint
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.diffusion import pipeline
    from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
    from diffrl_jax import parallel
    from diffrl_jax.diffusion.train import (Normaliser, TrainData, fit_normaliser, grasp_training_data,
                                            init_train_state, replicate_for_training, run_training)

    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    # Resuming: the newest step that reads back whole (a damaged newer one is moved aside, with a warning).
    latest = resume_step(out, jax.process_index() == 0) if args.resume else checkpoint.latest_step(out)
    if latest is not None and not args.resume:
        raise DataError(f"{out} already holds checkpoints (latest step {latest}); pass --resume to "
                        "continue training, or choose another --out")
    saved = None
    if args.resume and latest is not None:
        saved = checkpoint.load_config(out, step=latest)
        pipeline.check_config(saved, out)
    config = _training_config(args, saved)

    dataset = load_dexgraspnet(args.dataset, skip_bad=args.skip_bad)
    for code, reason in dataset.skipped:
        print(f"warning: skipped {code}: {reason}", file=sys.stderr)
    only_success = True if args.only_success else (False if args.all_grasps else None)
    with tqdm(total=len(dataset.object_codes), desc="encoding objects", unit="object", file=sys.stderr,
              disable=None) as bar:
        samples, conds, cond_index, groups = grasp_training_data(
                dataset, config, only_success, progress=bar.update, min_robustness=args.min_robustness)
    only_success = "success" in dataset.extras if only_success is None else only_success
    kwargs = model_kwargs(config, samples.shape[1], conds.shape[1])
    model = make_denoiser(**kwargs)
    if saved is not None:
        if saved["model_kwargs"] != kwargs:
            raise DataError(f"{out} was trained with model {saved['model_kwargs']}, this data needs {kwargs}")
        normaliser = Normaliser.from_dict(saved["normaliser"])
        state, _ = checkpoint.restore(out, pipeline.abstract_train_state(config, model), step=latest)
        print(f"resuming {out} at step {int(state.step)}", file=sys.stderr)
    else:
        normaliser = fit_normaliser(samples)
        state = init_train_state(config, model)
    run_config = pipeline.checkpoint_config(
        config, kwargs, normaliser, pipeline.dataset_info(dataset, groups, cond_index, only_success,
                                                        args.min_robustness))
    data = TrainData.create(samples, conds, cond_index, normaliser)
    # Data parallel over every device (of every process): one program, the
    # minibatch split, the gradient all-reduced.
    mesh = parallel.data_mesh() if jax.device_count() > 1 else None
    if mesh is not None:
        parallel.check_divisible(config.batch_size, mesh, "batch size")
        state, data = replicate_for_training(state, data, mesh)
    primary = jax.process_index() == 0  # process 0 alone writes logs and plots
    print(f"training on {len(samples)} grasps of {len(run_config['dataset']['object_codes'])} object(s), "
          f"{len(groups)} (object, scale) conditions; model {kwargs}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / METRICS_FILE
    rows = read_jsonl(metrics_path, "step", int(state.step))  # drop lines logged past the checkpoint
    if primary:
        write_jsonl_atomic(metrics_path, rows)
    start_step = int(state.step)
    timing = {"last": time.perf_counter(), "step": start_step, "first_block_s": None, "steady_s": 0.0,
              "steady_steps": 0}

    def save(state) -> None:
        step = int(state.step)
        if checkpoint.latest_step(out) != step:
            checkpoint.save(out, step, state, run_config)

    with tqdm(total=config.num_steps, initial=start_step, desc="training", unit="step",
              file=sys.stderr, disable=None) as bar, \
            append_log(metrics_path if primary else os.devnull) as log:
        def on_block(state, metrics):
            now = time.perf_counter()
            elapsed, timing["last"] = now - timing["last"], now
            step = int(state.step)
            steps, timing["step"] = step - timing["step"], step
            if timing["first_block_s"] is None:
                timing["first_block_s"] = elapsed  # includes compilation
            else:
                timing["steady_s"] += elapsed
                timing["steady_steps"] += steps
            row = {"step": step, **metrics, "steps_per_s": steps / elapsed}
            log.write(jsonl_line(row))
            log.flush()
            rows.append(row)
            bar.update(steps)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if step // config.checkpoint_every > (step - steps) // config.checkpoint_every:
                save(state)

        state = run_training(state, data, config, model, on_block=on_block, mesh=mesh)
    jax.block_until_ready(state)
    save(state)
    if not primary:
        return 0
    if rows:
        plot_loss(rows, out / LOSS_PLOT)
    steady = timing["steady_steps"] / timing["steady_s"] if timing["steady_s"] else None
    summary = {
        "out": str(out), "step": int(state.step), "loss": rows[-1]["loss"] if rows else None,
        "steps_per_s": steady, "first_block_s": timing["first_block_s"],
        "batch_size": config.batch_size, "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "processes": jax.process_count(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        rate = f"{steady:.1f} steps/s" if steady else "n/a"
        loss = f"{summary['loss']:.4f}" if rows else "n/a"
        print(f"trained to step {summary['step']} (loss {loss}, {rate} at batch {config.batch_size}); "
              f"checkpoints, {METRICS_FILE} and {LOSS_PLOT} in {out}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from diffrl_jax.data.dexgraspnet import write_mesh
    from diffrl_jax.data.dexgraspnet import GraspDataset, load_dexgraspnet, write_dexgraspnet
    from diffrl_jax.diffusion import pipeline, sampler

    out = pathlib.Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    import jax

    from diffrl_jax import parallel

    trained = pipeline.load_trained(args.checkpoint, step=args.step)
    mesh = parallel.local_mesh() if jax.local_device_count() > 1 else None
    spec = pipeline.resolve_object(trained, args.object, args.scale)
    sampler.timesteps_for(args.sampler, trained.config.num_diffusion_steps, args.steps)  # checks --steps
    start = time.perf_counter()
    with tqdm(total=args.n, desc=f"sampling ({args.sampler})", unit="grasp", file=sys.stderr,
              disable=None) as bar:
        grasps = pipeline.sample_grasps(trained, spec.cond, args.n, method=args.sampler, steps=args.steps,
                                        seed=args.seed, batch=args.batch, guidance_scale=args.guidance,
                                        progress=bar.update, mesh=mesh)
    elapsed = time.perf_counter() - start
    if spec.mesh_text is not None:
        write_mesh(out, spec.code, spec.mesh_text)
    dataset = GraspDataset(grasps=grasps, scales=np.full(len(grasps), spec.scale),
                           object_index=np.zeros(len(grasps), np.int32), object_codes=(spec.code,))
    write_dexgraspnet(out, dataset, mesh_source_root=spec.mesh_source_root or out)
    load_dexgraspnet(out, objects=[spec.code])  # the written directory reads back
    summary = {
        "object": spec.code, "scale": spec.scale, "seen_in_training": spec.seen, "n": len(grasps),
        "sampler": args.sampler, "steps": len(sampler.timesteps_for(
            args.sampler, trained.config.num_diffusion_steps, args.steps)),
        "guidance": args.guidance, "checkpoint_step": trained.step, "out": str(out),
        "seconds": elapsed, "grasps_per_s": len(grasps) / elapsed,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {len(grasps)} grasps of {spec.code} (scale {spec.scale:g}) to {out} "
              f"({args.sampler}, {summary['steps']} steps, {summary['grasps_per_s']:.0f} grasps/s "
              "with compilation)")
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
