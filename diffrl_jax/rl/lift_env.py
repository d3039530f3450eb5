"""The lift refinement environment: a dataset grasp on an object lying on the table.

brax's `Env` interface (`reset(rng) -> State`, `step(state, action) -> State`),
pure and vmappable, like `refine_env`, but the scenario is the lift itself
(`sim.lift`): an episode draws a dataset grasp, its object and one of that
object's resting poses (`sim.resting`), turned by a random yaw about the world
z axis and moved by a random offset on the table. The action in [-1, 1]^A
becomes a bounded edit of the object-frame grasp (`edit`, `refine_env.correct`'s
math); the edited grasp is moved into the world by the pose and lifted through
a backend's `world_lift_fn`, `(object_id [], pose [7], world grasp [31]) ->
LiftResult` (pure MJX, or MuJoCo's C engine through `jax.pure_callback`). One
step per episode: a contextual bandit.

Success is the lift's, and two kinematic checks of the edited grasp as it is
placed: the hand clears the table (`lift.table_clearance >=
table_margin_m`, the rule pose-sampling evaluation rejects grasps by) and no
capsule point of the hand starts deeper than `penetration_limit_mm` inside the
object. The reward is a dict of named, already scaled terms
(`reward_terms`), logged apart as `reward/<name>`.

The host side (`build_lift_problem`, `lift_data`, `make_lift_env`) prepares
arrays and runs the settles (not jittable); it holds out a fraction of each
object's grasps and the last fraction of each object's resting poses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State
from flax import struct

from diffrl_jax import configs
from diffrl_jax.configs import boolean, choice, finite, non_negative
from diffrl_jax.data import rotations
from diffrl_jax.data.dexgraspnet import GraspDataset
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants
from diffrl_jax.objects import assets
from diffrl_jax.rl import refine, refine_env
from diffrl_jax.scene import import_mjx
from diffrl_jax.sim import backends, bank, hold, lift, resting, validate
from diffrl_jax.sim.backends import LiftFn
from diffrl_jax.sim.bank import ObjectFields, object_fields
from diffrl_jax.sim.lift import LiftProtocol, LiftResult, LiftTemplate

FINGER_MODES = ("joints", "synergy")
# Synergy action layout: wrist translation 3, wrist rotation 3, the closure 1.
SYNERGY_ACTION_SIZE = 7

# Observation clips: capsule-point heights above the table and the table
# clearance (cm), and capsule-point gaps to the surface (m, as refine_env's).
_HEIGHT_RANGE_CM = (-5.0, 10.0)
_GAP_RANGE = (-0.02, 0.05)
# A non-finite measurement is paid as this bad (cm of table, mm of penetration).
_WORST_TABLE_CM = 10.0
_WORST_PENETRATION_MM = 100.0


@dataclasses.dataclass(frozen=True)
class LiftRefineConfig:
    """Edit bounds, episode randomisation and reward scales of the lift refinement task."""

    translation_m: float = non_negative(0.03)  # wrist translation, each axis (object frame)
    rotation_rad: float = non_negative(0.3)  # wrist rotation, each axis of the rotation vector (palm frame)
    finger_mode: str = choice("joints", FINGER_MODES)  # "joints": 22 deltas + closure; "synergy": closure only
    joints_rad: float = non_negative(0.3)  # each finger joint ("joints" mode)
    closure_rad: float = non_negative(0.3)  # coordinated closure of all fingers (refine_env.CLOSURE)
    # At reset: the resting pose turned about the world z axis through the
    # object (uniform yaw) and moved on the table (uniform per axis, z kept).
    randomize_yaw: bool = boolean(True)
    table_jitter_m: float = non_negative(0.05)
    success_reward: float = finite(1.0)  # lifted, clear of the table, not inside the object
    height_reward: float = finite(0.5)  # times clip(lift_height / success_height_m, 0, 1)
    slip_cost: float = finite(0.25)  # times clip(slip / slip_bound_m, 0, 2)
    table_cost: float = finite(0.1)  # per cm of hand-table penetration (kinematic, edited grasp)
    penetration_limit_mm: float = non_negative(5.0)  # deeper at placement: no success
    penetration_cost: float = finite(0.1)  # per mm beyond the tolerance
    penetration_tolerance_mm: float = non_negative(2.0)
    action_cost: float = finite(0.05)  # times the mean squared action

    def validate(self) -> LiftRefineConfig:
        return configs.check(self, "lift refine config")

    def replace(self, **overrides) -> LiftRefineConfig:
        return configs.replace(self, overrides, "lift refine config").validate()

    def to_json(self) -> dict:
        return configs.to_json(self)

    @property
    def action_size(self) -> int:
        return refine_env.ACTION_SIZE if self.finger_mode == "joints" else SYNERGY_ACTION_SIZE

    def correction(self) -> refine_env.RefineConfig:
        """The same bounds as a `refine_env.RefineConfig` (for `refine_env.correct`)."""
        return refine_env.RefineConfig(translation_m=self.translation_m, rotation_rad=self.rotation_rad,
                                       joints_rad=self.joints_rad, closure_rad=self.closure_rad)


def full_action(actions: jax.Array, finger_mode: str) -> jax.Array:
    """Actions [..., A] of `finger_mode` -> refine_env's layout [..., 29] (synergy: no joint deltas)."""
    if finger_mode == "joints":
        return actions
    zeros = jnp.zeros(actions.shape[:-1] + (constants.NUM_JOINTS,), actions.dtype)
    return jnp.concatenate([actions[..., :6], zeros, actions[..., 6:7]], -1)


def edit(grasps: jax.Array, actions: jax.Array, config: LiftRefineConfig) -> jax.Array:
    """Object-frame grasps [..., 31], actions [..., A] in [-1, 1] -> edited grasps [..., 31].

    `refine_env.correct` with this config's bounds; a non-finite action
    component counts as 0.
    """
    return refine_env.correct(grasps, full_action(actions, config.finger_mode), config.correction())


def clean_action(action: jax.Array) -> jax.Array:
    """The action as the edit reads it: non-finite components 0, clipped to [-1, 1]."""
    return jnp.clip(jnp.where(jnp.isfinite(action), action, 0.0), -1.0, 1.0)


def yawed_pose(pose: jax.Array, yaw: jax.Array, offset: jax.Array) -> jax.Array:
    """A resting pose [7] turned by `yaw` (rad) about the world z axis through the object's
    position, then moved by offset [2] on the table (z kept)."""
    half = 0.5 * yaw
    q_yaw = jnp.stack([jnp.cos(half), jnp.zeros_like(half), jnp.zeros_like(half), jnp.sin(half)])
    quat = rotations.quat_multiply(q_yaw.astype(pose.dtype), pose[3:])
    quat = quat / jnp.linalg.norm(quat)
    position = pose[:3].at[:2].add(offset.astype(pose.dtype))
    return jnp.concatenate([position, quat])


class HandFeatures(struct.PyTreeNode):
    """Kinematic measurements of one grasp placed at an object pose (metres).

    heights: [K] the hand's capsule points (surface) above the table top
    gaps:    [K] signed gaps of the capsule points to the object surface
    clearance: [] `lift.table_clearance` (pre-grasp and grasp, open and closed hand)
    """

    heights: jax.Array
    gaps: jax.Array
    clearance: jax.Array

    @property
    def penetration_mm(self) -> jax.Array:
        """How deep the hand starts inside the object: -min(gap), >= 0 (mm)."""
        return 1000.0 * jnp.maximum(-jnp.min(self.gaps), 0.0)


def hand_features(template: LiftTemplate, fields: ObjectFields, world_grasp: jax.Array,
                  pose: jax.Array) -> HandFeatures:
    """`HandFeatures` of world_grasp [31] on one object (`fields`) at pose [7].

    One kinematics pass, vmapped over the three hand configurations of
    `lift.table_clearance` (open at the pre-grasp, open and closed at the
    grasp), serves the clearance and the capsule points (closed at the grasp):
    each `mjx.kinematics` costs about 10 s of compile on a 2-core CPU.
    """
    mjx = import_mjx()
    scene = template.scene
    hands = lift.clearance_configs(template.protocol, world_grasp)  # [3, 28]
    blank = template.blank_data

    def placed(hand_qpos):
        d = blank.replace(qpos=jnp.asarray(blank.qpos).at[scene.hand_qpos].set(hand_qpos.astype(blank.qpos.dtype)))
        d = mjx.kinematics(template.mjx_model, d)
        points, _, _ = hold.capsule_points(template, d)  # world; the hand's tree ignores the object
        return points, lift.hand_lowest_in(template, d)

    points, low = jax.vmap(placed)(hands)
    points = points[2]
    _, _, radii = hold.capsule_points(template, blank)  # radii are the model's
    radii = jnp.asarray(radii, points.dtype)
    heights = points[:, 2] - radii - lift.TABLE_TOP
    rotation = rotations.quat_to_matrix(pose[3:].astype(points.dtype))
    local = (points - pose[:3].astype(points.dtype)) @ rotation  # R^T (p - t): object frame
    dist, _ = hold.surface_distance(fields, local)
    return HandFeatures(heights=heights, gaps=dist - radii, clearance=jnp.min(low) - lift.TABLE_TOP)


def judge(result: LiftResult, features: HandFeatures, protocol: LiftProtocol,
          config: LiftRefineConfig) -> jax.Array:
    """[] bool: the lift succeeded, the hand cleared the table and did not start inside the object."""
    clear = features.clearance >= protocol.table_margin_m
    shallow = features.penetration_mm <= config.penetration_limit_mm
    return result.success & clear & shallow


def reward_terms(result: LiftResult, features: HandFeatures, success: jax.Array, action: jax.Array,
                 protocol: LiftProtocol, config: LiftRefineConfig) -> dict[str, jax.Array]:
    """Named reward terms (already scaled); the reward is their sum. NaN-free for any input."""
    height = jnp.where(jnp.isfinite(result.lift_height), result.lift_height, 0.0)
    slip = jnp.where(jnp.isnan(result.slip), jnp.inf, result.slip)
    table_cm = 100.0 * jnp.maximum(-features.clearance, 0.0)
    table_cm = jnp.where(jnp.isfinite(table_cm), table_cm, _WORST_TABLE_CM)
    penetration = jnp.maximum(features.penetration_mm - config.penetration_tolerance_mm, 0.0)
    penetration = jnp.where(jnp.isfinite(penetration), penetration, _WORST_PENETRATION_MM)
    return {
        "success": config.success_reward * success.astype(jnp.float32),
        "height": config.height_reward * jnp.clip(height / protocol.success_height_m, 0.0, 1.0),
        "slip": -config.slip_cost * jnp.clip(slip / protocol.slip_bound_m, 0.0, 2.0),
        "table": -config.table_cost * table_cm,
        "penetration": -config.penetration_cost * penetration,
        "action": -config.action_cost * jnp.mean(jnp.square(clean_action(action))),
    }


REWARD_TERMS = ("success", "height", "slip", "table", "penetration", "action")


class LiftData(struct.PyTreeNode):
    """The grasps an episode draws from, their objects and the objects' resting poses.

    grasps:    [N, 31] canonical grasps (object frame)
    object_id: [N] index of each grasp's simulated object (a code at a scale)
    encodings: [M, E] shape encoding of each object
    fields:    ObjectFields [M, ...] of each object in the LIFT template
    poses:     [M, P, 7] resting poses (world, pos and quat wxyz), P per object
    up:        [M, P, 3] world +z in the object frame of each pose
    pairs:     [K, 2] int32 (grasp row, pose index) pairs an episode draws from,
               or None: every grasp with every pose of its object
    """

    grasps: jax.Array
    object_id: jax.Array
    encodings: jax.Array
    fields: ObjectFields
    poses: jax.Array
    up: jax.Array
    pairs: jax.Array | None = None


class LiftRefineEnv(Env):
    """Lift refinement as a brax environment (see the module docstring).

    Observation [O]: the object-frame grasp [31], the object's encoding [E],
    the up-direction in the object frame [3], the heights of the hand's K
    capsule points above the table (cm, clipped to [-5, 10]) [K], their gaps to
    the object surface (cm, clipped to [-2, 5]) [K], and the table clearance
    (cm, clipped to [-5, 10]) [1], all of the grasp as placed at the
    episode's pose (after the step: of the edited grasp).

    `info`: index, object_id, pose_index, pose (world [7]), base (the dataset
    grasp), grasp (the edited grasp, object frame; the dataset grasp before the
    step), world_grasp, success, lift_height, slip, clearance, penetration_mm.
    """

    def __init__(self, template: LiftTemplate, data: LiftData, lift_fn: LiftFn,
                 config: LiftRefineConfig = LiftRefineConfig()):
        self._config = config.validate()
        protocol = template.protocol
        reach = protocol.region_half_extent_m + self._config.table_jitter_m
        if reach >= min(protocol.table_size[:2]):
            raise ConfigError(f"table jitter {self._config.table_jitter_m} m plus the drop region "
                              f"{protocol.region_half_extent_m} m moves objects off the table "
                              f"(half sizes {protocol.table_size[:2]})")
        n, m, p = data.grasps.shape[0], data.poses.shape[0], data.poses.shape[1]
        if n == 0 or p == 0:
            raise ConfigError(f"lift data needs grasps and resting poses, got {n} grasps, {p} poses per object")
        if data.encodings.shape[0] != m or data.up.shape[:2] != (m, p):
            raise ConfigError(f"lift data: {m} objects of poses, {data.encodings.shape[0]} encodings, "
                              f"up {data.up.shape}")
        if data.pairs is not None and (data.pairs.ndim != 2 or data.pairs.shape[1] != 2
                                       or data.pairs.shape[0] == 0):
            raise ConfigError(f"lift data pairs must be [K > 0, 2] (grasp row, pose index), got {data.pairs.shape}")
        self._template = template
        self._data = data
        self._lift = lift_fn
        self._obs_size = None

    @property
    def config(self) -> LiftRefineConfig:
        return self._config

    @property
    def template(self) -> LiftTemplate:
        return self._template

    @property
    def data(self) -> LiftData:
        return self._data

    @property
    def lift(self) -> LiftFn:
        return self._lift

    def features(self, grasp: jax.Array, object_id: jax.Array, pose: jax.Array) -> HandFeatures:
        """`HandFeatures` of object-frame grasp [31] on object `object_id` at pose [7]."""
        fields = object_fields(self._data.fields, object_id)
        world = lift.grasp_to_world(grasp, pose.astype(grasp.dtype))
        return hand_features(self._template, fields, world, pose)

    def observe(self, grasp, object_id, up, features: HandFeatures) -> jax.Array:
        """The observation [O] (see the class docstring)."""
        heights = jnp.clip(100.0 * features.heights, *_HEIGHT_RANGE_CM)
        gaps = 100.0 * jnp.clip(features.gaps, *_GAP_RANGE)
        clearance = jnp.clip(100.0 * features.clearance, *_HEIGHT_RANGE_CM)[None]
        f32 = jnp.float32
        return jnp.concatenate([
            grasp.astype(f32), self._data.encodings[object_id].astype(f32), up.astype(f32),
            heights.astype(f32), gaps.astype(f32), clearance.astype(f32)])

    def start(self, index: jax.Array, pose_index: jax.Array, yaw: jax.Array = 0.0,
              offset: jax.Array = (0.0, 0.0)) -> State:
        """The initial state on dataset grasp `index` and its object's resting pose
        `pose_index`, turned by `yaw` (rad) and moved by offset [2] (m): deterministic,
        for applying a policy and for evaluation."""
        index = jnp.asarray(index, jnp.int32)
        pose_index = jnp.asarray(pose_index, jnp.int32)
        grasp = self._data.grasps[index]
        object_id = self._data.object_id[index]
        pose = yawed_pose(self._data.poses[object_id, pose_index], jnp.asarray(yaw, jnp.float32),
                          jnp.asarray(offset, jnp.float32))
        up = self._data.up[object_id, pose_index]  # a yaw about world z keeps it
        features = self.features(grasp, object_id, pose)
        zero = jnp.zeros((), jnp.float32)
        info = {"index": index, "object_id": object_id, "pose_index": pose_index, "pose": pose,
                "base": grasp, "grasp": grasp, "world_grasp": lift.grasp_to_world(grasp, pose.astype(grasp.dtype)),
                "success": jnp.zeros((), bool), "lift_height": zero, "slip": zero,
                "clearance": features.clearance.astype(jnp.float32),
                "penetration_mm": features.penetration_mm.astype(jnp.float32)}
        metrics = {f"reward/{k}": zero for k in REWARD_TERMS}
        metrics["success"] = zero
        return State(pipeline_state=None, obs=self.observe(grasp, object_id, up, features),
                     reward=zero, done=zero, metrics=metrics, info=info)

    def draw(self, rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """The random start of `reset`: (index [], pose_index [], yaw [], offset [2])."""
        k_index, k_pose, k_yaw, k_offset = jax.random.split(rng, 4)
        if self._data.pairs is None:
            index = jax.random.randint(k_index, (), 0, self._data.grasps.shape[0])
            pose_index = jax.random.randint(k_pose, (), 0, self._data.poses.shape[1])
        else:
            index, pose_index = self._data.pairs[jax.random.randint(k_index, (), 0, self._data.pairs.shape[0])]
        yaw = (jax.random.uniform(k_yaw, (), minval=-jnp.pi, maxval=jnp.pi)
               if self._config.randomize_yaw else jnp.zeros(()))
        h = self._config.table_jitter_m
        offset = jax.random.uniform(k_offset, (2,), minval=-h, maxval=h)
        return index, pose_index, yaw, offset

    def reset(self, rng: jax.Array) -> State:
        return self.start(*self.draw(rng))

    def step(self, state: State, action: jax.Array) -> State:
        info = state.info
        object_id, pose = info["object_id"], info["pose"]
        grasp = edit(info["base"], action, self._config)
        world = lift.grasp_to_world(grasp, pose.astype(grasp.dtype))
        features = self.features(grasp, object_id, pose)
        result = self._lift(object_id, pose, world)
        protocol = self._template.protocol
        success = judge(result, features, protocol, self._config)
        terms = reward_terms(result, features, success, action, protocol, self._config)
        f32 = jnp.float32
        info = {**info, "grasp": grasp, "world_grasp": world, "success": success,
                "lift_height": result.lift_height.astype(f32), "slip": result.slip.astype(f32),
                "clearance": features.clearance.astype(f32), "penetration_mm": features.penetration_mm.astype(f32)}
        metrics = {f"reward/{k}": v.astype(f32) for k, v in terms.items()}
        metrics["success"] = success.astype(f32)
        up = self._data.up[object_id, info["pose_index"]]
        return state.replace(obs=self.observe(grasp, object_id, up, features),
                             reward=sum(terms.values()).astype(f32), done=jnp.ones((), f32),
                             metrics=metrics, info=info)

    @property
    def observation_size(self) -> int:
        if self._obs_size is None:
            zero = jnp.zeros((), jnp.int32)
            self._obs_size = int(jax.eval_shape(lambda: self.start(zero, zero).obs).shape[0])
        return self._obs_size

    @property
    def action_size(self) -> int:
        return self._config.action_size

    @property
    def backend(self) -> str:
        return "mjx"


# ---------------------------------------------------------------------------
# Host side: the problem on a dataset (not jittable).


@dataclasses.dataclass(frozen=True, eq=False)
class LiftProblem:
    """A dataset on the lift table, ready for the lift refinement environment.

    object_id:  [N] simulated object (entry) of each dataset row
    heldout:    [N] rows never used in training
    poses, up:  [M, P, 7], [M, P, 3] each object's resting poses (its bank's first P)
    heldout_poses: [P] poses never drawn in training (the last ones of each object)
    """

    dataset: GraspDataset
    template: LiftTemplate
    entries: tuple[validate.Entry, ...]
    prepared: tuple[bank.PreparedObject, ...]
    fields: ObjectFields  # [M, ...] numpy
    encodings: np.ndarray  # [M, E]
    object_id: np.ndarray
    heldout: np.ndarray
    banks: tuple[resting.RestingPoses, ...]
    poses: np.ndarray
    up: np.ndarray
    heldout_poses: np.ndarray

    @property
    def protocol(self) -> LiftProtocol:
        return self.template.protocol


def heldout_pose_mask(poses_per_object: int, fraction: float) -> np.ndarray:
    """[P] bool: the last `fraction` of P poses (rounded, at least one when P >= 2 and
    fraction > 0, never all)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"held-out fraction must be in [0, 1), got {fraction}")
    count = round(fraction * poses_per_object)
    if fraction > 0 and poses_per_object >= 2:
        count = max(count, 1)
    count = min(count, poses_per_object - 1)
    mask = np.zeros(poses_per_object, bool)
    mask[poses_per_object - count:] = True
    return mask


def build_lift_problem(dataset: GraspDataset, protocol: LiftProtocol, backend: str | backends.Backend,
                       budget: bank.ObjectBudget = bank.ObjectBudget(), poses_per_object: int = 10,
                       seed: int = 0, heldout_fraction: float = 0.2,
                       progress: Callable[[int], None] | None = None) -> LiftProblem:
    """Objects, lift fields, encodings, resting banks and the held-out splits of `dataset`.

    One simulated object per (code, scale); object m's bank is
    `resting.resting_bank(backend, template, prepared, P, seed + m)`. A
    `heldout_fraction` of each object's grasps (`refine.split_heldout`) and of
    its P poses (the last ones) is held out.
    """
    protocol.validate()
    budget.validate()
    if isinstance(poses_per_object, bool) or not isinstance(poses_per_object, (int, np.integer)) \
            or poses_per_object < 1:
        raise ConfigError(f"poses per object must be a positive integer, got {poses_per_object!r}")
    if len(dataset) == 0:
        raise ConfigError("the dataset has no grasps to refine")
    backend = backends.get(backend)
    template = lift.make_template(protocol, budget)
    banks = []

    def prepare(entry):  # the object, then its resting bank (seeded per entry, in entry order)
        obj = assets.mesh_object(dataset.mesh_path(entry.code), entry.scale, name=entry.code,
                                 max_hull_vertices=budget.vertices)
        p = lift.prepare_object(template, obj)
        banks.append(resting.resting_bank(backend, template, p, int(poses_per_object), seed=seed + len(banks)))
        return p

    entry_list, prepared, fields, encodings, object_id = refine.prepare_entries(dataset, template, prepare, progress)
    return LiftProblem(
        dataset=dataset, template=template, entries=entry_list, prepared=prepared, fields=fields,
        encodings=encodings, object_id=object_id, heldout=refine.split_heldout(dataset.object_index, heldout_fraction, seed),
        banks=tuple(banks),
        poses=np.stack([b.poses[:poses_per_object] for b in banks]).astype(np.float32),
        up=np.stack([b.up[:poses_per_object] for b in banks]).astype(np.float32),
        heldout_poses=heldout_pose_mask(int(poses_per_object), heldout_fraction))


def pair_clearance(template: LiftTemplate, fields: ObjectFields, grasps: np.ndarray, object_id: np.ndarray,
                   poses: np.ndarray, chunk: int = 256) -> np.ndarray:
    """[N, P] `lift.table_clearance` (m) of each object-frame grasp [N, 31] of object
    `object_id` [N] at each resting pose poses[object_id, p] ([M, P, 7]); a yaw about
    world z and a move on the table keep it. Fixed-size chunks: one compile."""
    grasps, object_id, poses = np.asarray(grasps, np.float32), np.asarray(object_id), np.asarray(poses, np.float32)
    fields = jax.tree_util.tree_map(jnp.asarray, fields)

    @jax.jit
    def clearance(g, o, q):  # [C, 31], [C], [C, 7] -> [C]
        def one(g, o, q):
            return hand_features(template, object_fields(fields, o), lift.grasp_to_world(g, q), q).clearance
        return jax.vmap(one)(g, o, q)

    n, p = len(grasps), poses.shape[1]
    row, pose_index = np.repeat(np.arange(n), p), np.tile(np.arange(p), n)
    out = np.empty(n * p, np.float32)
    for start in range(0, n * p, chunk):  # the last chunk padded with its last pair
        stop = min(start + chunk, n * p)
        take = np.arange(start, start + chunk).clip(max=stop - 1)
        r = row[take]
        c = clearance(jnp.asarray(grasps[r]), jnp.asarray(object_id[r], jnp.int32),
                      jnp.asarray(poses[object_id[r], pose_index[take]]))
        out[start:stop] = np.asarray(c)[:stop - start]
    return out.reshape(n, p)


def lift_data(problem: LiftProblem, rows: np.ndarray, heldout_poses: bool = False,
              min_clearance_m: float | None = None) -> LiftData:
    """The environment's data for dataset `rows` and the training poses (or the held-out ones).

    With `min_clearance_m`, episodes draw only the (grasp, pose) pairs whose
    unedited grasp clears the table by at least that much (negative: reaches at
    most that far into it), the pairs an edit of the configured bounds can
    bring clear; None draws every pair.
    """
    rows = np.asarray(rows)
    if rows.size == 0:
        raise ConfigError("no grasps for the lift environment (is the held-out fraction too large?)")
    keep = problem.heldout_poses if heldout_poses else ~problem.heldout_poses
    if not keep.any():
        raise ConfigError("no held-out resting poses: build the problem with poses_per_object >= 2 "
                          "and a held-out fraction > 0")
    poses = problem.poses[:, keep]
    pairs = None
    if min_clearance_m is not None:
        if not np.isfinite(min_clearance_m):
            raise ConfigError(f"min_clearance_m must be finite, got {min_clearance_m}")
        clearance = pair_clearance(problem.template, problem.fields, problem.dataset.grasps[rows],
                                   problem.object_id[rows], poses)
        near = np.argwhere(clearance >= min_clearance_m)
        if len(near) == 0:
            raise ConfigError(f"no (grasp, pose) pair clears the table by {min_clearance_m} m: "
                              "lower min_clearance_m")
        pairs = jnp.asarray(near, jnp.int32)
    return LiftData(
        grasps=jnp.asarray(problem.dataset.grasps[rows], jnp.float32),
        object_id=jnp.asarray(problem.object_id[rows], jnp.int32),
        encodings=jnp.asarray(problem.encodings),
        fields=jax.tree_util.tree_map(jnp.asarray, problem.fields),
        poses=jnp.asarray(poses), up=jnp.asarray(problem.up[:, keep]), pairs=pairs)


def heldout_data(problem: LiftProblem) -> LiftData:
    """The held-out grasps on the held-out resting poses (never seen in training)."""
    return lift_data(problem, np.flatnonzero(problem.heldout), heldout_poses=True)


def lift_fn(problem: LiftProblem, backend: str | backends.Backend) -> LiftFn:
    """The one-world lift of `problem`'s objects on `backend` (a name or a `Backend`)."""
    fields = jax.tree_util.tree_map(jnp.asarray, problem.fields)
    return backends.get(backend).world_lift_fn(problem.template, fields, problem.prepared)


def make_lift_env(problem: LiftProblem, config: LiftRefineConfig, backend: str | backends.Backend,
                  rows: np.ndarray | None = None, heldout_poses: bool = False,
                  min_clearance_m: float | None = None) -> LiftRefineEnv:
    """The lift environment over dataset `rows` (default: the training rows, or with
    `heldout_poses` the held-out rows) on the training poses (or the held-out ones);
    `min_clearance_m` as `lift_data`'s."""
    if rows is None:
        rows = np.flatnonzero(problem.heldout if heldout_poses else ~problem.heldout)
    return LiftRefineEnv(problem.template, lift_data(problem, rows, heldout_poses, min_clearance_m),
                         lift_fn(problem, backend), config)
