"""Training a Denoiser: normaliser, train state, and a compiled block of AdamW steps.

`make_train_block(config, model)` returns one jitted `(state, data) ->
(state, metrics)` that runs `config.block_steps` optimisation steps in a
`lax.scan`, drawing minibatches (with replacement) from `data` by the state's
key, so the host only loops over blocks (`run_training`) for progress,
logging and checkpoints.

All learner state is one `TrainState` pytree (params, EMA params, optimizer
state, step, key): saved whole, a checkpoint resumes exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffrl_jax import parallel
from diffrl_jax.diffusion import schedule as schedule_lib
from diffrl_jax.diffusion.config import DiffusionConfig
from diffrl_jax.diffusion.model import Denoiser
from diffrl_jax.errors import DataError

__all__ = [
    "DiffusionConfig", "Normaliser", "TrainData", "TrainState", "fit_normaliser", "make_schedule",
    "make_optimizer", "learning_rate_schedule", "init_train_state", "diffusion_loss", "train_step",
    "make_train_block", "run_training", "grasp_training_data",
]


@flax.struct.dataclass
class Normaliser:
    """Per-dimension affine map of samples to about zero mean, unit variance; mean, std: `[D]`."""

    mean: jnp.ndarray
    std: jnp.ndarray

    def normalise(self, x):
        return (x - self.mean) / self.std

    def denormalise(self, z):
        return z * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": np.asarray(self.mean).tolist(), "std": np.asarray(self.std).tolist()}

    @classmethod
    def from_dict(cls, values) -> "Normaliser":
        return cls(jnp.asarray(values["mean"], jnp.float32), jnp.asarray(values["std"], jnp.float32))


def fit_normaliser(samples, min_std: float = 1e-3) -> Normaliser:
    """Mean and std (floored at `min_std`) of `samples [N, D]`, in float32."""
    samples = np.asarray(samples, dtype=np.float64)
    return Normaliser(jnp.asarray(samples.mean(0), jnp.float32),
                      jnp.asarray(np.maximum(samples.std(0), min_std), jnp.float32))


@flax.struct.dataclass
class TrainData:
    """x: `[N, D]` normalised samples; cond: `[M, C]` conditions; cond_index: `[N]` row of each
    sample's; pose: `[N, P]` each sample's pose condition (P = 0: none)."""

    x: jnp.ndarray
    cond: jnp.ndarray
    cond_index: jnp.ndarray
    pose: jnp.ndarray

    @classmethod
    def create(cls, samples, cond, cond_index, normaliser: Normaliser, pose=None) -> "TrainData":
        samples = jnp.asarray(samples, jnp.float32)
        pose = np.zeros((len(samples), 0)) if pose is None else np.asarray(pose)
        if pose.ndim != 2 or len(pose) != len(samples):
            raise ValueError(f"pose must have shape [{len(samples)}, P], got {pose.shape}")
        return cls(normaliser.normalise(samples), jnp.asarray(cond, jnp.float32),
                   jnp.asarray(cond_index, jnp.int32), jnp.asarray(pose, jnp.float32))


@flax.struct.dataclass
class TrainState:
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    step: jnp.ndarray  # [] int32, optimisation steps done
    key: jnp.ndarray  # typed PRNG key


def make_schedule(config: DiffusionConfig) -> schedule_lib.Schedule:
    if config.schedule == "cosine":
        return schedule_lib.cosine_schedule(config.num_diffusion_steps)
    return schedule_lib.linear_schedule(config.num_diffusion_steps)


def learning_rate_schedule(config: DiffusionConfig) -> optax.Schedule:
    """Linear warm-up from 0, then cosine decay to `end_learning_rate` at `num_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=config.num_steps, end_value=config.end_learning_rate,
    )


def make_optimizer(config: DiffusionConfig) -> optax.GradientTransformation:
    """AdamW on the warm-up cosine schedule, after global-norm clipping (if grad_clip > 0)."""
    adamw = optax.adamw(learning_rate_schedule(config), weight_decay=config.weight_decay)
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw)
    return adamw


def init_train_state(config: DiffusionConfig, model: Denoiser, seed: int | None = None) -> TrainState:
    """Fresh parameters and optimizer state; seed defaults to `config.seed`."""
    return _init_train_state(config, model, jax.random.key(config.seed if seed is None else seed))


@functools.partial(jax.jit, static_argnums=(0, 1))  # one program, not hundreds of eager ops
def _init_train_state(config: DiffusionConfig, model: Denoiser, key) -> TrainState:
    key, init_key = jax.random.split(key)
    x = jnp.zeros((1, model.data_dim), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    cond = jnp.zeros((1, model.cond_dim), jnp.float32)
    pose = jnp.zeros((1, model.pose_dim), jnp.float32) if model.pose_dim else None
    params = model.init(init_key, x, t, cond, jnp.zeros((1,), bool), pose)
    opt_state = make_optimizer(config).init(params)
    return TrainState(params=params, ema_params=params, opt_state=opt_state,
                      step=jnp.zeros((), jnp.int32), key=key)


def diffusion_loss(params, model: Denoiser, schedule: schedule_lib.Schedule, config: DiffusionConfig,
                   x0, cond, key, pose=None):
    """Mean squared error of the eps/v prediction; x0: `[B, D]` normalised, cond: `[B, C]`,
    pose `[B, P]` (a model with a pose input) or None.

    The object condition is dropped with probability `cond_dropout`; the pose
    with it, and on its own with probability `pose_dropout`.
    """
    t_key, noise_key, drop_key, pose_key = jax.random.split(key, 4)
    t = jax.random.randint(t_key, x0.shape[:1], 0, schedule.num_steps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = schedule_lib.add_noise(schedule, x0, noise, t)
    drop = jax.random.bernoulli(drop_key, config.cond_dropout, x0.shape[:1])
    drop_pose = None
    if pose is not None:
        drop_pose = drop | jax.random.bernoulli(pose_key, config.pose_dropout, x0.shape[:1])
    output = model.apply(params, x_t, t, cond, drop, pose, drop_pose)
    target = schedule_lib.training_target(schedule, x0, noise, t, config.prediction)
    return jnp.mean((output - target) ** 2)


def train_step(state: TrainState, data: TrainData, *, model: Denoiser,
               schedule: schedule_lib.Schedule, optimizer: optax.GradientTransformation,
               config: DiffusionConfig, mesh=None):
    """One AdamW step on a minibatch drawn from `data`, then the EMA update.

    With a `mesh`, the minibatch is split over its devices (data parallel;
    XLA all-reduces the gradient), everything else stays replicated.
    """
    key, batch_key, loss_key = jax.random.split(state.key, 3)
    index = jax.random.randint(batch_key, (config.batch_size,), 0, data.x.shape[0])
    index = parallel.constrain_batch(index, mesh)
    x0, cond = data.x[index], data.cond[data.cond_index[index]]
    pose = data.pose[index] if model.pose_dim else None
    loss, grads = jax.value_and_grad(diffusion_loss)(state.params, model, schedule, config, x0, cond,
                                                     loss_key, pose)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Warm the EMA up so early checkpoints are not dominated by the initialisation.
    step = state.step.astype(jnp.float32)
    decay = jnp.minimum(config.ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_state = state.replace(params=params, ema_params=ema, opt_state=opt_state,
                              step=state.step + 1, key=key)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def make_train_block(config: DiffusionConfig, model: Denoiser, steps: int | None = None, mesh=None):
    """jitted `(state, data) -> (state, metrics)` running `steps` (default block_steps) steps.

    metrics: mean loss and gradient norm over the block, and the learning
    rate of its last step (scalars). `mesh`: split each minibatch over its
    devices (`config.batch_size` must divide; state and data replicated, see
    `replicate_for_training`).
    """
    config.validate()
    parallel.check_divisible(config.batch_size, mesh, "batch size")
    steps = config.block_steps if steps is None else int(steps)
    schedule = make_schedule(config)
    optimizer = make_optimizer(config)
    lr = learning_rate_schedule(config)
    step_fn = functools.partial(train_step, model=model, schedule=schedule, optimizer=optimizer,
                                config=config, mesh=mesh)

    def block(state: TrainState, data: TrainData):
        state, metrics = jax.lax.scan(lambda s, _: step_fn(s, data), state, length=steps)
        summary = {name: jnp.mean(values) for name, values in metrics.items()}
        summary["learning_rate"] = lr(state.step - 1)
        return state, summary

    if mesh is None:
        return jax.jit(block)
    replicated = parallel.replicated_sharding(mesh)
    return jax.jit(block, out_shardings=replicated)


def replicate_for_training(state: TrainState, data: TrainData, mesh):
    """State and data placed whole on every device of `mesh` (host copies first)."""
    state, data = jax.device_get((state, data))
    key = state.key
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    state = state.replace(key=jax.random.key_data(key) if typed else key)
    state, data = parallel.replicate((state, data), mesh)
    return state.replace(key=jax.random.wrap_key_data(state.key) if typed else state.key), data


def run_training(state: TrainState, data: TrainData, config: DiffusionConfig, model: Denoiser,
                 until_step: int | None = None,
                 on_block: Callable[[TrainState, dict], None] | None = None, mesh=None) -> TrainState:
    """Runs blocks until `until_step` (default config.num_steps) steps are done.

    The host loop (not jittable: it calls `on_block(state, metrics)` with
    host-side float metrics for progress, logs and checkpoints). Full blocks
    share one compiled program; a shorter last block compiles a second.
    """
    until_step = config.num_steps if until_step is None else int(until_step)
    blocks = {}
    while (done := int(state.step)) < until_step:
        steps = min(config.block_steps, until_step - done)
        if steps not in blocks:
            blocks[steps] = make_train_block(config, model, steps, mesh)
        state, metrics = blocks[steps](state, data)
        if on_block is not None:
            on_block(state, {name: float(value) for name, value in metrics.items()})
    return state


def training_mask(dataset, only_success: bool | None = None,
                  min_robustness: float | None = None) -> np.ndarray:
    """[N] bool: the grasps of `dataset` a model trains on.

    `only_success`: keep grasps whose "success" label is true; None means "if
    the dataset has that label". `min_robustness`: keep only grasps whose
    "robustness" label (`diffrl robustness`, or `diffrl refine`) is at least
    this. Raises `DataError` on a missing label or when nothing is left.
    """
    has_label = "success" in dataset.extras
    if only_success is None:
        only_success = has_label
    keep = np.ones(len(dataset), bool)
    if only_success:
        if not has_label:
            raise DataError(f"{dataset.root}: no 'success' label in this dataset to filter by")
        keep = np.asarray(dataset.extras["success"]).astype(bool)
    if not keep.any():
        raise DataError(f"{dataset.root}: no grasps left to train on (none labelled success)")
    if min_robustness is not None:
        if not (np.isfinite(min_robustness) and 0.0 <= min_robustness <= 1.0):
            raise DataError(f"min_robustness must lie in [0, 1], got {min_robustness!r}")
        if "robustness" not in dataset.extras:
            raise DataError(f"{dataset.root}: no 'robustness' label to filter by (label the dataset "
                            "with `diffrl robustness`, or refine with robustness samples)")
        robust = np.asarray(dataset.extras["robustness"], np.float64) >= min_robustness - 1e-9
        if not (keep & robust).any():
            raise DataError(f"{dataset.root}: no grasps left to train on (none of the {int(keep.sum())} "
                            f"candidates has robustness >= {min_robustness})")
        keep &= robust
    return keep


def grasp_training_data(dataset, config: DiffusionConfig, only_success: bool | None = None,
                        progress: Callable[[int], None] | None = None,
                        min_robustness: float | None = None):
    """A GraspDataset -> (samples `[N, 31]`, conds `[M, C]`, cond_index `[N]`, groups).

    One condition per (object, scale) pair, `groups` lists them as
    (code, scale); the grasps are those of `training_mask(dataset,
    only_success, min_robustness)`.
    """
    from diffrl_jax.objects import encoding

    keep = training_mask(dataset, only_success, min_robustness)
    basis = encoding.bps_basis(config.encoding_points, config.encoding_radius)
    scales = np.round(dataset.scales, 6)  # DexGraspNet stores float32-rounded scales
    groups, cond_index = {}, np.zeros(len(dataset), np.int32)
    for index in np.flatnonzero(keep):
        cond_index[index] = groups.setdefault(
            (dataset.object_codes[dataset.object_index[index]], float(scales[index])), len(groups))
    conds = np.zeros((len(groups), len(basis) + 1), np.float32)
    by_code = {}
    for (code, scale), row in groups.items():
        by_code.setdefault(code, []).append((scale, row))
    for code, entries in by_code.items():
        codes = encoding.encode_mesh_scales(dataset.mesh_path(code), [s for s, _ in entries], basis=basis,
                                            num_samples=config.encoding_samples)
        conds[[row for _, row in entries]] = codes
        if progress is not None:
            progress(1)
    return dataset.grasps[keep], conds, cond_index[keep], list(groups)


POSE_LABELS = ("up_x", "up_y", "up_z")  # a table-top dataset's up-direction of each grasp


def pose_conditions(dataset, keep: np.ndarray) -> np.ndarray:
    """The up-direction `[n, 3]` of the grasps at mask `keep` (labels `POSE_LABELS`, unit vectors).

    Raises `DataError` when the dataset has no such labels (it is not a
    table-top dataset) or a label is not a unit vector.
    """
    missing = [name for name in POSE_LABELS if name not in dataset.extras]
    if missing:
        raise DataError(f"{dataset.root}: no up-direction labels {missing} to condition on the pose; "
                        "make a table-top dataset with `diffrl tabletop`, or train without a pose condition")
    up = np.stack([np.asarray(dataset.extras[name], np.float64)[keep] for name in POSE_LABELS], -1)
    norm = np.linalg.norm(up, axis=-1)
    if not (np.all(np.isfinite(up)) and np.all(np.abs(norm - 1.0) < 1e-3)):
        bad = int(np.argmax(~np.isfinite(norm) | (np.abs(norm - 1.0) >= 1e-3)))
        raise DataError(f"{dataset.root}: up-direction of training grasp {bad} is {up[bad].tolist()}, "
                        "not a unit vector")
    return (up / norm[:, None]).astype(np.float32)
