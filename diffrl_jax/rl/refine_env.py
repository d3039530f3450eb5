"""The refinement environment: a dataset grasp, a bounded correction, the hold test.

brax's `Env` interface (`reset(rng) -> State`, `step(state, action) -> State`),
pure and vmappable, so any JAX project can train on it. An episode draws a
grasp of the dataset and its object; an action in [-1, 1]^A becomes a bounded
correction of the grasp (`correct`); the step runs the scenario's hold test on
the corrected grasp and pays the named reward terms of `reward_terms`. One
step per episode by default (a contextual bandit); `RefineConfig.steps > 1`
corrects iteratively, each observation carrying the last hold result.

The hold test is a function `(object_id [], grasp [31]) -> HoldResult` of one
world, a backend's `world_hold_fn` (`sim.backends`: pure MJX for accelerators,
or MuJoCo's C engine through `jax.pure_callback`, the fast path on a CPU).
Both start from the same JAX squeeze targets, so they judge the same way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from brax.envs.base import Env, State
from flax import struct

from diffrl_jax import configs
from diffrl_jax.configs import boolean, finite, integer, non_negative
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.hand import constants
from diffrl_jax.hand.poses import CLOSED_POSE, OPEN_POSE
from diffrl_jax.scene import import_mjx
from diffrl_jax.sim import hold
from diffrl_jax.sim.backends import HoldFn
from diffrl_jax.sim.bank import ObjectFields, SimTemplate, object_fields
from diffrl_jax.sim.protocol import NUM_DIRECTIONS

# Action layout: wrist translation (object frame), wrist rotation (palm frame,
# rotation vector), 22 finger joints, one coordinated closure of all fingers.
TRANSLATION_ACTION = slice(0, 3)
ROTATION_ACTION = slice(3, 6)
JOINT_ACTION = slice(6, 6 + constants.NUM_JOINTS)
CLOSURE_ACTION = 6 + constants.NUM_JOINTS
ACTION_SIZE = CLOSURE_ACTION + 1

# Hand-point gaps to the surface are clipped to this range (m) and given in cm.
_GAP_RANGE = (-0.02, 0.05)


def translation_scale(template: SimTemplate) -> float:
    """The length (m) displacements are measured against: the protocol's
    translation bound, or 2 cm where the protocol has none (dexgraspnet)."""
    bound = template.protocol.translation_bound_m
    return float(bound) if np.isfinite(bound) else 0.02


def _closure_direction() -> np.ndarray:
    """[22] joint direction that closes every finger (thumb included), max |.| = 1."""
    direction = CLOSED_POSE - OPEN_POSE
    return (direction / np.abs(direction).max()).astype(np.float32)


CLOSURE = _closure_direction()


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Correction bounds, episode length and reward scales of the refinement task."""

    translation_m: float = non_negative(0.02)  # wrist translation per step, each axis
    rotation_rad: float = non_negative(0.2)  # wrist rotation per step, each axis of the rotation vector
    joints_rad: float = non_negative(0.3)  # each finger joint per step
    closure_rad: float = non_negative(0.3)  # coordinated closure of all fingers per step
    steps: int = integer(1, min=1)  # corrections per episode (1: contextual bandit)
    # With steps > 1: each correction after the first starts from the grasp
    # where the last hold test's settle left hand and object (`HoldResult.
    # settled`: the squeeze's equilibrium in this simulator) rather than from
    # the last corrected grasp. With no correction at all, the settled grasps
    # of two such steps fixed 107 of the 519 shared raw failures
    # (benchmarks/RESULTS.md, "The settled grasp").
    from_settled: bool = boolean(True)
    success_reward: float = finite(1.0)  # every direction held
    held_reward: float = finite(1.0)  # times the fraction of directions held
    displacement_reward: float = finite(0.5)  # times mean exp(-translation / bound)
    penetration_cost: float = finite(0.1)  # per mm of initial penetration beyond the tolerance
    penetration_tolerance_mm: float = non_negative(2.0)
    action_cost: float = finite(0.05)  # times the mean squared action

    def validate(self) -> RefineConfig:
        return configs.check(self, "refine config")

    def replace(self, **overrides) -> RefineConfig:
        return configs.replace(self, overrides, "refine config").validate()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def correct(grasps: jax.Array, actions: jax.Array, config: RefineConfig) -> jax.Array:
    """grasps [..., 31], actions [..., A] in [-1, 1] -> corrected grasps [..., 31].

    Translation moves the palm in the object frame; rotation turns it about its
    own origin (palm frame); joints move by their share of `joints_rad` plus the
    closure along `CLOSURE`. A joint is kept inside its limits unless it
    started outside them (then it may not move further out). A non-finite
    action component counts as 0, so a diverged policy cannot poison a world.
    """
    a = jnp.clip(jnp.where(jnp.isfinite(actions), actions, 0.0), -1.0, 1.0)
    t, rot, q = grasp_lib.split_grasps(grasps)
    t = t + config.translation_m * a[..., TRANSLATION_ACTION]
    rot = rot @ rotations.rotvec_to_matrix(config.rotation_rad * a[..., ROTATION_ACTION])
    dq = (config.joints_rad * a[..., JOINT_ACTION]
          + config.closure_rad * a[..., CLOSURE_ACTION, None] * jnp.asarray(CLOSURE))
    low, high = jnp.asarray(constants.JOINT_RANGES[:, 0]), jnp.asarray(constants.JOINT_RANGES[:, 1])
    q = jnp.clip(q + dq, jnp.minimum(low, q), jnp.maximum(high, q))
    return grasp_lib.make_grasps(t, rot, q).astype(grasps.dtype)


def next_base(grasp, settled):
    """The grasp the next correction applies to (`RefineConfig.from_settled`): the
    settled grasp [..., 31] where it is finite, else the tested `grasp` [..., 31]."""
    settled = jnp.asarray(settled).astype(jnp.asarray(grasp).dtype)
    return jnp.where(jnp.all(jnp.isfinite(settled), axis=-1, keepdims=True), settled, grasp)


def hand_gaps(template: SimTemplate, fields: ObjectFields, grasp: jax.Array) -> jax.Array:
    """Signed gaps (m) between the hand's capsule points and the object: [K]."""
    mjx = import_mjx()
    d = template.blank_data.replace(qpos=hold.initial_qpos(template, grasp))
    d = mjx.kinematics(template.mjx_model, d)
    points, _, radii = hold.capsule_points(template, d)
    dist, _ = hold.surface_distance(fields, points)
    return dist - jnp.asarray(radii, dist.dtype)


class RefineData(struct.PyTreeNode):
    """The grasps an episode draws from and their objects.

    grasps:    [N, 31] canonical grasps (object frame)
    object_id: [N] index of each grasp's simulated object (a code at a scale)
    encodings: [M, E] shape encoding of each object
    fields:    ObjectFields [M, ...] of each object (hold test geometry)
    """

    grasps: jax.Array
    object_id: jax.Array
    encodings: jax.Array
    fields: ObjectFields


def reward_terms(result: hold.HoldResult, action: jax.Array, template: SimTemplate,
                 config: RefineConfig) -> dict[str, jax.Array]:
    """Named reward terms (already scaled); the reward is their sum."""
    bound = translation_scale(template)
    translation = jnp.where(jnp.isfinite(result.translation), result.translation, jnp.inf)
    displacement = jnp.mean(jnp.exp(-translation / bound))
    penetration = jnp.maximum(result.penetration_mm - config.penetration_tolerance_mm, 0.0)
    penetration = jnp.where(jnp.isfinite(penetration), penetration, 100.0)
    return {
        "success": config.success_reward * result.success.astype(jnp.float32),
        "held": config.held_reward * jnp.mean(result.held.astype(jnp.float32)),
        "displacement": config.displacement_reward * displacement,
        "penetration": -config.penetration_cost * penetration,
        "action": -config.action_cost * jnp.mean(jnp.square(
            jnp.clip(jnp.where(jnp.isfinite(action), action, 0.0), -1.0, 1.0))),
    }


class RefineEnv(Env):
    """Grasp refinement as a brax environment (see the module docstring).

    Observation [O]: the grasp the next correction applies to [31], the
    object's encoding [E], the gaps of the hand's capsule points to the object
    surface [K] (cm, clipped), the last hold result (directions held [6],
    translations over the bound [6], zero before the first step) and the
    episode progress [1].

    `info["grasp"]` is the grasp last hold-tested (the dataset grasp before the
    first step) and `info["base"]` the grasp the next correction applies to:
    the same, or with `RefineConfig.from_settled` its settled pose.
    """

    def __init__(self, template: SimTemplate, data: RefineData, hold_fn: HoldFn,
                 config: RefineConfig = RefineConfig()):
        self._template = template
        self._data = data
        self._hold = hold_fn
        self._config = config.validate()
        self._bound = translation_scale(template)
        self._obs_size = None

    @property
    def config(self) -> RefineConfig:
        return self._config

    @property
    def template(self) -> SimTemplate:
        return self._template

    @property
    def hold(self) -> HoldFn:
        return self._hold

    @property
    def data(self) -> RefineData:
        return self._data

    def observe(self, grasp, object_id, held, translation, step) -> jax.Array:
        """The observation [O] of a grasp on object `object_id` (see the class docstring)."""
        fields = object_fields(self._data.fields, object_id)
        gaps = jnp.clip(hand_gaps(self._template, fields, grasp), *_GAP_RANGE) * 100.0
        translation = jnp.clip(jnp.where(jnp.isfinite(translation), translation, 1.0) / self._bound, 0.0, 5.0)
        progress = jnp.asarray(step, jnp.float32)[None] / self._config.steps
        return jnp.concatenate([
            grasp.astype(jnp.float32), self._data.encodings[object_id].astype(jnp.float32),
            gaps.astype(jnp.float32), held.astype(jnp.float32), translation.astype(jnp.float32),
            progress])

    def start(self, index: jax.Array) -> State:
        """The initial state of an episode on dataset grasp `index` (for applying a policy)."""
        grasp = self._data.grasps[index]
        object_id = self._data.object_id[index]
        zeros = jnp.zeros(NUM_DIRECTIONS, jnp.float32)
        info = {"index": jnp.asarray(index, jnp.int32), "object_id": object_id,
                "grasp": grasp, "base": grasp, "held": zeros.astype(bool), "translation": zeros,
                "success": jnp.zeros((), bool), "step": jnp.zeros((), jnp.int32)}
        metrics = {f"reward/{k}": jnp.zeros(()) for k in
                   ("success", "held", "displacement", "penetration", "action")}
        metrics["success"] = jnp.zeros(())
        return State(pipeline_state=None, obs=self.observe(grasp, object_id, zeros, zeros, 0),
                     reward=jnp.zeros(()), done=jnp.zeros(()), metrics=metrics, info=info)

    def reset(self, rng: jax.Array) -> State:
        index = jax.random.randint(rng, (), 0, self._data.grasps.shape[0])
        return self.start(index)

    def step(self, state: State, action: jax.Array) -> State:
        info = state.info
        grasp = correct(info["base"], action, self._config)
        result = self._hold(info["object_id"], grasp)
        base = next_base(grasp, result.settled) if self._config.from_settled else grasp
        terms = reward_terms(result, action, self._template, self._config)
        reward = sum(terms.values())
        step = info["step"] + 1
        done = (step >= self._config.steps) | result.success
        translation = result.translation.astype(jnp.float32)
        info = {**info, "grasp": grasp, "base": base, "held": result.held, "translation": translation,
                "success": result.success, "step": step}
        metrics = {f"reward/{k}": v for k, v in terms.items()}
        metrics["success"] = result.success.astype(jnp.float32)
        obs = self.observe(base, info["object_id"], result.held, translation, step)
        return state.replace(obs=obs, reward=reward, done=done.astype(jnp.float32),
                             metrics=metrics, info=info)

    @property
    def observation_size(self) -> int:
        if self._obs_size is None:
            shape = jax.eval_shape(lambda: self.start(jnp.zeros((), jnp.int32)).obs).shape
            self._obs_size = int(shape[0])
        return self._obs_size

    @property
    def action_size(self) -> int:
        return ACTION_SIZE

    @property
    def backend(self) -> str:
        return "mjx"
