"""The hold test as one pure JAX function over `[G groups, n grasps, D directions]`.

For each grasp (object frame): the hand is placed at the grasp with the object
at the origin, the wrist servo holds the palm, the finger servos aim at the
grasp's joints plus a squeeze along the object's inward normals; after
`settle_s` the object is pulled with force `mass * acceleration` along each of
the six object-frame directions (one world per direction) for `hold_s`. A
direction holds when the object moved less than the protocol's bounds relative
to the palm since placement (and, if asked, still touches the hand), with no
NaN. A grasp succeeds when every direction holds.

Groups share one object (its `ObjectFields`), so object geometry is stored once
per group and not once per world. A world whose state turns non-finite is
frozen at its last finite state and marked failed; it never touches another.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.data import rotations
from diffrl_jax.hand import constants
from diffrl_jax.scene import import_mjx
from diffrl_jax.sim import judge, mjx_compat
from diffrl_jax.sim.bank import ObjectFields, SimTemplate, world_model
from diffrl_jax.sim.protocol import DIRECTIONS

# Hand points used for the squeeze: each capsule's two ends and centre.
CAPSULE_POINTS = (-1.0, 0.0, 1.0)
_DLS_DAMPING = 1e-5  # m^2: keeps joints without nearby points still
# Flexion joints of the four fingers (closure is positive for them).
_CLOSURE_MASK = np.array([n[-2:] in ("J0", "J1", "J2", "J3") and not n.startswith("robot0:TH")
                          for n in constants.JOINT_NAMES], dtype=np.float32)


class HoldResult(struct.PyTreeNode):
    """Per grasp `[...]` and per direction `[..., D]` results of the hold test."""

    success: jax.Array  # [...] bool: every direction held
    held: jax.Array  # [..., D] bool
    translation: jax.Array  # [..., D] m, object COM relative to the palm
    rotation: jax.Array  # [..., D] rad, object relative to the palm
    contact: jax.Array  # [..., D] bool, a hand-object contact at the end
    finite: jax.Array  # [..., D] bool, no NaN/inf in the world
    penetration_mm: jax.Array  # [...] deepest hand-object penetration at placement
    # [..., 31] the grasp (object frame) where the settle left hand and object:
    # the hand pose relative to the object and the finger joints after the
    # squeeze found its equilibrium; NaN where the settle did not stay finite
    # or the grasp was never simulated.
    settled: jax.Array


def initial_qpos(template: SimTemplate, grasps: jax.Array) -> jax.Array:
    """grasps: [..., 31] -> qpos [..., nq]: hand at the grasp, object at the origin."""
    scene = template.scene
    qpos0 = jnp.asarray(scene.model.qpos0, grasps.dtype)
    hand = jnp.concatenate([grasp_lib.wrist_qpos(grasps), grasps[..., grasp_lib.JOINTS]], -1)
    qpos = jnp.broadcast_to(qpos0, grasps.shape[:-1] + qpos0.shape)
    qpos = qpos.at[..., scene.hand_qpos].set(hand)
    obj = jnp.array([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], grasps.dtype)
    return qpos.at[..., scene.object_qpos:scene.object_qpos + 7].set(obj)


def grasps_from_qpos(template: SimTemplate, qpos):
    """qpos [..., nq] of a hold scene -> the grasp [..., 31] in the object's frame.

    The inverse of `initial_qpos` (which puts the object at the origin) for any
    object pose: the hand's wrist and finger joints re-expressed relative to
    the object. numpy in, numpy out; jax in, jax out.
    """
    scene = template.scene
    hand = qpos[..., np.asarray(scene.hand_qpos)]
    world = grasp_lib.grasps_from_wrist_qpos(hand[..., :6], hand[..., 6:])
    obj = qpos[..., scene.object_qpos:scene.object_qpos + 7]
    return grasp_lib.grasps_to_object(world, rotations.quat_to_matrix(obj[..., 3:]), obj[..., :3])


def surface_distance(fields: ObjectFields, points: jax.Array):
    """Signed distance of points [K, 3] (object frame) to the object and the normal.

    Per convex piece the distance is the largest face-plane distance (exact
    inside and in front of a face, a lower bound near edges); the object is the
    union, so the nearest piece wins. Returns ([K], [K, 3] outward normal).
    """
    offset = jnp.sum(fields.face_normal * fields.face[:, :, 0, :], axis=-1)  # [P, F]
    plane = jnp.einsum("kc,pfc->kpf", points, fields.face_normal) - offset  # [K, P, F]
    face = jnp.argmax(plane, axis=-1)  # [K, P]
    piece_dist = jnp.max(plane, axis=-1)  # [K, P]
    piece = jnp.argmin(piece_dist, axis=-1)  # [K]
    dist = jnp.min(piece_dist, axis=-1)
    normal = fields.face_normal[piece, face[jnp.arange(points.shape[0]), piece]]
    return dist, normal


def capsule_points(template: SimTemplate, d):
    """World points on the hand's capsules, their bodies and radii: [K, 3], [K], [K]."""
    model = template.scene.model
    caps = np.array([g for g in template.scene.hand_geoms
                     if model.geom_type[g] == 3])  # mjGEOM_CAPSULE
    t = np.array(CAPSULE_POINTS)
    half = model.geom_size[caps, 1]
    axis = d.geom_xmat[caps][:, :, 2]  # [C, 3]
    pts = d.geom_xpos[caps][:, None, :] + (t[None, :, None] * half[:, None, None]) * axis[:, None, :]
    bodies = np.repeat(model.geom_bodyid[caps], len(t))
    radii = np.repeat(model.geom_size[caps, 0], len(t))
    return pts.reshape(-1, 3), bodies, radii


def finger_targets(template: SimTemplate, m, fields: ObjectFields, qpos: jax.Array) -> jax.Array:
    """Finger servo targets [22] for one grasp: its joints plus the squeeze.

    Hand points within `squeeze.reach_m` of the object surface are asked to
    move `squeeze.depth_m` along the inward normal; the joint change is the damped
    least-squares solution over the finger Jacobians (DexGraspNet's validator
    moves its contact points 1 mm the same way).
    """
    mjx = import_mjx()
    squeeze = template.protocol.squeeze
    scene = template.scene
    d = template.blank_data.replace(qpos=qpos)
    d = mjx.kinematics(m, d)
    d = mjx.com_pos(m, d)
    joints = qpos[scene.hand_qpos[6:]]
    if squeeze.depth_m > 0:
        points, bodies, radii = capsule_points(template, d)
        dist, normal = surface_distance(fields, points)
        active = (dist - radii) < squeeze.reach_m
        finger_dofs = scene.model.jnt_dofadr[
            [scene.model.joint(n).id for n in constants.JOINT_NAMES]]
        jacp = jax.vmap(lambda p, b: mjx_compat.point_jacobian(m, d, p, b))(points, jnp.asarray(bodies))
        jac = jacp[:, finger_dofs, :]  # [K, 22, 3]
        target = -squeeze.depth_m * normal * active[:, None]  # [K, 3]
        weight = active.astype(qpos.dtype)
        lhs = jnp.einsum("kjc,k,kic->ji", jac, weight, jac) + _DLS_DAMPING * jnp.eye(jac.shape[1])
        rhs = jnp.einsum("kjc,k,kc->j", jac, weight, target)
        joints = joints + jnp.linalg.solve(lhs, rhs)
    joints = joints + squeeze.closure_rad * jnp.asarray(_CLOSURE_MASK, qpos.dtype)
    low, high = constants.JOINT_RANGES[:, 0], constants.JOINT_RANGES[:, 1]
    return jnp.clip(joints, low, high)


def initial_state(template: SimTemplate, fields: ObjectFields, grasps: jax.Array):
    """For one object and grasps [n, 31]: qpos [n, nq], ctrl [n, nu].

    Shared by the MJX and MuJoCo-C backends so both start from the same targets.
    """
    m = world_model(template, fields)
    qpos = initial_qpos(template, grasps)
    fingers = jax.vmap(lambda q: finger_targets(template, m, fields, q))(qpos)
    ctrl = jnp.concatenate([qpos[:, template.scene.hand_qpos[:6]], fingers], axis=-1)
    return qpos, ctrl


def rollout(m, d, steps: int):
    """`steps` of mjx.step; a non-finite state freezes the world. Returns (d, finite)."""
    mjx = import_mjx()

    def body(carry, _):
        d, ok = carry
        nxt = mjx.step(m, d)
        finite = jnp.isfinite(nxt.qpos).all() & jnp.isfinite(nxt.qvel).all()
        keep = ok & finite
        d = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), nxt, d)
        return (d, keep), None

    (d, ok), _ = jax.lax.scan(body, (d, jnp.array(True)), None, length=steps)
    return d, ok


def relative_pose(template: SimTemplate, d):
    """Object COM in the palm frame [3] and object rotation in the palm frame [3, 3]."""
    palm, obj = template.palm_body, template.scene.object_body
    return judge.object_in_palm(d.xpos[palm], d.xmat[palm], d.xipos[obj], d.xmat[obj])


def hold_object(template: SimTemplate, fields: ObjectFields, grasps: jax.Array) -> HoldResult:
    """The hold test of grasps [n, 31] on one object; results [n] / [n, D]."""
    mjx = import_mjx()
    protocol = template.protocol
    m = world_model(template, fields)
    qpos, ctrl = initial_state(template, fields, grasps)
    blank = template.blank_data

    def place(q, u):
        d = blank.replace(qpos=q, ctrl=u)
        return mjx.forward(m, d)

    d0 = jax.vmap(place)(qpos, ctrl)
    penetration = jax.vmap(lambda d: judge.penetration_mm(mjx_compat.contact_dist(d)))(d0)
    pos0, rot0 = jax.vmap(lambda d: relative_pose(template, d))(d0)

    settled, ok = d0, jnp.ones(grasps.shape[0], bool)
    if protocol.settle_steps > 0:
        settled, ok = jax.vmap(lambda d: rollout(m, d, protocol.settle_steps))(d0)

    # [n] -> [n, D]: one world per pull direction.
    force = (fields.body_mass[template.scene.object_body] * protocol.acceleration
             * jnp.asarray(DIRECTIONS, qpos.dtype))  # [D, 3]

    def pull(d, direction_force):
        xfrc = d.xfrc_applied.at[template.scene.object_body, :3].set(direction_force)
        d, finite = rollout(m, d.replace(xfrc_applied=xfrc), protocol.hold_steps)
        d = mjx.kinematics(m, d)
        return d, finite

    d_end, finite = jax.vmap(lambda d: jax.vmap(lambda f: pull(d, f))(force))(settled)
    pos, rot = jax.vmap(jax.vmap(lambda d: relative_pose(template, d)))(d_end)
    translation = jnp.linalg.norm(pos - pos0[:, None], axis=-1)
    rotation = rotations.rotation_angle(rot, jnp.broadcast_to(rot0[:, None], rot.shape))
    # Every contact pair of the hold scene is hand-object (no table).
    contact = jax.vmap(jax.vmap(lambda d: jnp.any(mjx_compat.contact_dist(d) < 0)))(d_end)
    finite = finite & ok[:, None]
    translation = jnp.where(finite, translation, jnp.inf)
    rotation = jnp.where(finite, rotation, jnp.inf)
    held = judge.held(protocol, finite, translation, rotation, penetration, contact)
    settled_grasps = jnp.where(ok[:, None], grasps_from_qpos(template, settled.qpos), jnp.nan)
    return HoldResult(
        success=jnp.all(held, axis=-1), held=held, translation=translation, rotation=rotation,
        contact=contact, finite=finite, penetration_mm=penetration,
        settled=settled_grasps.astype(grasps.dtype))


def make_hold_test(template: SimTemplate):
    """A jitted `(fields [G, ...], grasps [G, n, 31]) -> HoldResult [G, n]`.

    One compile per template and (G, n); any objects of the budget run through it.
    """
    return jax.jit(jax.vmap(functools.partial(hold_object, template)))

