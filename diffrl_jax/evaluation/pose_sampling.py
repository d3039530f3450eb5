"""Pose-sampling evaluation: objects dropped on a table, grasps sampled, chosen, lifted.

For each object: `poses` resting poses (`lift.settle_object` in MJX, or
`lift_mujoco.settle_mujoco` with the C backend), then
`candidates` grasps per pose from the diffusion model (object frame), moved
into the world frame. A candidate whose hand would pass through the table
(`lift.table_clearance` below the protocol's margin) is rejected. Among the
rest, one is chosen by a contact score from kinematics alone (no physics
step is spent choosing): the deepest hand-object penetration plus the mean
gap of the five fingertips to the surface, smallest first (`contact_score`).
The chosen grasp is executed by the lift protocol (MJX or MuJoCo C); a pose
with no clear candidate counts as a failure.

The functions that score and choose are pure and jittable; `evaluate_object`
is the host loop that calls them.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffrl_jax.errors import ConfigError
from diffrl_jax.evaluation.stats import rate
from diffrl_jax.sim import bank, hold, lift

SELECTIONS = ("contact", "first")


@dataclasses.dataclass(frozen=True)
class PoseSamplingConfig:
    poses: int = 100  # resting poses per object
    candidates: int = 16  # sampled grasps per pose
    select: str = "contact"  # "contact": best contact score; "first": first clear candidate
    sampler: str = "ddim"
    steps: int | None = None  # denoising steps (None: the sampler's default)
    guidance: float = 1.0
    penetration_weight: float = 1.0  # of the contact score: penetration m + weight-free tip gap m
    seed: int = 0

    def validate(self) -> "PoseSamplingConfig":
        if not (isinstance(self.poses, int) and self.poses >= 1):
            raise ConfigError(f"poses must be a positive integer, got {self.poses!r}")
        if not (isinstance(self.candidates, int) and self.candidates >= 1):
            raise ConfigError(f"candidates must be a positive integer, got {self.candidates!r}")
        if self.select not in SELECTIONS:
            raise ConfigError(f"select must be one of {SELECTIONS}, got {self.select!r}")
        if not (np.isfinite(self.penetration_weight) and self.penetration_weight >= 0):
            raise ConfigError(f"penetration_weight must be >= 0, got {self.penetration_weight}")
        return self


def contact_score(template: bank.SimTemplate, fields: bank.ObjectFields, grasps: jax.Array,
                  penetration_weight: float = 1.0) -> jax.Array:
    """Object-frame grasps [K, 31] -> score [K] (m, smaller is better): no physics steps.

    penetration_weight x the deepest penetration of a hand capsule into the
    object, plus the mean over the five distal phalanges of their gap to the
    surface (0 when touching). A grasp that holds touches with its fingertips
    without digging in.
    """
    mjx_model = bank.world_model(template, fields)
    from diffrl_jax.scene import import_mjx

    mjx = import_mjx()
    model = template.scene.model
    caps = np.array([g for g in template.scene.hand_geoms if model.geom_type[g] == 3])
    tips = np.isin(caps, template.scene.fingertip_geoms)
    per_capsule = len(hold._CAPSULE_POINTS)

    def one(grasp):
        d = template.blank_data.replace(qpos=hold.initial_qpos(template, grasp))
        d = mjx.kinematics(mjx_model, d)
        points, _, radii = hold.capsule_points(template, d)
        dist, _ = hold.surface_distance(fields, points)
        gap = (dist - radii).reshape(len(caps), per_capsule).min(axis=1)  # [C] per capsule
        penetration = jnp.maximum(-gap.min(), 0.0)
        tip_gap = jnp.mean(jnp.maximum(gap[tips], 0.0))
        return penetration_weight * penetration + tip_gap

    return jax.vmap(one)(grasps)


def choose(score: jax.Array, clear: jax.Array, select: str = "contact") -> tuple[jax.Array, jax.Array]:
    """score, clear: [P, K] -> (chosen index [P], any clear [P]).

    "contact": the clear candidate of lowest score; "first": the first clear one.
    """
    if select == "first":
        key = jnp.where(clear, jnp.arange(score.shape[-1])[None, :], score.shape[-1])
    else:
        key = jnp.where(clear, score, jnp.inf)
    return jnp.argmin(key, axis=-1), jnp.any(clear, axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _prepare(template: lift.LiftTemplate, fields, poses, select: str, penetration_weight: float,
             object_grasps):
    """object_grasps [P, K, 31], poses [P, 7] -> chosen world grasps [P, 31] and diagnostics."""
    n_poses, k = object_grasps.shape[:2]
    world = lift.grasp_to_world(object_grasps, poses[:, None, :])
    clearance = lift.table_clearance(template, world)  # [P, K]
    clear = clearance >= template.protocol.table_margin_m
    score = contact_score(template, fields, object_grasps.reshape(-1, object_grasps.shape[-1]),
                          penetration_weight).reshape(n_poses, k)
    index, any_clear = choose(score, clear, select)
    chosen = jnp.take_along_axis(world, index[:, None, None], axis=1)[:, 0]
    pick = lambda x: jnp.take_along_axis(x, index[:, None], axis=1)[:, 0]  # noqa: E731
    return chosen, index, any_clear, pick(score), pick(clearance), jnp.mean(clear, axis=-1)


def evaluate_object(template: lift.LiftTemplate, prepared: bank.PreparedObject, sample_fn,
                    config: PoseSamplingConfig, backend: str = "mjx", nthread: int | None = None) -> dict:
    """One object through pose sampling; returns the summary and per-pose records.

    sample_fn(n, seed) -> object-frame grasps [n, 31] (the diffusion sampler
    bound to this object's condition). Timings are per stage; physics steps
    are counted for settling and lifting (choosing spends none).
    """
    config.validate()
    timings = {}
    fields = template.fields(prepared)
    stacked = bank.stack_fields([fields])
    t = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    if backend == "mujoco":
        from diffrl_jax.sim import lift_mujoco

        poses = lift_mujoco.settle_mujoco(template, prepared, key, config.poses, nthread=nthread)
    else:
        poses = np.asarray(lift.make_settle(template, config.poses)(stacked, key[None]))[0]
    timings["settle_s"] = time.perf_counter() - t

    t = time.perf_counter()
    grasps = np.asarray(sample_fn(config.poses * config.candidates, config.seed), np.float32)
    grasps = grasps.reshape(config.poses, config.candidates, -1)
    timings["sample_s"] = time.perf_counter() - t

    t = time.perf_counter()
    chosen, index, any_clear, score, clearance, clear_fraction = jax.device_get(_prepare(
        template, fields, poses.astype(np.float32), config.select, float(config.penetration_weight), grasps))
    timings["select_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if backend == "mujoco":
        from diffrl_jax.sim import lift_mujoco

        result = lift_mujoco.lift_mujoco(template, prepared, poses, chosen, nthread=nthread)
    elif backend == "mjx":
        out = lift.make_lift_test(template)(stacked, poses[None].astype(np.float32), chosen[None])
        result = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], jax.device_get(out))
    else:
        raise ConfigError(f"unknown backend {backend!r}; choose mjx or mujoco")
    timings["lift_s"] = time.perf_counter() - t

    success = np.asarray(result.success) & np.asarray(any_clear)
    protocol = template.protocol
    records = [{
        "pose": i, "object_pose": [float(x) for x in poses[i]], "success": bool(success[i]),
        "clear_candidates": float(clear_fraction[i]), "chosen": int(index[i]),
        "score_m": float(score[i]), "clearance_m": float(clearance[i]),
        "lift_height_m": float(result.lift_height[i]), "slip_m": float(result.slip[i]),
        "grasp": [float(x) for x in chosen[i]],
    } for i in range(config.poses)]
    summary = {
        **rate(int(success.sum()), config.poses),
        "no_clear_candidate": int((~np.asarray(any_clear)).sum()),
        "candidates": config.candidates, "select": config.select, "backend": backend,
        "physics_steps": int(config.poses * (protocol.settle_steps + protocol.total_steps)),
        "timings_s": timings,
    }
    return {"summary": summary, "records": records}
