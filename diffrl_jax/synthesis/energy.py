"""DexGraspNet's grasp energy, term by term, for one grasp (pure; vmap over a batch).

E = E_fc + w_dis E_dis + w_pen E_pen + w_spen E_spen + w_joints E_joints
(Wang et al., DexGraspNet, ICRA 2023, section III-B), with the hand's
geometry from `hand_model` and the object's from `object_sdf`:

- E_fc, force closure: unit normal forces at the chosen contact points
  should cancel as a wrench: |sum_i [n_i; x_i x n_i]|^2 (zero for an
  antipodal pinch, 4 for two contacts pushing the same way);
- E_dis, contact distance: sum_i |d(x_i)|, the chosen contacts on the surface;
- E_pen, hand-object penetration, in both directions: the hand's
  penetration points against the object's signed distance (spheres of each
  capsule's radius along its axis, 4 mm apart: a finger's depth in the
  object as the simulator measures it, from plane values only), plus the
  object's surface samples inside the palm's boxes (DexGraspNet's
  direction, which catches a thin rim pressed into the flat palm);
- E_spen, self-penetration: keypoint pairs of the hand closer than 2 cm;
- E_joints: radians outside the joint limits;
- E_align (not DexGraspNet's; weight 0 unless set): sum_i (1 + n_hand_i .
  n_obj_i), zero when each chosen contact's pad faces the object (its
  outward normal against the surface's), 2 when it touches with its side
  turned away. E_fc alone is satisfied by contacts that no finger can
  press, such as fingertips against the inner walls of a dish.

Distances are metres, angles radians, as in DexGraspNet, so its weights
carry over.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffrl_jax.configs import non_negative
from diffrl_jax.hand import constants
from diffrl_jax.synthesis import hand_model as hm
from diffrl_jax.synthesis.object_sdf import ObjectSDF, plane_distance, signed_distance

TERMS = ("force_closure", "distance", "penetration", "self_penetration", "joint_limits", "alignment")


@dataclasses.dataclass(frozen=True)
class EnergyWeights:
    """DexGraspNet's weights (E_fc has weight 1)."""

    distance: float = non_negative(100.0)
    penetration: float = non_negative(100.0)
    self_penetration: float = non_negative(10.0)
    joint_limits: float = non_negative(1.0)
    alignment: float = non_negative(0.0)


def force_closure(points: jax.Array, normals: jax.Array) -> jax.Array:
    """|sum_i [n_i; x_i x n_i]|^2 of contacts [n, 3] with unit normals [n, 3]."""
    wrench = jnp.concatenate([jnp.sum(normals, 0), jnp.sum(jnp.cross(points, normals), 0)])
    return jnp.sum(wrench * wrench)


def self_penetration(points: jax.Array, radius: float = hm.SELF_PENETRATION_RADIUS) -> jax.Array:
    """Sum over ordered keypoint pairs i != j of max(0, radius - |p_i - p_j|)."""
    delta = points[:, None, :] - points[None, :, :]
    dist = jnp.sqrt(jnp.sum(delta * delta, -1) + 1e-12)
    off_diagonal = 1.0 - jnp.eye(points.shape[0], dtype=points.dtype)
    return jnp.sum(jax.nn.relu(radius - dist) * off_diagonal)


def joint_limit_violation(joints: jax.Array) -> jax.Array:
    low = jnp.asarray(constants.JOINT_RANGES[:, 0], joints.dtype)
    high = jnp.asarray(constants.JOINT_RANGES[:, 1], joints.dtype)
    return jnp.sum(jax.nn.relu(joints - high) + jax.nn.relu(low - joints))


def energy_terms(hand: hm.HandModel, sdf: ObjectSDF, grasp: jax.Array, contacts: jax.Array) -> dict[str, jax.Array]:
    """The unweighted terms of one grasp [31] with contact candidate indices [n] (object frame, metres)."""
    frames = hm.forward_kinematics(hand, grasp)
    candidates, candidate_normals = hm.contact_candidates(hand, frames)
    points = candidates[contacts]
    distance, normals = signed_distance(sdf, points)
    centres, radii = hm.capsule_spheres(hand, frames)
    finger_depth = jax.nn.relu(radii - plane_distance(sdf, centres))
    palm_depth = jax.nn.relu(-hm.box_distances(hand, frames, sdf.surface))
    keypoints = hm.keypoints(hand, frames)
    return {
        "force_closure": force_closure(points, normals),
        "distance": jnp.sum(jnp.abs(distance)),
        "penetration": jnp.sum(finger_depth) + jnp.sum(palm_depth),
        "self_penetration": self_penetration(keypoints),
        "joint_limits": joint_limit_violation(grasp[9:]),
        "alignment": jnp.sum(1.0 + jnp.sum(candidate_normals[contacts] * normals, -1)),
    }


def total_energy(terms: dict[str, jax.Array], weights: EnergyWeights) -> jax.Array:
    return terms["force_closure"] + sum(getattr(weights, name) * terms[name] for name in TERMS[1:])
