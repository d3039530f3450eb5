"""The ShadowHand as differentiable geometry for grasp synthesis, in pure JAX.

Grasp synthesis needs the hand's shape as a function of the grasp vector, with
gradients: where its candidate contact points are, how deep an object point
sits inside it, and whether two of its links overlap. This module reads the
kinematic tree and the collision primitives from the project's own MuJoCo hand
(`hand.shadow`), so the geometry optimised here is exactly the geometry the
simulator later collides:

- forward kinematics: palm pose from the grasp, then per body its fixed
  offset and one hinge (every finger body of the ShadowHand has exactly one);
- contact candidates: 10 points on the inner side of each of the 14 finger
  links that DexGraspNet's energy uses (the proximal, middle and distal
  phalanges of four fingers, the thumb's middle and distal), on the capsule
  surface at +-27 degrees around the inner direction (-y for fingers, -x for
  the thumb), five along the link. DexGraspNet's own candidates
  (`../shared/reference/dexgraspnet_contact_points.json`) lie on the same
  sides of the same links; a test compares them;
- penetration keypoints: DexGraspNet's self-penetration points (facts from
  the reference: points on the links' axes), each link's points against the
  other links';
- the signed distance of world points to the hand's boxes and capsules.

Every function is pure and works on one grasp; vmap it over a batch.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from diffrl_jax.data import grasps as grasp_lib
from diffrl_jax.hand import constants, shadow

# Links whose inner surface carries contact candidates, and that inner side.
CONTACT_LINKS: tuple[str, ...] = tuple(
    f"robot0:{finger}{link}" for finger in ("ff", "mf", "rf", "lf") for link in ("proximal", "middle", "distal")
) + ("robot0:thmiddle", "robot0:thdistal")
_INNER = {"th": np.array([-1.0, 0.0, 0.0])}
_FINGER_INNER = np.array([0.0, -1.0, 0.0])
_CONTACT_ANGLES = np.deg2rad([-27.0, 27.0])
_CONTACT_ALONG = np.linspace(0.0, 1.0, 5)

# DexGraspNet's self-penetration keypoints (link frame, metres): facts of
# its `penetration_points.json`, on each link's axis.
_FINGER_KEYPOINTS = {"proximal": ((0, 0, 0.024),), "middle": ((0, 0, 0), (0, 0, 0.025)), "distal": ((0, 0, 0.024),)}
KEYPOINTS: tuple[tuple[str, tuple[float, float, float]], ...] = tuple(
    (f"robot0:{finger}{link}", point)
    for finger in ("ff", "mf", "rf", "lf") for link, points in _FINGER_KEYPOINTS.items() for point in points
) + (("robot0:thproximal", (0, 0, 0.038)), ("robot0:thmiddle", (0, 0, 0.032)), ("robot0:thdistal", (0, 0, 0.026)))
SELF_PENETRATION_RADIUS = 0.02  # m: DexGraspNet's keypoint spacing threshold
# Spheres of each capsule's radius along its axis, at most this far apart, stand
# in for the capsule in the penetration term: the capsule bulges past their
# union by at most r - sqrt(r^2 - (SPACING / 2)^2), 0.3 mm for the thinnest link.
SPHERE_SPACING = 0.004


@dataclasses.dataclass(frozen=True, eq=False)
class HandModel:
    """Static arrays of the hand's tree and shape (numpy; constants under jit).

    Bodies are the hand's bodies in tree order, the palm first. Index -1 of
    `parent` is the palm's parent: the grasp frame.
    """

    body_names: tuple[str, ...]
    parent: tuple[int, ...]
    offset_pos: np.ndarray  # [B, 3] body position in its parent
    offset_rot: np.ndarray  # [B, 3, 3] body orientation in its parent
    axis: np.ndarray  # [B, 3] hinge axis in the body frame (0 for the palm)
    joint: tuple[int, ...]  # [B] index into the 22 finger joints, -1 for the palm
    contact_body: np.ndarray  # [C] body of each contact candidate
    contact_local: np.ndarray  # [C, 3] in its body's frame
    contact_normal_local: np.ndarray  # [C, 3] outward surface normal, body frame
    keypoint_body: np.ndarray  # [K]
    keypoint_local: np.ndarray  # [K, 3]
    capsule_body: np.ndarray  # [Nc]
    capsule_a: np.ndarray  # [Nc, 3] segment ends in the body frame
    capsule_b: np.ndarray  # [Nc, 3]
    capsule_radius: np.ndarray  # [Nc]
    box_body: np.ndarray  # [Nb]
    box_pos: np.ndarray  # [Nb, 3]
    box_rot: np.ndarray  # [Nb, 3, 3]
    box_half: np.ndarray  # [Nb, 3]
    sphere_body: np.ndarray  # [S] spheres along the capsule axes, at most SPHERE_SPACING apart
    sphere_local: np.ndarray  # [S, 3]
    sphere_radius: np.ndarray  # [S]

    @property
    def num_contacts(self) -> int:
        return len(self.contact_body)


def _quat_to_matrix(quat) -> np.ndarray:
    out = np.zeros(9)
    mujoco.mju_quat2Mat(out, np.asarray(quat, dtype=np.float64))
    return out.reshape(3, 3)


@functools.lru_cache(maxsize=1)
def hand_model() -> HandModel:
    """The project's ShadowHand (`hand.shadow`) as a `HandModel`."""
    model = shadow.hand_spec().compile()
    palm = model.body(constants.ROOT_BODY).id
    bodies = list(range(palm, model.nbody))  # MuJoCo numbers bodies in tree order
    index = {b: i for i, b in enumerate(bodies)}
    names = tuple(model.body(b).name for b in bodies)
    joint_index = {name: i for i, name in enumerate(constants.JOINT_NAMES)}
    parent, axis, joint = [], np.zeros((len(bodies), 3)), []
    for i, b in enumerate(bodies):
        parent.append(-1 if b == palm else index[int(model.body_parentid[b])])
        if b == palm:
            joint.append(-1)
            continue
        (j,) = [j for j in range(model.njnt) if model.jnt_bodyid[j] == b]  # one hinge per finger body
        if model.jnt_pos[j].any():
            raise ValueError(f"{names[i]}: hinge off the body origin is not modelled")
        axis[i] = model.jnt_axis[j]
        joint.append(joint_index[model.joint(j).name])
    offset_pos = np.stack([model.body_pos[b] for b in bodies])
    offset_rot = np.stack([_quat_to_matrix(model.body_quat[b]) for b in bodies])

    capsules, boxes = [], []
    for g in range(model.ngeom):
        b = int(model.geom_bodyid[g])
        if b not in index:
            continue
        pos, rot, size = model.geom_pos[g], _quat_to_matrix(model.geom_quat[g]), model.geom_size[g]
        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_CAPSULE:
            half = rot[:, 2] * size[1]
            capsules.append((index[b], pos - half, pos + half, size[0]))
        elif model.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX:
            boxes.append((index[b], pos, rot, size[:3]))
        else:
            raise ValueError(f"hand geom {model.geom(g).name}: only boxes and capsules are modelled")
    capsule_of = {names[c[0]]: c for c in capsules}

    contact_body, contact_local, contact_normal = [], [], []
    for link in CONTACT_LINKS:
        body, a, b, radius = capsule_of[link]
        inner = _INNER.get(link[len("robot0:"):][:2], _FINGER_INNER)
        side = np.cross(np.array([0.0, 0.0, 1.0]), inner)
        for t in _CONTACT_ALONG:
            for angle in _CONTACT_ANGLES:
                normal = np.cos(angle) * inner + np.sin(angle) * side
                contact_body.append(body)
                contact_local.append(a + t * (b - a) + radius * normal)
                contact_normal.append(normal)
    keypoint_body = [index[model.body(name).id] for name, _ in KEYPOINTS]
    sphere_body, sphere_local, sphere_radius = [], [], []
    for body, a, b, radius in capsules:
        count = int(np.ceil(np.linalg.norm(b - a) / SPHERE_SPACING)) + 1
        for t in np.linspace(0.0, 1.0, count):
            sphere_body.append(body)
            sphere_local.append(a + t * (b - a))
            sphere_radius.append(radius)
    return HandModel(
        body_names=names, parent=tuple(parent), offset_pos=offset_pos, offset_rot=offset_rot,
        axis=axis, joint=tuple(joint),
        contact_body=np.asarray(contact_body), contact_local=np.asarray(contact_local),
        contact_normal_local=np.asarray(contact_normal),
        keypoint_body=np.asarray(keypoint_body), keypoint_local=np.asarray([p for _, p in KEYPOINTS], float),
        capsule_body=np.asarray([c[0] for c in capsules]), capsule_a=np.asarray([c[1] for c in capsules]),
        capsule_b=np.asarray([c[2] for c in capsules]), capsule_radius=np.asarray([c[3] for c in capsules]),
        box_body=np.asarray([x[0] for x in boxes]), box_pos=np.asarray([x[1] for x in boxes]),
        box_rot=np.asarray([x[2] for x in boxes]), box_half=np.asarray([x[3] for x in boxes]),
        sphere_body=np.asarray(sphere_body), sphere_local=np.asarray(sphere_local),
        sphere_radius=np.asarray(sphere_radius),
    )


def _axis_angle(axis: jax.Array, angle: jax.Array) -> jax.Array:
    """Rotation matrix of `angle` about the unit `axis` (Rodrigues)."""
    x, y, z = axis
    k = jnp.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=angle.dtype)
    return jnp.eye(3, dtype=angle.dtype) + jnp.sin(angle) * k + (1.0 - jnp.cos(angle)) * (k @ k)


def forward_kinematics(hand: HandModel, grasp: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One grasp [31] -> every body's (rotation [B, 3, 3], position [B, 3]) in the grasp's frame."""
    translation, rotation, joints = grasp_lib.split_grasps(grasp)
    rots, poss = [], []
    for i, p in enumerate(hand.parent):
        if p < 0:
            rots.append(rotation)
            poss.append(translation)
            continue
        offset_rot = jnp.asarray(hand.offset_rot[i], dtype=grasp.dtype)
        local = offset_rot @ _axis_angle(jnp.asarray(hand.axis[i], grasp.dtype), joints[hand.joint[i]])
        rots.append(rots[p] @ local)
        poss.append(poss[p] + rots[p] @ jnp.asarray(hand.offset_pos[i], dtype=grasp.dtype))
    return jnp.stack(rots), jnp.stack(poss)


def _to_world(frames, body: np.ndarray, local: np.ndarray) -> jax.Array:
    rots, poss = frames
    local = jnp.asarray(local, dtype=poss.dtype)
    return jnp.einsum("nij,nj->ni", rots[body], local) + poss[body]


def contact_candidates(hand: HandModel, frames) -> tuple[jax.Array, jax.Array]:
    """Every contact candidate's world position [C, 3] and outward normal [C, 3]."""
    rots, _ = frames
    normals = jnp.einsum("nij,nj->ni", rots[hand.contact_body],
                         jnp.asarray(hand.contact_normal_local, dtype=rots.dtype))
    return _to_world(frames, hand.contact_body, hand.contact_local), normals


def keypoints(hand: HandModel, frames) -> jax.Array:
    """The self-penetration keypoints in the world [K, 3]."""
    return _to_world(frames, hand.keypoint_body, hand.keypoint_local)


def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    return jnp.sqrt(jnp.sum(x * x, axis=axis) + 1e-12)


def capsule_spheres(hand: HandModel, frames) -> tuple[jax.Array, jax.Array]:
    """The spheres along the capsules' axes: world centres [S, 3] and radii [S]."""
    centres = _to_world(frames, hand.sphere_body, hand.sphere_local)
    return centres, jnp.asarray(hand.sphere_radius, centres.dtype)


def _capsule_distances(hand: HandModel, frames, points: jax.Array) -> jax.Array:
    a = _to_world(frames, hand.capsule_body, hand.capsule_a)  # [Nc, 3]
    b = _to_world(frames, hand.capsule_body, hand.capsule_b)
    ab = b - a
    ap = points[:, None, :] - a[None]  # [N, Nc, 3]
    t = jnp.clip(jnp.sum(ap * ab, -1) / jnp.sum(ab * ab, -1), 0.0, 1.0)
    return _safe_norm(ap - t[..., None] * ab) - jnp.asarray(hand.capsule_radius, points.dtype)  # [N, Nc]


def box_distances(hand: HandModel, frames, points: jax.Array) -> jax.Array:
    """Signed distance [N, Nb] of world points [N, 3] to each of the hand's boxes; negative inside."""
    rots, _ = frames
    box_rot = jnp.einsum("nij,njk->nik", rots[hand.box_body], jnp.asarray(hand.box_rot, points.dtype))
    box_pos = _to_world(frames, hand.box_body, hand.box_pos)
    local = jnp.einsum("nji,mnj->mni", box_rot, points[:, None, :] - box_pos[None])  # [N, Nb, 3]
    q = jnp.abs(local) - jnp.asarray(hand.box_half, points.dtype)
    return _safe_norm(jnp.maximum(q, 0.0)) + jnp.minimum(jnp.max(q, -1), 0.0)


def hand_signed_distance(hand: HandModel, frames, points: jax.Array) -> jax.Array:
    """Signed distance [N] of world points [N, 3] to the hand's primitives; negative inside."""
    return jnp.minimum(jnp.min(_capsule_distances(hand, frames, points), -1),
                       jnp.min(box_distances(hand, frames, points), -1))
