"""Host-side glue: checkpoints of trained grasp models, objects to conditions, sampling.

A checkpoint (`diffrl_jax.checkpoint`) holds the whole `TrainState` and a
JSON config with everything needed to rebuild the model and its inputs:

    {"format": CONFIG_FORMAT, "diffusion": DiffusionConfig.to_dict(),
     "model_kwargs": model.model_kwargs(...), "normaliser": {"mean", "std"},
     "dataset": {"root", "object_codes", "scales": {code: {scale: count}},
                 "only_success", "num_grasps", "min_robustness"}}

Objects are named as the CLI takes them: `builtin:NAME`, a CoACD-style OBJ
file (any mesh, encoded as an unseen object), or an object code of the
training dataset (its mesh under the dataset root stored in the config).
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from collections.abc import Callable

import jax
import numpy as np

from diffrl_jax import bounds, checkpoint, parallel
from diffrl_jax.data import dexgraspnet
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.diffusion import sampler as sampler_lib
from diffrl_jax.diffusion.config import DiffusionConfig
from diffrl_jax.diffusion.model import Denoiser, make_denoiser
from diffrl_jax.diffusion.train import Normaliser, init_train_state, make_schedule
from diffrl_jax.errors import ConfigError, DataError
from diffrl_jax.objects import assets, encoding

CONFIG_FORMAT = "diffrl_jax.diffusion/1"
DEFAULT_SAMPLE_BATCH = 4096


def checkpoint_config(config: DiffusionConfig, kwargs: dict, normaliser: Normaliser,
                      dataset_info: dict) -> dict:
    """The JSON config saved next to every step of a training run."""
    return {"format": CONFIG_FORMAT, "diffusion": config.to_dict(), "model_kwargs": kwargs,
            "normaliser": normaliser.to_dict(), "dataset": dataset_info}


def dataset_info(dataset: dexgraspnet.GraspDataset, groups, cond_index, only_success: bool,
                 min_robustness: float | None = None) -> dict:
    """What a checkpoint records of its training data.

    groups: (code, scale) of each condition; cond_index `[N]`: the condition
    of each training grasp (see `train.grasp_training_data`).
    """
    counts = np.bincount(np.asarray(cond_index), minlength=len(groups))
    scales = collections.defaultdict(dict)
    for (code, scale), count in zip(groups, counts.tolist()):
        scales[code][repr(scale)] = count
    return {
        "root": None if dataset.root is None else str(pathlib.Path(dataset.root).resolve()),
        "object_codes": sorted(scales),
        "scales": dict(scales),
        "only_success": bool(only_success),
        "num_grasps": int(len(cond_index)),
        "min_robustness": None if min_robustness is None else float(min_robustness),
    }


def check_config(saved: dict, directory) -> None:
    if not isinstance(saved, dict) or saved.get("format") != CONFIG_FORMAT:
        raise DataError(f"{directory} is not a diffusion checkpoint (config format "
                        f"{saved.get('format') if isinstance(saved, dict) else None!r}, "
                        f"expected {CONFIG_FORMAT!r})")


def abstract_train_state(config: DiffusionConfig, model: Denoiser):
    """Shapes and dtypes of a TrainState (no parameters are computed)."""
    return jax.eval_shape(lambda: init_train_state(config, model))


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedModel:
    """A model restored for sampling: EMA parameters by default."""

    config: DiffusionConfig
    model: Denoiser
    params: dict
    normaliser: Normaliser
    dataset: dict
    step: int
    directory: pathlib.Path


def load_trained(directory, step: int | None = None, use_ema: bool = True) -> TrainedModel:
    """Rebuilds the model of a checkpoint directory and restores its parameters."""
    directory = pathlib.Path(directory)
    saved = checkpoint.load_config(directory, step)
    check_config(saved, directory)
    config = DiffusionConfig.from_dict(saved["diffusion"])
    model = make_denoiser(**saved["model_kwargs"])
    state, _ = checkpoint.restore(directory, abstract_train_state(config, model), step)
    return TrainedModel(
        config=config, model=model, params=state.ema_params if use_ema else state.params,
        normaliser=Normaliser.from_dict(saved["normaliser"]), dataset=saved["dataset"],
        step=int(state.step), directory=directory,
    )


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """An object to sample for: its code, scale, encoding `[C]` and where its mesh comes from.

    Exactly one of mesh_text (an OBJ to write) and mesh_source_root (a
    DexGraspNet root holding meshdata/<code>) is set. `seen`: the object and
    scale were in the training data.
    """

    code: str
    scale: float
    cond: np.ndarray
    mesh_text: str | None = None
    mesh_source_root: pathlib.Path | None = None
    seen: bool = False


def resolve_object(trained: TrainedModel, name: str, scale: float | None = None) -> ObjectSpec:
    """`builtin:NAME`, an OBJ path, or a training-dataset code -> ObjectSpec."""
    config = trained.config
    basis = encoding.bps_basis(config.encoding_points, config.encoding_radius)
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise ConfigError(f"--scale must be a positive number, got {scale}")
    if scale is not None:
        bounds.check(scale, "scale", "--scale", ConfigError)  # before any sampling, not at the mesh

    def encode(vertices, faces, s):
        return encoding.encode_mesh(vertices, faces, s, basis=basis, num_samples=config.encoding_samples)

    if name.startswith("builtin:"):
        from diffrl_jax.data.example import obj_text, object_mesh_pieces

        builtin = name.split(":", 1)[1]
        pieces = object_mesh_pieces(assets.builtin_object(builtin))
        natural = 1.03 * max(np.linalg.norm(p, axis=1).max() for p in pieces)  # DexGraspNet's normalisation
        normalised = [p / natural for p in pieces]
        scale = natural if scale is None else scale
        vertices, faces = encoding.convex_surface(normalised)
        return ObjectSpec(f"builtin-{builtin}", float(scale), encode(vertices, faces, scale),
                          mesh_text=obj_text(normalised))
    path = pathlib.Path(name)
    if path.suffix.lower() == ".obj" or path.is_file():
        if not path.is_file():
            raise DataError(f"mesh file {path} does not exist")
        if scale is None:
            raise ConfigError(f"give --scale for the mesh {path} (DexGraspNet meshes are normalised; "
                              "scales of 0.06-0.15 are typical)")
        code = path.parent.parent.name if path.parent.name == "coacd" else path.stem
        vertices, faces = encoding.mesh_file_surface(path)
        return ObjectSpec(code, float(scale), encode(vertices, faces, scale), mesh_text=path.read_text())
    return _dataset_object(trained, name, scale, encode)


def _dataset_object(trained: TrainedModel, code: str, scale, encode) -> ObjectSpec:
    info = trained.dataset
    root = info.get("root")
    trained_scales = info.get("scales", {}).get(code, {})
    if root is None or not dexgraspnet.mesh_path(root, code).is_file():
        examples = ", ".join(info.get("object_codes", [])[:3])
        raise DataError(
            f"unknown object {code!r}: not builtin:NAME, not a mesh file, and not an object of the "
            f"training dataset {root} (e.g. {examples})")
    if scale is None:
        if not trained_scales:
            raise ConfigError(f"{code} was not in the training data: give --scale")
        scale = float(max(trained_scales, key=lambda s: trained_scales[s]))  # the most common
    vertices, faces = encoding.mesh_file_surface(dexgraspnet.mesh_path(root, code))
    seen = any(abs(float(s) - scale) < 1e-6 for s in trained_scales)
    return ObjectSpec(code, float(scale), encode(vertices, faces, scale),
                      mesh_source_root=pathlib.Path(root), seen=seen)


def grasp_sampler(trained: TrainedModel, batch: int, method: str = "ddim", steps: int | None = None,
                  guidance_scale: float = 1.0, eta: float = 0.0, mesh=None):
    """A compiled `(params, normaliser, cond, key) -> grasps [batch, 31]` for this model."""
    if guidance_scale != 1.0 and trained.config.cond_dropout == 0.0:
        raise ConfigError("classifier-free guidance needs a model trained with cond_dropout > 0")
    return sampler_lib.make_grasp_sampler(
        trained.model, make_schedule(trained.config), num_samples=batch, method=method, steps=steps,
        prediction=trained.config.prediction, guidance_scale=guidance_scale,
        x0_clip=trained.config.x0_clip, eta=eta, mesh=mesh)


def sample_grasps(trained: TrainedModel, cond, n: int, *, method: str = "ddim", steps: int | None = None,
                  seed: int = 0, batch: int = DEFAULT_SAMPLE_BATCH, guidance_scale: float = 1.0,
                  eta: float = 0.0, progress: Callable[[int], None] | None = None,
                  mesh=None, pose=None) -> np.ndarray:
    """`n` grasps `[n, 31]` float64 for one condition `[C]`, in chunks of one compiled batch size.

    `pose`: the resting pose condition of a model trained with one (the
    up-direction `[3]` for every sample, or `[n, 3]` one per sample); None
    samples without (the model's null pose). `mesh`: each chunk is split
    over its devices (the chunk size is rounded up to a multiple of the
    device count).
    """
    pose = check_pose(trained, pose, n)
    batch = parallel.padded_size(min(batch, n), parallel.num_shards(mesh))
    sample = grasp_sampler(trained, batch, method, steps, guidance_scale, eta, mesh)
    key = jax.random.key(seed)
    cond = np.asarray(cond, np.float32)
    params, normaliser = trained.params, trained.normaliser
    if mesh is not None:
        params, normaliser, cond = parallel.replicate(jax.device_get((params, normaliser, cond)), mesh)
        key = parallel.replicate(jax.random.key_data(key), mesh)
        key = jax.random.wrap_key_data(key)
    chunks, done = [], 0
    while done < n:  # host loop over chunks; the last one is padded to the compiled size
        take = min(batch, n - done)
        chunk_pose = pose
        if pose is not None and len(pose) > 1:  # one per sample: this chunk's, padded
            chunk_pose = np.concatenate([pose[done:done + take], np.repeat(pose[-1:], batch - take, 0)])
        if chunk_pose is not None and mesh is not None:
            chunk_pose = parallel.replicate(chunk_pose, mesh)
        out = sample(params, normaliser, cond, jax.random.fold_in(key, len(chunks)), chunk_pose)
        grasps = np.asarray(parallel.to_host(out), dtype=np.float64)
        grasps = grasp_lib.clip_to_joint_limits(grasps)  # again in float64: float32 limits round outward
        chunks.append(grasps[:take])
        done += take
        if progress is not None:
            progress(take)
    return np.concatenate(chunks)


def has_pose_condition(trained: TrainedModel) -> bool:
    """Whether the model was trained with a resting-pose (up-direction) condition."""
    return bool(getattr(trained.model, "pose_dim", 0))


def check_pose(trained: TrainedModel, pose, n: int) -> np.ndarray | None:
    """A pose condition for `n` samples -> float32 `[1, P]` or `[n, P]`, or None; `ConfigError` when
    the model has no pose input or the shape or values are wrong."""
    if pose is None:
        return None
    dim = int(getattr(trained.model, "pose_dim", 0))
    if not dim:
        raise ConfigError(f"the model in {trained.directory} was trained without a pose condition: "
                          "sample without one, or train with --set pose_condition=true on a table-top "
                          "dataset (`diffrl tabletop`)")
    pose = np.asarray(pose, np.float32)
    if pose.shape == (dim,):
        pose = pose[None]
    if pose.ndim != 2 or pose.shape[1] != dim or len(pose) not in (1, n):
        raise ConfigError(f"pose condition must have shape [{dim}] or [{n}, {dim}], got {list(pose.shape)}")
    if not np.all(np.isfinite(pose)):
        raise ConfigError("pose condition has non-finite values")
    norm = np.linalg.norm(pose, axis=1)
    if np.any(np.abs(norm - 1.0) > 1e-2):
        raise ConfigError(f"pose condition must be unit up-directions, got a norm of {norm[np.argmax(np.abs(norm - 1))]:.3g}")
    return pose / norm[:, None]
