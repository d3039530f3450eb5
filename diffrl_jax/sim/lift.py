"""The lift protocol as pure JAX functions: objects on a table, grasped and lifted.

Stages, each a pure function batched over poses like the hold test:

1. `settle_object`: the object is dropped in a random orientation at a random
   place in a region of the table and settles; its resting pose is the start.
   It runs in a scene of the object and the table alone (the hand, parked far
   away, could not touch it anyway), which compiles and steps far faster.
2. `grasp_to_world`: object-frame grasps (from a dataset or a sampler) are
   moved by the object's resting pose into the world frame.
3. `table_clearance`: the lowest point of the hand's collision geometry above
   the table top, at the pre-grasp and at the grasp; a grasp whose hand would
   pass through the table is rejected (`clearance < table_margin_m`).
4. `lift`: the hand starts at the pre-grasp -- backed off `back_off_m` along
   the approach (the palm's outward normal) with the fingers open -- and the
   wrist servo follows a straight line to the grasp; the fingers close to the
   grasp's joints plus the hold test's squeeze; the wrist rises `lift_height_m`
   and holds still for `hold_s`. Gravity is on throughout. Success: the object
   rose at least `success_height_m` and its centre of mass moved less than
   `slip_bound_m` relative to the palm since the start of the lift.

The table top is the plane z = 0 of the world (a box of `table_size`).
One template serves every object of its budget, as in `bank`: the object's
convex pieces and mass properties are data (`ObjectFields`). Each phase is a
precomputed servo target per step (`control_schedule`), so a whole lift is
one `lax.scan` of `mjx.step`; a world that turns non-finite freezes and fails
without touching the others. `lift_mujoco` runs the same lift on MuJoCo's C
engine, which on a CPU is far faster (measured on 2 cores: ~1,000 MJX
world-steps/s against ~60,000).

Choosing among the grasps that clear the table is the caller's business:
every lift counts its physics steps in `LiftProtocol.total_steps`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from diffrl_jax import bounds, configs
from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.configs import between, choice, finite, non_negative, positive
from diffrl_jax.errors import ConfigError
from diffrl_jax.hand import constants, shadow
from diffrl_jax.objects import assets
from diffrl_jax.scene import Scene, SceneConfig, blank_data, build_scene, import_mjx, put_model
from diffrl_jax.sim import bank, hold, judge, mjx_compat
from diffrl_jax.sim.bank import ObjectBudget, ObjectFields, SimTemplate, world_model
from diffrl_jax.hand.poses import OPEN_POSE  # fingers straight, thumb abducted
from diffrl_jax.sim.protocol import PhysicsConfig, SqueezeConfig, check_timestep

TABLE_TOP = 0.0  # m, world z of the table's top face
ORIENTATIONS = ("uniform", "upright")
_PALM_BACK = 1  # column of the palm rotation: its +y points out of the back of the hand
_OBJECT_SIZE_LIMIT = 1.0  # m: a piece with a larger bound is budget padding (10 m away)


# The lift's physics: the hold test's, friction applying to the table too, but
# impratio 10. MuJoCo's soft contacts let a held object creep out of the hand:
# at impratio 1, none of six box grasps that pass the strict hold test kept
# their object through the 1 s hold; at 10 all did (MuJoCo advises
# impratio > 1 against slip).
LIFT_PHYSICS = PhysicsConfig(impratio=10.0)
# A closure of 0.1 rad lifted 74 of 314 upright-can proposals, 0 rad only 38.
LIFT_SQUEEZE = SqueezeConfig(closure_rad=0.1)


@dataclasses.dataclass(frozen=True)
class LiftProtocol:
    """How a grasp of an object lying on a table is executed and judged.

    Phases (seconds): `approach_s` from the pre-grasp to the grasp, `close_s`
    ramping the finger targets from open to closed, `grip_s` still, `lift_s`
    raising the wrist `lift_height_m` (smoothstep in time), `hold_s` still.
    """

    name: str = "lift"
    physics: PhysicsConfig = LIFT_PHYSICS  # as in the hold test, but with gravity and a table
    squeeze: SqueezeConfig = LIFT_SQUEEZE  # of the finger targets at the grasp, as in the hold test
    table_size: tuple[float, float, float] = (0.4, 0.4, 0.02)  # half sizes (m), top at z = 0
    # Where and how objects are put down.
    region_half_extent_m: float = positive(0.05, finite=True)  # drop xy uniform in [-h, h]^2
    orientation: str = choice("uniform", ORIENTATIONS)  # "uniform" over SO(3), or "upright" (+z up, random yaw)
    drop_height_m: float = non_negative(0.01)  # gap between the object's lowest point and the table at release
    # After 1.5 s, 39 of 40 built-in drops moved < 0.5 mm in the next 0.5 s
    # (one mug still rocked: 5 mm); the lift starts them at rest anyway.
    settle_s: float = non_negative(1.5)
    # Execution.
    back_off_m: float = non_negative(0.08)  # pre-grasp: palm moved back along its outward normal
    open_fraction: float = between(1.0, 0.0, 1.0)  # pre-grasp fingers: grasp joints moved this far to OPEN_POSE
    approach_s: float = positive(0.5, finite=True)
    close_s: float = positive(0.5, finite=True)
    grip_s: float = non_negative(0.2)
    lift_height_m: float = positive(0.20, finite=True)
    lift_s: float = positive(1.0, finite=True)
    hold_s: float = non_negative(1.0)
    # Judgement.
    success_height_m: float = positive(0.15, finite=True)  # the object's centre of mass rose at least this much
    slip_bound_m: float = positive(0.03, finite=True)  # ... and moved less than this relative to the palm
    table_margin_m: float = finite(0.0)  # reject a hand closer than this to (or inside) the table

    def steps(self, seconds: float) -> int:
        return self.physics.steps(seconds)

    @property
    def settle_steps(self) -> int:
        return self.steps(self.settle_s)

    @property
    def phase_steps(self) -> tuple[int, int, int, int, int]:
        """Steps of (approach, close, grip, lift, hold)."""
        return tuple(self.steps(s) for s in (self.approach_s, self.close_s, self.grip_s,
                                             self.lift_s, self.hold_s))

    @property
    def lift_start(self) -> int:
        """Index of the first lift step (the relative pose is taken before it)."""
        return sum(self.phase_steps[:3])

    @property
    def total_steps(self) -> int:
        """Physics steps of one lift (settling not included)."""
        return sum(self.phase_steps)

    def validate(self) -> LiftProtocol:
        configs.check(self, "lift protocol")  # every field's declared range, physics and squeeze included
        size = self.table_size
        if not (len(size) == 3 and all(isinstance(s, (int, float)) and s > 0 for s in size)):
            raise ConfigError(f"table_size must be three positive half sizes, got {size!r}")
        if self.region_half_extent_m >= min(size[:2]):
            raise ConfigError(f"drop region half extent {self.region_half_extent_m} m does not fit "
                              f"on the table (half sizes {size[:2]})")
        check_timestep(self.physics)
        for name in ("approach_s", "close_s", "lift_s"):
            if self.steps(getattr(self, name)) < 1:
                raise ConfigError(
                    f"{name} {getattr(self, name)} is shorter than one timestep {self.physics.timestep}")
        if self.success_height_m > self.lift_height_m:
            raise ConfigError(f"success height {self.success_height_m} m exceeds the lift height "
                              f"{self.lift_height_m} m: no grasp could succeed")
        bounds.check_protocol(self, "lift protocol")  # friction, finger strength, masses: physical ranges
        return self

    def replace(self, **overrides) -> LiftProtocol:
        """A checked copy; fields by dotted path (`physics.friction`) or unique leaf name (`friction`)."""
        return configs.replace(self, overrides, "lift protocol").validate()

    @classmethod
    def from_json(cls, record: Mapping) -> LiftProtocol:
        """The protocol of a `configs.to_json` record, nested or in the flat form written before."""
        return configs.from_dict(cls, record, "lift protocol").validate()


DEFAULT = LiftProtocol()


class LiftResult(struct.PyTreeNode):
    """Per pose `[...]` results of the lift protocol."""

    success: jax.Array  # bool: rose enough, slipped little, stayed finite
    lift_height: jax.Array  # m, rise of the object's centre of mass since the lift started
    slip: jax.Array  # m, object COM displacement relative to the palm since the lift started
    rotation: jax.Array  # rad, object rotation relative to the palm since the lift started
    pushed: jax.Array  # m, object COM displacement from its resting pose before the lift
    hand_height: jax.Array  # m, rise of the palm since the lift started (~lift_height_m)
    contact: jax.Array  # bool, a hand-object contact at the end
    finite: jax.Array  # bool, no NaN/inf in the world


@dataclasses.dataclass(frozen=True, eq=False)
class LiftTemplate(SimTemplate[LiftProtocol]):
    """`bank.SimTemplate` of the lift scene (hand, object slots, table; gravity on).

    `settle_model` is the object and the table alone, for `settle_object`;
    its object body is 1, its qpos the object's free joint.
    """

    settle_model: object = None  # mjx.Model
    settle_object_geoms: np.ndarray = None
    hand_capsules: np.ndarray = None  # hand collision geoms that are capsules
    hand_boxes: np.ndarray = None  # ... and boxes

    @functools.cached_property
    def settle_blank_data(self):
        return blank_data(self.settle_model)


def scene_config(protocol: LiftProtocol) -> SceneConfig:
    """The lift scene's physics: the protocol's hand, gravity on, the table's top at z = 0."""
    physics = protocol.physics
    hand = shadow.HandConfig(finger_kp=physics.finger_kp, strength=physics.finger_strength,
                             friction=(physics.friction, 0.005, 0.0001))
    return SceneConfig(hand=hand, table=True, table_top=TABLE_TOP, table_size=protocol.table_size,
                       timestep=physics.timestep, impratio=physics.impratio,
                       max_contact_points=physics.max_contacts)


def _add_table(spec: mujoco.MjSpec, protocol: LiftProtocol, condim: int) -> None:
    sx, sy, sz = protocol.table_size
    spec.worldbody.add_geom(
        name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=(sx, sy, sz), pos=(0, 0, TABLE_TOP - sz),
        contype=shadow.TABLE_BIT, conaffinity=shadow.HAND_BIT | shadow.OBJECT_BIT,
        rgba=(0.6, 0.5, 0.4, 1), friction=(protocol.physics.friction, 0.005, 0.0001), condim=condim)


def _settle_scene(protocol: LiftProtocol, budget: ObjectBudget, full: mujoco.MjModel) -> mujoco.MjModel:
    """The object's mesh slots on a free body and the table, with `full`'s options."""
    spec = mujoco.MjSpec()
    spec.compiler.degree = False
    condim = scene_config(protocol).hand.condim
    _add_table(spec, protocol, condim)
    body = spec.worldbody.add_body(name="object")
    body.add_freejoint()
    for i in range(budget.pieces):
        spec.add_mesh(name=f"mesh{i}", uservert=bank.PAD_PIECE.ravel())
        body.add_geom(type=mujoco.mjtGeom.mjGEOM_MESH, meshname=f"mesh{i}", contype=shadow.OBJECT_BIT,
                      conaffinity=shadow.TABLE_BIT, friction=(protocol.physics.friction, 0.005, 0.0001),
                      condim=condim, density=1000.0)
    spec.add_numeric(name="max_contact_points", data=[protocol.physics.max_contacts])
    model = spec.compile()
    objects = model.geom_bodyid == 1
    model.geom_pos[objects] = 0.0  # piece vertices are in the object frame (see bank)
    model.geom_quat[objects] = (1.0, 0.0, 0.0, 0.0)
    for name in ("timestep", "gravity", "solver", "iterations", "ls_iterations", "cone",
                 "integrator", "impratio"):
        setattr(model.opt, name, getattr(full.opt, name))
    return model


def build_lift_scene(protocol: LiftProtocol, obj: assets.ObjectAsset) -> Scene:
    """Hand, `obj` and the table (top at z = 0) with the protocol's physics."""
    scene = build_scene(obj, scene_config(protocol))
    # `build_scene` gives the table a fixed friction, and MuJoCo takes the larger of two.
    scene.model.geom_friction[scene.table_geom] = (protocol.physics.friction, 0.005, 0.0001)
    return scene


def make_template(protocol: LiftProtocol = DEFAULT, budget: ObjectBudget = ObjectBudget()) -> LiftTemplate:
    """The lift scene for `protocol` with `budget.pieces` object mesh slots and a table."""
    protocol.validate()
    budget.validate()
    scene = bank.template_scene(budget, protocol.physics.friction, lambda pad: build_lift_scene(protocol, pad))
    model = scene.model
    settle = _settle_scene(protocol, budget, model)
    types = model.geom_type[scene.hand_geoms]
    return LiftTemplate(
        scene, put_model(model), budget, protocol, model.body(constants.ROOT_BODY).id,
        settle_model=put_model(settle),
        settle_object_geoms=np.nonzero(settle.geom_bodyid == 1)[0],
        hand_capsules=scene.hand_geoms[types == mujoco.mjtGeom.mjGEOM_CAPSULE],
        hand_boxes=scene.hand_geoms[types == mujoco.mjtGeom.mjGEOM_BOX])


def prepare_object(template: LiftTemplate, obj: assets.ObjectAsset) -> bank.PreparedObject:
    """`bank.prepare_object` with the protocol's density and mass scale."""
    protocol = template.protocol
    return bank.prepare_object(obj, template.budget, density=protocol.physics.object_density,
                               mass_scale=protocol.physics.mass_scale)


# ---------------------------------------------------------------------------
# Settling.


def _settle_world_model(template: LiftTemplate, fields: ObjectFields):
    """The object-and-table model with one object's `fields` swapped in (jittable)."""
    m = template.settle_model
    ob, dof = template.scene.object_body, template.scene.object_dof
    geoms = jnp.asarray(template.settle_object_geoms)
    rbound = jnp.asarray(m.geom_rbound).at[geoms].set(fields.geom_rbound)
    bodies = jnp.array([0, ob])  # world, object of the full scene
    mass = fields.body_mass[ob]
    return mjx_compat.with_convex_meshes(
        m, bank.convex_pieces(fields, template.budget.pieces),
        geom_rbound=rbound,
        body_mass=fields.body_mass[bodies],
        body_inertia=fields.body_inertia[bodies],
        body_ipos=fields.body_ipos[bodies],
        body_iquat=fields.body_iquat[bodies],
        body_invweight0=fields.body_invweight0[bodies],
        body_subtreemass=jnp.stack([mass, mass]),
        dof_invweight0=fields.dof_invweight0[dof:dof + 6])


def lowest_point(fields: ObjectFields, rotation: jax.Array) -> jax.Array:
    """The lowest z [] of the object's pieces rotated by rotation [3, 3] (origin at 0)."""
    z = jnp.einsum("c,pvc->pv", rotation[2], fields.vert)
    real = fields.geom_rbound < _OBJECT_SIZE_LIMIT  # [P]: padding pieces sit 10 m away
    return jnp.min(jnp.where(real[:, None], z, jnp.inf))


def drop_poses(template: LiftTemplate, fields: ObjectFields, key: jax.Array, n: int) -> jax.Array:
    """Object poses [n, 7] (pos, quat wxyz) at release: random orientation and place."""
    protocol = template.protocol
    k_quat, k_yaw, k_xy = jax.random.split(key, 3)
    if protocol.orientation == "uniform":
        quat = jax.random.normal(k_quat, (n, 4))
        quat = quat / jnp.linalg.norm(quat, axis=-1, keepdims=True)
    else:
        yaw = jax.random.uniform(k_yaw, (n,), minval=-jnp.pi, maxval=jnp.pi)
        zero = jnp.zeros_like(yaw)
        quat = jnp.stack([jnp.cos(yaw / 2), zero, zero, jnp.sin(yaw / 2)], -1)
    h = protocol.region_half_extent_m
    xy = jax.random.uniform(k_xy, (n, 2), minval=-h, maxval=h)
    low = jax.vmap(lambda q: lowest_point(fields, rotations.quat_to_matrix(q)))(quat)
    z = TABLE_TOP + protocol.drop_height_m - low
    return jnp.concatenate([xy, z[:, None], quat], -1)


def settle_object(template: LiftTemplate, fields: ObjectFields, key: jax.Array, n: int) -> jax.Array:
    """Resting poses [n, 7] (pos, quat wxyz) of one object dropped `n` times.

    Each drop has a random orientation (`protocol.orientation`), xy uniform in
    the region and the lowest point `drop_height_m` above the table; the object
    then falls and settles for `settle_s`. Non-finite worlds freeze (their
    pose is then the last finite one).
    """
    m = _settle_world_model(template, fields)
    poses = drop_poses(template, fields, key, n)
    blank = template.settle_blank_data

    def one(pose):
        d = blank.replace(qpos=pose.astype(blank.qpos.dtype))
        d, _ = hold.rollout(m, d, template.protocol.settle_steps)
        qpos = d.qpos
        return jnp.concatenate([qpos[:3], qpos[3:7] / jnp.linalg.norm(qpos[3:7])])

    return jax.vmap(one)(poses)


def make_settle(template: LiftTemplate, n: int):
    """A jitted `(fields [G, ...], keys [G, 2]) -> resting poses [G, n, 7]`."""
    return jax.jit(jax.vmap(functools.partial(settle_object, template, n=n)))


# ---------------------------------------------------------------------------
# Frames and the table.


def grasp_to_world(grasps: jax.Array, object_pose: jax.Array) -> jax.Array:
    """Object-frame grasps [..., 31] and object poses [..., 7] -> world grasps [..., 31].

    The pose is the object body's (pos, quat wxyz) in the world, i.e. the pose
    of the object frame in the world frame: palm_world = R palm_object + p.
    """
    rotation = rotations.quat_to_matrix(object_pose[..., 3:])
    return grasp_lib.grasps_to_world(grasps, rotation, object_pose[..., :3])


def grasp_to_object(world_grasps: jax.Array, object_pose: jax.Array) -> jax.Array:
    """The inverse of `grasp_to_world`: world grasps [..., 31] -> object frame."""
    rotation = rotations.quat_to_matrix(object_pose[..., 3:])
    return grasp_lib.grasps_to_object(world_grasps, rotation, object_pose[..., :3])


def pregrasp(protocol: LiftProtocol, world_grasps: jax.Array) -> jax.Array:
    """World grasps [..., 31] -> pre-grasps [..., 31]: the palm backed off, the fingers opened.

    The palm moves `back_off_m` along its outward normal (the palm's local +y,
    out of the back of the hand; its inner face looks along -y), the reverse
    of the approach; the joints move `open_fraction` of the way to `OPEN_POSE`.
    """
    translation, rotation, joints = grasp_lib.split_grasps(world_grasps)
    back = protocol.back_off_m * rotation[..., :, _PALM_BACK]
    return grasp_lib.make_grasps(translation + back, rotation, pregrasp_joints(protocol, joints))


def pregrasp_joints(protocol: LiftProtocol, joints: jax.Array) -> jax.Array:
    """Grasp joints [..., 22] -> pre-grasp joints [..., 22], opened by `open_fraction`."""
    return joints + protocol.open_fraction * (OPEN_POSE.astype(joints.dtype) - joints)


def _hand_qpos(grasps: jax.Array) -> jax.Array:
    """Grasps [..., 31] -> the hand's qpos [..., 28] (wrist 6, fingers 22)."""
    return jnp.concatenate([grasp_lib.wrist_qpos(grasps), grasps[..., grasp_lib.JOINTS]], -1)


def hand_lowest_in(template: LiftTemplate, d) -> jax.Array:
    """World z [] of the lowest point of the hand's collision capsules and boxes in
    `d`, MJX data whose kinematics are computed (`geom_xpos`, `geom_xmat`)."""
    size = template.scene.model.geom_size
    caps, boxes = template.hand_capsules, template.hand_boxes
    cap_z = d.geom_xpos[caps, 2] - size[caps, 1] * jnp.abs(d.geom_xmat[caps, 2, 2]) - size[caps, 0]
    box_z = d.geom_xpos[boxes, 2] - jnp.einsum("gi,gi->g", jnp.abs(d.geom_xmat[boxes, 2, :]), size[boxes])
    return jnp.minimum(jnp.min(cap_z), jnp.min(box_z))


def hand_lowest_point(template: LiftTemplate, hand_qpos: jax.Array) -> jax.Array:
    """World z [] of the lowest point of the hand's collision capsules and boxes.

    hand_qpos: [28] wrist (6) and finger (22) joints; vmappable.
    """
    mjx = import_mjx()
    d = template.blank_data
    d = d.replace(qpos=jnp.asarray(d.qpos).at[template.scene.hand_qpos].set(hand_qpos))
    return hand_lowest_in(template, mjx.kinematics(template.mjx_model, d))


def clearance_configs(protocol: LiftProtocol, world_grasps: jax.Array) -> jax.Array:
    """World grasps [..., 31] -> the hand qpos [..., 3, 28] whose lowest point bounds the
    approach: open at the pre-grasp, open at the grasp, closed at the grasp."""
    pre = pregrasp(protocol, world_grasps)
    opened_at_grasp = world_grasps.at[..., grasp_lib.JOINTS].set(pre[..., grasp_lib.JOINTS])
    return jnp.stack([_hand_qpos(pre), _hand_qpos(opened_at_grasp), _hand_qpos(world_grasps)], -2)


def table_clearance(template: LiftTemplate, world_grasps: jax.Array) -> jax.Array:
    """World grasps [..., 31] -> [...] m from the hand's lowest point to the table top.

    The minimum over the open hand at the pre-grasp and at the grasp (the
    approach is a straight line at a fixed orientation, so the open hand's
    lowest point along it is at one of its ends) and the closed hand at the
    grasp (`clearance_configs`). Negative: the hand would pass through the
    table. Reject grasps with `clearance < protocol.table_margin_m`.
    """
    batch = world_grasps.shape[:-1]
    grasps = jnp.asarray(world_grasps).reshape(-1, grasp_lib.GRASP_DIM)
    configs = clearance_configs(template.protocol, grasps)  # [B, 3, 28]
    low = jax.vmap(jax.vmap(functools.partial(hand_lowest_point, template)))(configs)
    return (jnp.min(low, axis=1) - TABLE_TOP).reshape(batch)


def clears_table(template: LiftTemplate, world_grasps: jax.Array) -> jax.Array:
    """World grasps [..., 31] -> [...] bool: kept, the hand stays `table_margin_m` above the table."""
    return table_clearance(template, world_grasps) >= template.protocol.table_margin_m


# ---------------------------------------------------------------------------
# The lift.


def _smoothstep(s):
    s = jnp.clip(s, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def control_schedule(protocol: LiftProtocol, wrist_pre: jax.Array, wrist_grasp: jax.Array,
                     fingers_open: jax.Array, fingers_closed: jax.Array) -> jax.Array:
    """Servo targets [T, 28] of every step of the lift (wrist 6, fingers 22).

    wrist_*: [6] wrist qpos, fingers_*: [22]. Step t's target is the plan's
    value at the end of the step, so the first step already moves.
    """
    approach, close, grip, rise, hold_ = protocol.phase_steps
    t = jnp.arange(1, approach + close + grip + rise + hold_ + 1, dtype=wrist_pre.dtype)[:, None]
    s_approach = _smoothstep(t / approach)
    s_close = jnp.clip((t - approach) / close, 0.0, 1.0)
    s_lift = _smoothstep((t - approach - close - grip) / rise)
    wrist = wrist_pre + s_approach * (wrist_grasp - wrist_pre)
    up = jnp.zeros(6, wrist_pre.dtype).at[2].set(protocol.lift_height_m)
    wrist = wrist + s_lift * up
    fingers = fingers_open + s_close * (fingers_closed - fingers_open)
    return jnp.concatenate([wrist, fingers], -1)


def object_in_palm(template: LiftTemplate, d):
    """Object COM [3] and rotation [3, 3] in the palm frame; object COM [3] and palm [3] in the world."""
    palm, obj = template.palm_body, template.scene.object_body
    return (*judge.object_in_palm(d.xpos[palm], d.xmat[palm], d.xipos[obj], d.xmat[obj]),
            d.xipos[obj], d.xpos[palm])


def hand_object_contact(template: LiftTemplate, d) -> jax.Array:
    """A hand-object contact in `d`'s contacts (from its last collision pass)."""
    model = template.scene.model
    is_object = jnp.asarray(judge.geom_mask(model.ngeom, template.scene.object_geoms))
    is_hand = jnp.asarray(judge.geom_mask(model.ngeom, template.scene.hand_geoms))
    geom, dist = mjx_compat.contacts(d)
    return judge.touching(dist, judge.hand_object_pairs(geom[:, 0], geom[:, 1], is_object, is_hand))


def initial_state(template: LiftTemplate, fields: ObjectFields, object_pose: jax.Array,
                  world_grasp: jax.Array):
    """The start of one lift: qpos [nq] and the servo targets of every step ctrl [T, nu].

    The object rests at object_pose [7]; the hand is at the pre-grasp of
    world_grasp [31] with its fingers open. The closed finger targets are the
    hold test's (grasp joints plus squeeze), computed in the object frame.
    Shared by the MJX and MuJoCo-C backends.
    """
    protocol = template.protocol
    scene = template.scene
    m = world_model(template, fields)
    dtype = jnp.asarray(template.blank_data.qpos).dtype
    object_pose = object_pose.astype(dtype)
    world_grasp = world_grasp.astype(dtype)
    object_grasp = grasp_to_object(world_grasp, object_pose)
    closed = hold.finger_targets(template, m, fields, hold.initial_qpos(template, object_grasp))
    pre = pregrasp(protocol, world_grasp)
    wrist = grasp_lib.wrist_qpos(world_grasp)
    # The grasp's own angles at the pre-grasp too: recomputed ones could wrap by 2 pi.
    wrist_pre = wrist.at[:3].set(pre[grasp_lib.TRANSLATION])
    opened = pre[grasp_lib.JOINTS]
    ctrl = control_schedule(protocol, wrist_pre, wrist, opened, closed)
    qpos = jnp.asarray(template.blank_data.qpos)
    qpos = qpos.at[scene.hand_qpos].set(jnp.concatenate([wrist_pre, opened]))
    qpos = qpos.at[scene.object_qpos:scene.object_qpos + 7].set(object_pose)
    return qpos, ctrl


def lift(template: LiftTemplate, fields: ObjectFields, object_pose: jax.Array,
         world_grasp: jax.Array) -> LiftResult:
    """The lift of one world grasp [31] of one object resting at object_pose [7].

    Vmappable over poses and grasps; `make_lift_test` batches it. The world
    starts at rest with the object at its pose and the hand at the pre-grasp.
    """
    mjx = import_mjx()
    protocol = template.protocol
    m = world_model(template, fields)
    qpos, ctrl = initial_state(template, fields, object_pose, world_grasp)
    dtype = qpos.dtype
    d = mjx.kinematics(m, template.blank_data.replace(qpos=qpos, ctrl=ctrl[0]))
    start = object_in_palm(template, d)
    lift_start = protocol.lift_start

    def body(carry, inputs):
        d, ok, at_lift = carry
        t, u = inputs
        nxt = mjx.step(m, d.replace(ctrl=u))
        finite = jnp.isfinite(nxt.qpos).all() & jnp.isfinite(nxt.qvel).all()
        keep = ok & finite
        d = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), nxt, d)
        # mjx.step leaves the positions of the state it started from: at step
        # `lift_start`, those of the state the lift starts from.
        at_lift = jax.tree_util.tree_map(
            lambda new, old: jnp.where(t == lift_start, new, old), object_in_palm(template, d), at_lift)
        return (d, keep, at_lift), None

    steps = jnp.arange(ctrl.shape[0])
    (d, finite, at_lift), _ = jax.lax.scan(body, (d, jnp.array(True), start), (steps, ctrl))
    contact = hand_object_contact(template, d)
    d = mjx.kinematics(m, d)
    rel_pos, rel_rot, com, palm = object_in_palm(template, d)
    rel_pos0, rel_rot0, com0, palm0 = at_lift
    lift_height = com[2] - com0[2]
    slip = jnp.linalg.norm(rel_pos - rel_pos0)
    rotation = rotations.rotation_angle(rel_rot, rel_rot0)
    pushed = jnp.linalg.norm(com0 - start[2])
    inf = jnp.array(jnp.inf, dtype)
    lift_height = jnp.where(finite, lift_height, -inf)
    slip = jnp.where(finite, slip, inf)
    success = judge.lifted(protocol, finite, lift_height, slip)
    return LiftResult(
        success=success, lift_height=lift_height, slip=slip,
        rotation=jnp.where(finite, rotation, inf), pushed=pushed,
        hand_height=palm[2] - palm0[2], contact=contact & finite, finite=finite)


def make_lift_test(template: LiftTemplate):
    """A jitted `(fields [G, ...], poses [G, n, 7], world grasps [G, n, 31]) -> LiftResult [G, n]`.

    One compile per template and (G, n); any objects of the budget run through it.
    """
    def group(fields, poses, grasps):
        return jax.vmap(lambda p, g: lift(template, fields, p, g))(poses, grasps)

    return jax.jit(jax.vmap(group))
