"""The diffusion workflows: train a grasp model into a checkpoint directory, sample grasps from one.

`run_train(config, out)` writes the checkpoints (`<step>/`), `metrics.jsonl`
(one line per block of steps) and `loss.png`; `resume` continues from the
newest intact checkpoint. `run_sample(config, out)` writes a DexGraspNet-format
directory (`grasps/<code>.npy`, the object's mesh). Both return their
summary; progress comes back through callbacks. Not jittable: the host-side
loop around `diffusion.train.run_training` and the compiled sampler.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.files import append_log, jsonl_line, read_jsonl, save_figure_atomic, write_jsonl_atomic
from diffrl_jax.workflows.progress import no_bars, warn_stderr

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT = "loss.png"
# Fields that shape the network, its inputs or the noise: fixed once training started.
FROZEN_ON_RESUME = ("num_diffusion_steps", "schedule", "prediction", "width", "depth", "time_dim",
                    "cond_scale", "encoding_points", "encoding_radius", "encoding_samples")


@dataclasses.dataclass(frozen=True)
class TrainRunConfig:
    """Every setting of a training run, as a user gives it; None: the default's or the checkpoint's."""

    dataset: str  # a DexGraspNet-format directory
    steps: int | None = None  # total optimisation steps
    batch: int | None = None
    seed: int | None = None
    only_success: bool | None = None  # None: when the dataset has a "success" label
    min_robustness: float | None = None  # only grasps whose "robustness" label is at least this
    # Typed DiffusionConfig field values (e.g. `overrides.parse_overrides` of `--set` text).
    diffusion: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    skip_bad: bool = False  # skip malformed grasp files
    resume: bool = False  # continue from the latest checkpoint in `out`


def training_config(config: TrainRunConfig, saved: dict | None):
    """The DiffusionConfig of a run: defaults or the checkpoint's, plus the config's overrides."""
    from diffrl_jax.diffusion.config import DiffusionConfig

    overrides = dict(config.diffusion)
    for name, value in (("num_steps", config.steps), ("batch_size", config.batch), ("seed", config.seed)):
        if value is not None:
            overrides[name] = value
    if saved is None:
        return dataclasses.replace(DiffusionConfig(), **overrides).validate()
    base = DiffusionConfig.from_dict(saved["diffusion"])
    resumed = dataclasses.replace(base, **overrides).validate()
    # The same values again are fine: `diffrl pipeline` resumes with the options it started with.
    frozen = sorted(name for name in FROZEN_ON_RESUME + ("seed",) if getattr(resumed, name) != getattr(base, name))
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


def run_train(config: TrainRunConfig, out, *,
              progress_fn: Callable[[int, dict], None] = lambda *args: None,
              bars: Callable[..., Any] = no_bars,
              log: Callable[[str], None] = warn_stderr) -> dict | None:
    """Trains (or resumes) the model into `out`; its summary, or None on a process other than 0.

    `progress_fn(step, metrics)` after each block of steps (metrics.jsonl's
    row); `bars(desc, total, unit, initial=0)`: the encoding and training
    bars (`workflows.progress`); `log(message)`: skipped files, resuming,
    what is trained (stderr by default).
    """
    import jax

    from diffrl_jax import checkpoint, parallel
    from diffrl_jax.data.dexgraspnet import load_dexgraspnet
    from diffrl_jax.diffusion import pipeline
    from diffrl_jax.diffusion.model import make_denoiser, model_kwargs
    from diffrl_jax.diffusion.train import (POSE_LABELS, Normaliser, TrainData, fit_normaliser,
                                            grasp_training_data, init_train_state, pose_conditions,
                                            replicate_for_training, run_training, training_mask)

    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    # Resuming: the newest step that reads back whole (a damaged newer one is moved aside, with a warning).
    latest = checkpoint.resume_step(out, jax.process_index() == 0, warn=log) if config.resume \
        else checkpoint.latest_step(out)
    if latest is not None and not config.resume:
        raise DataError(f"{out} already holds checkpoints (latest step {latest}); pass --resume to "
                        "continue training, or choose another --out")
    saved = None
    if config.resume and latest is not None:
        saved = checkpoint.load_config(out, step=latest)
        pipeline.check_config(saved, out)
    diffusion_config = training_config(config, saved)

    dataset = load_dexgraspnet(config.dataset, skip_bad=config.skip_bad)
    for code, reason in dataset.skipped:
        log(f"warning: skipped {code}: {reason}")
    only_success = config.only_success
    with bars("encoding objects", len(dataset.object_codes), "object") as bar:
        samples, conds, cond_index, groups = grasp_training_data(
                dataset, diffusion_config, only_success, progress=bar.update, min_robustness=config.min_robustness)
    only_success = "success" in dataset.extras if only_success is None else only_success
    pose = None
    if diffusion_config.pose_condition:  # the up-direction of each training grasp's resting pose
        pose = pose_conditions(dataset, training_mask(dataset, only_success, config.min_robustness))
    kwargs = model_kwargs(diffusion_config, samples.shape[1], conds.shape[1],
                          0 if pose is None else len(POSE_LABELS))
    model = make_denoiser(**kwargs)
    if saved is not None:
        if saved["model_kwargs"] != kwargs:
            raise DataError(f"{out} was trained with model {saved['model_kwargs']}, this data needs {kwargs}")
        normaliser = Normaliser.from_dict(saved["normaliser"])
        state, _ = checkpoint.restore(out, pipeline.abstract_train_state(diffusion_config, model), step=latest)
        log(f"resuming {out} at step {int(state.step)}")
    else:
        normaliser = fit_normaliser(samples)
        state = init_train_state(diffusion_config, model)
    run_config = pipeline.checkpoint_config(
        diffusion_config, kwargs, normaliser, pipeline.dataset_info(dataset, groups, cond_index, only_success,
                                                                  config.min_robustness))
    data = TrainData.create(samples, conds, cond_index, normaliser, pose)
    # Data parallel over every device (of every process): one program, the
    # minibatch split, the gradient all-reduced.
    mesh = parallel.data_mesh() if jax.device_count() > 1 else None
    if mesh is not None:
        parallel.check_divisible(diffusion_config.batch_size, mesh, "batch size")
        state, data = replicate_for_training(state, data, mesh)
    primary = jax.process_index() == 0  # process 0 alone writes logs and plots
    log(f"training on {len(samples)} grasps of {len(run_config['dataset']['object_codes'])} object(s), "
        f"{len(groups)} (object, scale) conditions; model {kwargs}")

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

    with bars("training", diffusion_config.num_steps, "step", initial=start_step) as bar, \
            append_log(metrics_path if primary else os.devnull) as metrics_log:
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
            metrics_log.write(jsonl_line(row))
            metrics_log.flush()
            rows.append(row)
            bar.update(steps)
            progress_fn(step, row)
            if step // diffusion_config.checkpoint_every > (step - steps) // diffusion_config.checkpoint_every:
                save(state)

        state = run_training(state, data, diffusion_config, model, on_block=on_block, mesh=mesh)
    jax.block_until_ready(state)
    save(state)
    if not primary:
        return None
    if rows:
        plot_loss(rows, out / LOSS_PLOT)
    steady = timing["steady_steps"] / timing["steady_s"] if timing["steady_s"] else None
    return {
        "out": str(out), "step": int(state.step), "loss": rows[-1]["loss"] if rows else None,
        "steps_per_s": steady, "first_block_s": timing["first_block_s"],
        "batch_size": diffusion_config.batch_size, "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(), "processes": jax.process_count(),
    }


def train_message(summary: dict) -> str:
    """The line `diffrl train` prints without --json."""
    steady = summary["steps_per_s"]
    rate = f"{steady:.1f} steps/s" if steady else "n/a"
    loss = f"{summary['loss']:.4f}" if summary["loss"] is not None else "n/a"
    return (f"trained to step {summary['step']} (loss {loss}, {rate} at batch {summary['batch_size']}); "
            f"checkpoints, {METRICS_FILE} and {LOSS_PLOT} in {summary['out']}")


@dataclasses.dataclass(frozen=True)
class SampleRunConfig:
    """What `run_sample` draws: `n` grasps of one object from the model in `checkpoint`."""

    checkpoint: str  # a directory written by `run_train`
    object: str  # an object code of the training data, builtin:NAME, or a CoACD-style OBJ file
    n: int
    scale: float | None = None  # default: the object's most common training scale
    steps: int | None = None  # sampler steps (default: the sampler's)
    sampler: str = "ddim"  # ddim or ddpm
    guidance: float = 1.0  # classifier-free guidance scale (1: none)
    seed: int = 0
    batch: int = 4096  # grasps per compiled sampling call
    step: int | None = None  # checkpoint step (default: the latest)


def run_sample(config: SampleRunConfig, out, *, bars: Callable[..., Any] = no_bars) -> dict:
    """Samples the grasps into the DexGraspNet-format directory `out` (other objects there are kept); the summary."""
    import jax
    import numpy as np

    from diffrl_jax import parallel
    from diffrl_jax.data.dexgraspnet import GraspDataset, load_dexgraspnet, write_dexgraspnet, write_mesh
    from diffrl_jax.diffusion import pipeline, sampler

    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    trained = pipeline.load_trained(config.checkpoint, step=config.step)
    mesh = parallel.local_mesh() if jax.local_device_count() > 1 else None
    spec = pipeline.resolve_object(trained, config.object, config.scale)
    sampler.timesteps_for(config.sampler, trained.config.num_diffusion_steps, config.steps)  # checks steps
    start = time.perf_counter()
    with bars(f"sampling ({config.sampler})", config.n, "grasp") as bar:
        grasps = pipeline.sample_grasps(trained, spec.cond, config.n, method=config.sampler, steps=config.steps,
                                        seed=config.seed, batch=config.batch, guidance_scale=config.guidance,
                                        progress=bar.update, mesh=mesh)
    elapsed = time.perf_counter() - start
    if spec.mesh_text is not None:
        write_mesh(out, spec.code, spec.mesh_text)
    dataset = GraspDataset(grasps=grasps, scales=np.full(len(grasps), spec.scale),
                           object_index=np.zeros(len(grasps), np.int32), object_codes=(spec.code,))
    write_dexgraspnet(out, dataset, mesh_source_root=spec.mesh_source_root or out)
    load_dexgraspnet(out, objects=[spec.code])  # the written directory reads back
    return {
        "object": spec.code, "scale": spec.scale, "seen_in_training": spec.seen, "n": len(grasps),
        "sampler": config.sampler, "steps": len(sampler.timesteps_for(
            config.sampler, trained.config.num_diffusion_steps, config.steps)),
        "guidance": config.guidance, "checkpoint_step": trained.step, "out": str(out),
        "seconds": elapsed, "grasps_per_s": len(grasps) / elapsed,
    }


def sample_message(summary: dict) -> str:
    """The line `diffrl sample` prints without --json."""
    return (f"wrote {summary['n']} grasps of {summary['object']} (scale {summary['scale']:g}) to {summary['out']} "
            f"({summary['sampler']}, {summary['steps']} steps, {summary['grasps_per_s']:.0f} grasps/s "
            "with compilation)")
