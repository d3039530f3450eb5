"""Pose-sampling evaluation: objects dropped on a table, grasps sampled, chosen, lifted.

For each object: `poses` resting poses (a backend's `settle`, `sim.backends`), then
`candidates` grasps per pose from the diffusion model (object frame), moved
into the world frame. A candidate whose hand would pass through the table
(`lift.table_clearance` below the protocol's margin) is rejected. Among the
rest, one is chosen (`select`):

- "contact": by a contact score from kinematics alone (no physics step is
  spent choosing): the deepest hand-object penetration plus the mean gap of
  the five fingertips to the surface, smallest first (`contact_score`).
- "check": the `check_top` clear candidates of best contact score are
  hold-tested in the object frame (`hold_protocol_for`: the six pull
  directions, the lift's physics, no table, no approach), and the one that
  holds in most directions is chosen, the contact score breaking ties. It is
  a short check of the grasp alone, not a rehearsal of the lift: every one
  of its physics steps is counted in `check_physics_steps`.
- "first": the first clear candidate.
- "one-shot": the first candidate, clear or not: nothing is simulated or
  rejected, so a sample through the table is a failed pose. The figure of a
  sampler that is used as it is.
- "learned": the clear candidate of highest learned lift score
  (`evaluation.scorer`, a classifier trained on table-top pairs): nothing is
  simulated to choose.

With `pose_condition` the sampler is asked, pose by pose, for grasps of the
object lying as it lies: `sample_fn` gets each pose's up-direction (world +z
in the object frame, `resting.up_direction`) for its candidates.

The chosen grasp is executed by the lift protocol (the backend's `lift`); a pose
with no clear candidate counts as a failure. `compare` names further modes run
on the same poses and samples, each with its own choice and lift, so modes
differ only in how they choose.

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

from diffrl_jax import configs
from diffrl_jax.configs import choice, integer, non_negative
from diffrl_jax.errors import ConfigError
from diffrl_jax.evaluation.selections import SELECTIONS, check_modes
from diffrl_jax.evaluation.stats import rate
from diffrl_jax.sim import backends, bank, hold, lift, resting
from diffrl_jax.sim.protocol import HoldProtocol



@dataclasses.dataclass(frozen=True)
class PoseSamplingConfig:
    poses: int = integer(100, min=1)  # resting poses per object
    # Sampled grasps per pose. Many are rejected: a grasp made in the object
    # frame often puts the hand through the table once the object lies in a
    # random pose (2-9% of samples were clear on the built-in objects), so 16
    # left 64-72% of poses without a clear candidate, 256 at most 18%.
    candidates: int = integer(256, min=1)
    select: str = choice("check", SELECTIONS)  # see SELECTIONS and the module docstring
    # "check": clear candidates hold-tested per pose. On the quick preset's
    # model a chosen candidate holding in all six directions was lifted in 70%
    # of poses (73/104), one holding in fewer in 12% (5/42).
    check_top: int = integer(16, min=1)
    sampler: str = "ddim"
    steps: int | None = None  # denoising steps (None: the sampler's default)
    guidance: float = 1.0
    penetration_weight: float = non_negative(1.0)  # of the contact score: penetration m + weight-free tip gap m
    seed: int = 0
    compare: tuple[str, ...] = ()  # further modes on the same poses and samples
    pose_condition: bool = False  # sample each pose's candidates for its up-direction

    def validate(self) -> "PoseSamplingConfig":
        configs.check(self, "pose sampling")
        check_modes(self.select, self.compare, "pose sampling")
        return self

    @property
    def modes(self) -> tuple[str, ...]:
        """The selection modes that run: `select` (the records' and videos'), then `compare`."""
        return (self.select, *self.compare)


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
    per_capsule = len(hold.CAPSULE_POINTS)

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

    "contact": the clear candidate of lowest score; "first": the first clear one;
    "one-shot": candidate 0, "any clear" then saying whether it is; "learned":
    the clear candidate of highest score (a learned lift score).
    """
    if select == "one-shot":
        return jnp.zeros(score.shape[:-1], jnp.int32), clear[..., 0]
    if select == "first":
        key = jnp.where(clear, jnp.arange(score.shape[-1])[None, :], score.shape[-1])
    elif select == "learned":
        key = jnp.where(clear, -score, jnp.inf)
    else:
        key = jnp.where(clear, score, jnp.inf)
    return jnp.argmin(key, axis=-1), jnp.any(clear, axis=-1)


def shortlist(score: jax.Array, clear: jax.Array, m: int) -> tuple[jax.Array, jax.Array]:
    """score, clear: [P, K] -> (index [P, m'], valid [P, m']), m' = min(m, K).

    Per pose, the clear candidates in order of increasing score; `valid` is
    False where a pose has fewer than m' clear candidates.
    """
    key = jnp.where(clear, score, jnp.inf)
    index = jnp.argsort(key, axis=-1, stable=True)[:, :min(m, score.shape[-1])]
    return index, jnp.take_along_axis(clear, index, axis=-1)


def choose_checked(held: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """held [P, M] directions held, valid [P, M] -> column [P] of the chosen candidate.

    The valid candidate holding in most directions; among equals, the first
    (the shortlist is in order of contact score). 0 where none is valid.
    """
    m = held.shape[-1]
    key = np.where(valid, held * m + (m - 1 - np.arange(m))[None, :], -1)
    return np.argmax(key, axis=-1)


def hold_protocol_for(protocol: lift.LiftProtocol) -> HoldProtocol:
    """The strict hold test with the physics and squeeze of `protocol`: what "check" runs."""
    return HoldProtocol(name="lift-check", physics=protocol.physics, squeeze=protocol.squeeze).validate()


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prepare(template: lift.LiftTemplate, fields, poses, penetration_weight: float, object_grasps):
    """object_grasps [P, K, 31], poses [P, 7] -> world grasps [P, K, 31], clear, score, clearance [P, K]."""
    n_poses, k = object_grasps.shape[:2]
    world = lift.grasp_to_world(object_grasps, poses[:, None, :])
    clearance = lift.table_clearance(template, world)  # [P, K]
    clear = clearance >= template.protocol.table_margin_m
    score = contact_score(template, fields, object_grasps.reshape(-1, object_grasps.shape[-1]),
                          penetration_weight).reshape(n_poses, k)
    return world, clear, score, clearance


def _check(template: lift.LiftTemplate, prepared, grasps: np.ndarray, backend: backends.Backend,
           size: int) -> np.ndarray:
    """Object-frame grasps [n, 31] -> directions held [n] under `hold_protocol_for`.

    They run padded to `size` rows (poses x check_top), so on MJX every object
    goes through one compiled hold test.
    """
    hold_template = _hold_template(template.protocol, template.budget)
    result = backend.hold(hold_template, prepared, grasps, pad_to=size)
    return np.asarray(result.held).sum(axis=-1)


@functools.lru_cache(maxsize=4)
def _hold_template(protocol: lift.LiftProtocol, budget: bank.ObjectBudget) -> bank.SimTemplate:
    return bank.make_template(hold_protocol_for(protocol), budget)


def clearance_matrix(template: lift.LiftTemplate, object_grasps: jax.Array, poses: jax.Array) -> jax.Array:
    """Object-frame grasps [N, 31], resting poses [P, 7] -> table clearance [P, N] (m).

    Each grasp moved onto the object in each pose (`lift.grasp_to_world`),
    then `lift.table_clearance`: below `table_margin_m`, the grasp would be
    rejected in that pose.
    """
    world = lift.grasp_to_world(object_grasps[None], poses[:, None])
    return lift.table_clearance(template, world)


def settle_poses(template: lift.LiftTemplate, prepared: bank.PreparedObject, n: int, seed: int = 0,
                 backend: str | backends.Backend = "mjx", nthread: int | None = None) -> np.ndarray:
    """The `n` resting poses [n, 7] that `evaluate_object` uses for `seed` on `backend`."""
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
    return backends.get(backend, nthread=nthread).settle(template, prepared, key, n)


def evaluate_object(template: lift.LiftTemplate, prepared: bank.PreparedObject, sample_fn,
                    config: PoseSamplingConfig, backend: str | backends.Backend = "mjx",
                    nthread: int | None = None, score_fn=None) -> dict:
    """One object through pose sampling; returns the summary and per-pose records.

    sample_fn(n, seed) -> object-frame grasps [n, 31] (the diffusion sampler
    bound to this object's condition); with `config.pose_condition`,
    sample_fn(n, seed, up) with up [n, 3] the up-direction of each sample's pose.
    score_fn(grasps [P, K, 31], up [P, 3]) -> [P, K], higher better: the
    learned score "learned" ranks by (required for that mode). Timings are per stage; physics steps
    are counted for settling, choosing ("check" only) and lifting.
    """
    config.validate()
    if "learned" in config.modes and score_fn is None:
        raise ConfigError("--select learned needs a learned scorer (--scorer DIR, made by `diffrl train-scorer`)")
    backend = backends.get(backend, nthread=nthread)
    timings = {}
    fields = template.fields(prepared)
    t = time.perf_counter()
    poses = settle_poses(template, prepared, config.poses, config.seed, backend)
    timings["settle_s"] = time.perf_counter() - t

    t = time.perf_counter()
    n = config.poses * config.candidates
    if config.pose_condition:
        up = np.repeat(resting.up_direction(poses[:, 3:]), config.candidates, axis=0)
        grasps = np.asarray(sample_fn(n, config.seed, up), np.float32)
    else:
        grasps = np.asarray(sample_fn(n, config.seed), np.float32)
    grasps = grasps.reshape(config.poses, config.candidates, -1)
    timings["sample_s"] = time.perf_counter() - t

    t = time.perf_counter()
    world, clear, score, clearance = _prepare(template, fields, poses.astype(np.float32),
                                              float(config.penetration_weight), grasps)
    learned = None
    if "learned" in config.modes:
        learned = np.asarray(score_fn(grasps, resting.up_direction(poses[:, 3:]).astype(np.float32)))
    chosen = {mode: _choose(template, prepared, grasps, learned if mode == "learned" else score, clear, mode,
                            config, backend)
              for mode in config.modes}
    world, clear, score, clearance = jax.device_get((world, clear, score, clearance))
    clear_fraction = clear.mean(axis=-1)
    timings["select_s"] = time.perf_counter() - t

    t = time.perf_counter()
    protocol = template.protocol
    rows = np.arange(config.poses)
    lifted = {}
    for mode, c in chosen.items():
        result = backend.lift(template, prepared, poses, world[rows, c["index"]])
        lifted[mode] = (result, np.asarray(result.success) & np.asarray(c["any_clear"]))
    timings["lift_s"] = time.perf_counter() - t

    lift_steps = int(config.poses * protocol.total_steps)
    by_mode = {mode: {"success": float(success.mean()), "ci95": list(rate(int(success.sum()), config.poses)[k]
                                                                    for k in ("ci_low", "ci_high")),
                      "successes": int(success.sum()), "n_poses": config.poses,
                      "no_clear_candidate": int((~np.asarray(chosen[mode]["any_clear"])).sum()),
                      "physics_steps_choosing": chosen[mode]["check_steps"], "physics_steps_lifting": lift_steps}
               for mode, (result, success) in lifted.items()}
    c, (result, success) = chosen[config.select], lifted[config.select]
    index = c["index"]
    pick = lambda x: x[rows, index]  # noqa: E731
    records = [{
        "pose": i, "object_pose": [float(x) for x in poses[i]], "success": bool(success[i]),
        "clear_candidates": float(clear_fraction[i]), "chosen": int(index[i]),
        "score_m": float(pick(score)[i]), "clearance_m": float(pick(clearance)[i]),
        "checked": int(c["checked"][i]), "check_directions_held": int(c["check_held"][i]),
        "lift_height_m": float(result.lift_height[i]), "slip_m": float(result.slip[i]),
        "grasp": [float(x) for x in world[i, index[i]]],
        **({"compare": {mode: {"chosen": int(chosen[mode]["index"][i]), "success": bool(lifted[mode][1][i])}
                        for mode in config.compare}} if config.compare else {}),
    } for i in range(config.poses)]
    summary = {
        **rate(int(success.sum()), config.poses),
        "no_clear_candidate": by_mode[config.select]["no_clear_candidate"],
        "candidates": config.candidates, "select": config.select, "backend": backend.name,
        "pose_condition": bool(config.pose_condition),
        "physics_steps": int(config.poses * protocol.settle_steps)
        + sum(m["physics_steps_choosing"] + m["physics_steps_lifting"] for m in by_mode.values()),
        "check_physics_steps": c["check_steps"],
        "pose_sampling": by_mode,
        "timings_s": timings,
    }
    return {"summary": summary, "records": records}


def _choose(template: lift.LiftTemplate, prepared, grasps: np.ndarray, score, clear, mode: str,
            config: PoseSamplingConfig, backend: backends.Backend) -> dict:
    """One mode's choice per pose: {"index" [P], "any_clear" [P], "checked" [P] (candidates
    hold-tested), "check_held" [P] (the chosen one's directions held, -1 unchecked), "check_steps"}."""
    n_poses = score.shape[0]
    if mode != "check":
        index, any_clear = jax.device_get(choose(score, clear, mode))
        return {"index": np.asarray(index), "any_clear": np.asarray(any_clear), "checked": np.zeros(n_poses, int),
                "check_held": np.full(n_poses, -1), "check_steps": 0}
    short, valid = jax.device_get(shortlist(score, clear, config.check_top))
    rows = np.nonzero(valid)
    held = np.zeros(valid.shape, int)
    if len(rows[0]):
        held[rows] = _check(template, prepared, grasps[rows[0], short[rows]], backend, valid.size)
    column = choose_checked(held, valid)
    index = short[np.arange(n_poses), column]
    any_clear = valid.any(axis=-1)
    checked = valid.sum(axis=-1)
    return {"index": index, "any_clear": any_clear, "checked": checked,
            "check_held": np.where(any_clear, held[np.arange(n_poses), column], -1),
            "check_steps": int(checked.sum()) * hold_protocol_for(template.protocol).total_steps}  # 6 directions
